"""data.synthetic: the fold fingerprint check, the per-class quota and reading a synthetic folder back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.config import SyntheticConfig, load_config
from medtl.data.samples import Sample
from medtl.data.splits import Fold
from medtl.data.synthetic import (
    SYNTH_JSON,
    check_fingerprints,
    class_quota,
    load_fold_synthetic,
    train_fingerprint,
)
from medtl.errors import ConfigError

CLASSES = ["no", "yes"]


def samples(n: int = 10) -> list[Sample]:
    return [Sample(id=f"img{i:02d}", path=f"/x/img{i:02d}.png", label=i % 2, patient=None, split=None)
            for i in range(n)]


def folds() -> list[Fold]:
    idx = np.arange(10)
    return [Fold(k, np.setdiff1d(idx, idx[k::2]), np.array([], dtype=np.int64), idx[k::2]) for k in range(2)]


def make_dir(root: Path, fingerprints: list[str], per_class: int = 4, size: int = 16, channels: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for k in range(len(fingerprints)):
        for name in CLASSES:
            folder = root / f"fold{k}" / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, channels), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"s{i}.png")
    meta = {"class_names": CLASSES, "folds": [{"fold": k, "train_fingerprint": f} for k, f in enumerate(fingerprints)]}
    (root / SYNTH_JSON).write_text(json.dumps(meta))
    return root


def test_fingerprint_is_the_sorted_ids_and_changes_with_the_set() -> None:
    s = samples()
    assert train_fingerprint(s, np.array([3, 1, 2])) == train_fingerprint(s, np.array([1, 2, 3]))
    assert train_fingerprint(s, np.array([1, 2, 3])) != train_fingerprint(s, np.array([1, 2, 4]))


def test_matching_folder_passes_and_another_split_is_a_config_error(tmp_path: Path) -> None:
    s, fs = samples(), folds()
    good = make_dir(tmp_path / "good", [train_fingerprint(s, f.train) for f in fs])
    assert check_fingerprints(SyntheticConfig(dir=good), s, fs, CLASSES)["class_names"] == CLASSES
    swapped = make_dir(tmp_path / "swapped", [train_fingerprint(s, f.train) for f in reversed(fs)])
    with pytest.raises(ConfigError, match="made for a different split.*fold 0.*Rerun `medtl synth`"):
        check_fingerprints(SyntheticConfig(dir=swapped), s, fs, CLASSES)
    with pytest.raises(ConfigError, match="made for classes"):
        check_fingerprints(SyntheticConfig(dir=good), s, fs, ["a", "b"])
    with pytest.raises(ConfigError, match="no synth.json there.*medtl synth"):
        check_fingerprints(SyntheticConfig(dir=tmp_path / "missing"), s, fs, CLASSES)


@pytest.mark.parametrize(("counts", "fraction", "expected"), [
    ([60, 40], 0.5, [30, 20]), ([60, 40], 1.0, [60, 40]), ([7, 6], 0.5, [4, 3]), ([3, 3, 1], 1 / 3, [1, 1, 0]),
    ([5, 5], 0.0, [0, 0]),
])
def test_quota_follows_the_real_class_proportions_and_adds_up(counts: list[int], fraction: float,
                                                              expected: list[int]) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    quota = class_quota(labels, len(counts), fraction)
    assert quota.tolist() == expected
    assert quota.sum() == math.floor(fraction * sum(counts) + 0.5)  # rounded half up


def test_fold_images_are_read_resized_in_the_run_colour(tmp_path: Path) -> None:
    root = make_dir(tmp_path / "syn", ["a", "b"], per_class=4, size=16)
    real = np.array([0, 0, 0, 1, 1])  # 3 no, 2 yes; fraction 1 → 3 + 2
    got = load_fold_synthetic(SyntheticConfig(dir=root, fraction=1.0), 1, real, CLASSES, 24, "rgb", "squash")
    assert got.images.shape == (5, 24, 24, 3) and got.images.dtype == np.uint8
    assert got.labels.tolist() == [0, 0, 0, 1, 1] and got.counts(CLASSES) == {"no": 3, "yes": 2}
    assert all(f.startswith("fold1/") for f in got.files)
    with pytest.raises(ConfigError, match="holds 4 images, fraction 2.0 needs 6"):
        load_fold_synthetic(SyntheticConfig(dir=root, fraction=2.0), 1, real, CLASSES, 24, "rgb", "squash")


def test_config_resolves_the_dir_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text("name: t\ndata: {source: folder, root: d, synthetic: {dir: syn, fraction: 1}}\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert cfg.data.synthetic.dir == (tmp_path / "syn").resolve() and cfg.data.synthetic.fraction == 1.0
    assert load_config(tmp_path / "exp.yaml", ["data.synthetic=null"]).data.synthetic is None
