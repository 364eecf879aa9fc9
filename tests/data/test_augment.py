"""The albumentations families of ``data.augment``: config validation, the pipeline, determinism,
every augmentation path (on-line, offline copies, cached prefix views) and train-only application."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from medtl.config import AUGMENT_FAMILIES, AugmentConfig, parse_config
from medtl.data.splits import Fold
from medtl.data.strategy import expand_training, training_dataset
from medtl.data.transforms import AlbumentationsFamilies, ImageArrayDataset, build_augment
from medtl.errors import ConfigError
from medtl.experiment import prepare_data, run_experiment
from medtl.transfer.prefix_cache import ActivationCache, prefix_key, view_images

# p = 1 so that every image is changed; strengths large enough to change a 32 px image.
STRONG = {
    "elastic": {"p": 1.0, "alpha": 60, "sigma": 4},
    "grid": {"p": 1.0, "steps": 4, "limit": 0.5},
    "gamma": {"p": 1.0, "range": [0.5, 0.6]},
    "clahe": {"p": 1.0, "clip": 4.0, "tiles": 4},
    "blur": {"p": 1.0, "sigma": [1.0, 2.0]},
    "noise": {"p": 1.0, "std": [0.05, 0.1]},
    "erasing": {"p": 1.0, "area": [0.1, 0.2]},
}
OLD_KEYS = {"hflip": True, "vflip": True, "rotate": 15, "zoom": 0.1, "shift": 0.05, "brightness": 0.2,
            "contrast": 0.2}


def pictures(n: int = 8, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Smooth images with structure (a bright disc on a gradient) plus texture, uint8 ``(N, S, S, C)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.05) * 120
        img = 40 + 60 * xx + disc + rng.normal(0, 10, (size, size))
        out.append(np.repeat(np.clip(img, 0, 255)[..., None], channels, axis=2))
    return np.stack(out).astype(np.uint8)


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def digest(x: torch.Tensor | np.ndarray) -> str:
    arr = x.permute(1, 2, 0).numpy() if isinstance(x, torch.Tensor) else x
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def data_tree(augment: dict) -> dict:
    return {"data": {"source": "folder", "root": "x", "augment": augment}}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("family", AUGMENT_FAMILIES)
def test_a_family_with_defaults_switches_augmentation_on(family: str) -> None:
    cfg = parse_config(data_tree({family: {}})).data.augment
    assert cfg.active and list(cfg.families) == [family]
    assert 0 < cfg.families[family].p <= 1
    off = parse_config(data_tree({family: {"p": 0}})).data.augment
    assert not off.active and build_augment(off) is None


def test_families_are_applied_in_a_fixed_order_after_the_torchvision_ops() -> None:
    cfg = AugmentConfig.model_validate({"hflip": True, **{f: {} for f in reversed(AUGMENT_FAMILIES)}})
    pipeline = build_augment(cfg)
    assert isinstance(pipeline.transforms[0], v2.RandomHorizontalFlip)
    assert isinstance(pipeline.transforms[-1], AlbumentationsFamilies)
    assert pipeline.transforms[-1].names == list(AUGMENT_FAMILIES)


@pytest.mark.parametrize(("augment", "key", "words"), [
    ({"gamma": {"range": [1.5, 0.7]}}, "data.augment.gamma.range", "must not exceed"),
    ({"noise": {"std": [0.2, 0.1]}}, "data.augment.noise.std", "must not exceed"),
    ({"blur": {"sigma": [0.5, 50]}}, "data.augment.blur.sigma", "within"),
    ({"erasing": {"area": [0.3, 0.1]}}, "data.augment.erasing.area", "must not exceed"),
    ({"elastic": {"p": 1.5}}, "data.augment.elastic.p", "less than or equal to 1"),
    ({"grid": {"p": -0.1}}, "data.augment.grid.p", "greater than or equal to 0"),
    ({"clahe": {"clip": 0.5}}, "data.augment.clahe.clip", "greater than or equal to 1"),
    ({"elastc": {"p": 0.3}}, "data.augment.elastc", "Did you mean 'elastic'"),
    ({"elastic": {"alhpa": 30}}, "data.augment.elastic.alhpa", "Did you mean 'alpha'"),
])
def test_bad_family_settings_name_the_key(augment: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data_tree(augment))
    assert f"{key}:" in str(caught.value) and words in str(caught.value), str(caught.value)


# ---------------------------------------------------------------- the pipeline


def test_without_families_the_pipeline_is_todays_torchvision_pipeline() -> None:
    pipeline = build_augment(AugmentConfig(**OLD_KEYS))
    today = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                        v2.RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.9, 1.1),
                                        interpolation=v2.InterpolationMode.BILINEAR),
                        v2.ColorJitter(brightness=0.2, contrast=0.2)])
    assert repr(pipeline) == repr(today)
    for i, image in enumerate(pictures(6, channels=3)):
        torch.manual_seed(i)
        ours = pipeline(chw(image))
        torch.manual_seed(i)
        assert torch.equal(ours, today(chw(image)))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("family", AUGMENT_FAMILIES)
def test_each_family_changes_images_reproducibly_from_torchs_rng(family: str, channels: int) -> None:
    pipeline = build_augment(AugmentConfig.model_validate({family: STRONG[family]}))
    images = pictures(4, channels=channels)
    torch.manual_seed(7)
    first = [pipeline(chw(img)) for img in images]
    torch.manual_seed(7)
    again = [pipeline(chw(img)) for img in images]
    for img, a, b in zip(images, first, again, strict=True):
        assert a.dtype == torch.uint8 and a.shape == (channels, 32, 32)
        assert torch.equal(a, b)
        assert not torch.equal(a, chw(img)), f"{family} left an image unchanged"
    if family != "clahe":  # CLAHE with a fixed clip limit draws nothing
        torch.manual_seed(8)
        assert any(not torch.equal(a, pipeline(chw(img))) for img, a in zip(images, first, strict=True))


def test_the_probability_is_honoured() -> None:
    pipeline = build_augment(AugmentConfig.model_validate({"noise": {"p": 0.3, "std": [0.05, 0.1]}}))
    image = chw(pictures(1)[0])
    torch.manual_seed(0)
    changed = sum(not torch.equal(pipeline(image), image) for _ in range(400))
    assert 80 <= changed <= 160  # binomial(400, 0.3): mean 120, sd 9


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_other_seed_other_batches(workers: int) -> None:
    cfg = AugmentConfig.model_validate({"hflip": True, **{f: {**STRONG[f], "p": 0.5} for f in AUGMENT_FAMILIES}})
    images = pictures(16, channels=3)
    labels = np.arange(16) % 2

    def batches(seed: int) -> list[torch.Tensor]:
        ds = ImageArrayDataset(images, labels, np.arange(16), build_augment(cfg))
        torch.manual_seed(seed)  # as Lightning's seed_everything: the loader's workers derive their seeds from it
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=workers)
        return [x for x, _ in loader]

    first, again, other = batches(3), batches(3), batches(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


# ---------------------------------------------------------------- every path


def test_offline_copies_use_the_families_and_are_reproducible() -> None:
    images, labels = pictures(6), np.array([0, 1] * 3)
    fold = Fold(0, np.arange(4), np.array([4]), np.array([5]))
    aug = AugmentConfig.model_validate({"gamma": STRONG["gamma"], "erasing": STRONG["erasing"]})
    groups = [f"g{i}" for i in range(6)]
    one = expand_training(images, labels, groups, fold, {0: 2, 1: 2}, aug, seed=1)
    two = expand_training(images, labels, groups, fold, {0: 2, 1: 2}, aug, seed=1)
    other = expand_training(images, labels, groups, fold, {0: 2, 1: 2}, aug, seed=2)
    np.testing.assert_array_equal(one.images, two.images)
    assert not np.array_equal(one.images, other.images)
    assert all(not np.array_equal(copy, images[src]) for copy, src in zip(one.images, one.source, strict=True))


def test_cached_views_use_the_families_and_the_key_follows_them(tmp_path: Path) -> None:
    images = pictures(5, channels=3)
    aug = AugmentConfig.model_validate({"elastic": STRONG["elastic"], "noise": STRONG["noise"]})
    pipeline = build_augment(aug)
    view1 = view_images(images, np.arange(5), 1, pipeline, seed=0)
    assert torch.equal(view1, view_images(images, np.arange(5), 1, pipeline, seed=0))
    assert not torch.equal(view1, view_images(images, np.arange(5), 1, pipeline, seed=1))
    assert all(not torch.equal(view1[i], chw(images[i])) for i in range(5))

    split = SimpleNamespace(prefix=nn.Conv2d(3, 4, 1), cut="blocks.5")
    cache = ActivationCache(tmp_path)

    def entry(augment: AugmentConfig, view: int = 1) -> str:
        return cache.digest(prefix_key(split, "tf_efficientnet_lite0", {"image_size": 32}, augment), view, "images")

    stronger = aug.model_copy(update={"elastic": aug.elastic.model_copy(update={"alpha": 80.0})})
    assert entry(aug) != entry(stronger)  # a family's strength changes the augmented views' entries
    assert entry(aug) != entry(aug.model_copy(update={"noise": None}))  # so does dropping a family
    assert entry(aug, 0) == entry(stronger, 0)  # the unaugmented view is shared
    # without families the key is the one of earlier versions: their cached views stay valid
    old = prefix_key(split, "b", {}, AugmentConfig(hflip=True, rotate=10, zoom=0.1)).augment
    assert old == {"hflip": True, "vflip": False, "rotate": 10.0, "zoom": 0.1, "shift": 0.0, "brightness": 0.0,
                   "contrast": 0.0}


# ---------------------------------------------------------------- train only, end to end


def holdout_config(root: Path, augment: dict, **over: dict) -> dict:
    tree = {"name": "aug", "data": {"source": "folder", "root": str(root), "positive_class": "yes",
                                    "image_size": 32, "max_per_class": 10, "augment": augment,
                                    "split": {"method": "holdout", "test_fraction": 0.25, "val_fraction": 0.25,
                                              "seed": 0}},
            "model": {"backbone": "small_cnn", "weights": "none"}, "transfer": {"strategy": "scratch"},
            "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "progress": False, "num_workers": 0},
            "evaluate": {"bootstrap": 10, "report": False, "label_issues": False}}
    for key, value in over.items():
        tree[key] = {**tree[key], **value}
    return tree


@pytest.mark.parametrize("family", AUGMENT_FAMILIES)
def test_a_family_augments_training_images_only_and_is_recorded(family: str, brain_mri: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image the family sees during a real run is a training image; none is a validation/test image."""
    seen: list[tuple[str, bool]] = []
    forward = AlbumentationsFamilies.forward

    def spy(self: AlbumentationsFamilies, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        seen.append((digest(x), not torch.equal(out, x)))
        return out

    monkeypatch.setattr(AlbumentationsFamilies, "forward", spy)
    cfg = parse_config(holdout_config(brain_mri, {family: STRONG[family]}))
    run_experiment(cfg, tmp_path / "run", progress=False)
    data = prepare_data(cfg, progress=False)
    fold, images = data.folds[0], data.loaded.images
    train = {digest(images[i]) for i in fold.train}
    held_out = {digest(images[i]) for i in np.concatenate([fold.val, fold.test])}
    assert seen and {d for d, _ in seen} <= train and not {d for d, _ in seen} & held_out
    assert all(changed for _, changed in seen)
    # the datasets of the fold, built as train/fold.py builds them: training pixels change, validation pixels not
    torch.manual_seed(0)
    trained = training_dataset(images, data.labels, data.groups, fold, cfg.data, data.class_names, seed=0)
    assert all(not torch.equal(trained[i][0], chw(images[fold.train[i]])) for i in range(len(fold.train)))
    val = ImageArrayDataset(images, data.labels, fold.val)
    assert all(torch.equal(val[i][0], chw(images[fold.val[i]])) for i in range(len(fold.val)))
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["augment"]
    assert recorded[family] == AugmentConfig.model_validate({family: STRONG[family]}).model_dump(mode="json")[family]
    assert all(recorded[other] is None for other in AUGMENT_FAMILIES if other != family)


@pytest.mark.slow
def test_families_work_on_the_cached_prefix_path(brain_mri: Path, tmp_path: Path) -> None:
    augment = {"hflip": True, "grid": STRONG["grid"], "gamma": STRONG["gamma"]}
    cfg = parse_config(holdout_config(brain_mri, augment, model={"backbone": "tf_efficientnet_lite0"},
                                      transfer={"strategy": "fine_tune", "unfreeze_from": "blocks.5"},
                                      train={"prefix_cache": True, "cache_views": 3}))
    metrics = run_experiment(cfg, tmp_path / "run", progress=False)
    assert metrics["n"] > 0
    log = (tmp_path / "run" / "run.log").read_text()
    assert "prefix cache" in log and "3 view(s)" in log
    keyed = [e["parts"]["augment"] for e in ActivationCache().entries() if "augment" in e.get("parts", {})]
    assert keyed and all(a["grid"] == {"p": 1.0, "steps": 4, "limit": 0.5} for a in keyed)


def test_albumentations_is_imported_only_when_a_family_is_configured():
    """albumentations + OpenCV cost every process ~60 MB: the modules a run imports must not pull them in
    unless a config names a family (demo peak RSS, issue 18)."""
    import subprocess
    import sys

    code = ("import sys, medtl.cli, medtl.experiment, medtl.train.engine, medtl.data.transforms as t\n"
            "assert 'albumentations' not in sys.modules and 'cv2' not in sys.modules, 'imported eagerly'\n"
            "from medtl.config import AugmentConfig\n"
            "t.build_augment(AugmentConfig(elastic={'p': 1.0}))\n"
            "assert 'albumentations' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
