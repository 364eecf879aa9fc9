"""Tests of medtl.transfer.prefix_cache: exact prefix/suffix splits of real backbones, the on-disk
cache (hits across instances and processes, misses on any key change, LRU cap, concurrent writers,
corrupt files, float16 error), reproducible augmented views, and training on cached activations
giving the same weights as training the full model."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from medtl.config import AugmentConfig, TrainConfig, TransferConfig, UnfreezeStep
from medtl.data.transforms import TTA_VIEWS, ImageArrayDataset, Normalizer, build_augment
from medtl.errors import ConfigError, MedtlError
from medtl.models.cuts import cut_points, walk
from medtl.models.network import Preprocessing, TransferNet, create_model
from medtl.train.engine import ClassifierModule, fit, lr_multipliers
from medtl.train.inference import predict_probs
from medtl.transfer.freeze import apply_strategy, check_schedule, set_trainable
from medtl.transfer.gradual import step_lr_mults
from medtl.transfer.prefix_cache import (
    ActivationCache,
    PrefixKey,
    PrefixViewsDataset,
    ViewEpoch,
    activation_prepare,
    cache_cut,
    default_root,
    images_sha256,
    predict_cached,
    prefix_key,
    prefix_views,
    split_at,
    view_images,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = PrefixKey("a" * 64, "tf_efficientnet_lite0", "blocks.5", {"image_size": 32, "mean": (0.5,) * 3})
HALF = Normalizer((0.5,) * 3, (0.5,) * 3)
CUTS = {"tf_efficientnet_lite0": ["bn1", "blocks.3", "blocks.5", "conv_head", "head"],
        "resnet18": ["layer1.0", "layer3.1", "layer4.0"],
        "densenet121": ["features.norm0", "features.denseblock2", "features.norm5"]}


@pytest.fixture(scope="module")
def backbones() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: timm.create_model(name, pretrained=False, num_classes=0).eval() for name in CUTS}


def images(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def freeze_before(backbone: nn.Module, cut: str) -> None:
    names = [name for name, _ in walk(backbone)]
    stop = len(names) if cut == "head" else names.index(cut)
    for name in names[:stop]:
        backbone.get_submodule(name).requires_grad_(False)


class Counting:
    """A compute_fn ``images → float32 images * scale`` that counts its calls."""

    def __init__(self, scale: float = 1.0) -> None:
        self.calls = 0
        self.scale = scale

    def __call__(self, imgs: np.ndarray, idx: np.ndarray, view: object):
        self.calls += 1
        for start in range(0, len(idx), 5):
            yield imgs[idx[start:start + 5]].astype(np.float32) * self.scale


# ---------------------------------------------------------------- splitting


@pytest.mark.parametrize(("arch", "cut"), [(a, c) for a, cuts in CUTS.items() for c in cuts])
def test_prefix_then_suffix_is_the_backbone(backbones: dict[str, nn.Module], arch: str, cut: str) -> None:
    backbone = copy.deepcopy(backbones[arch])
    freeze_before(backbone, cut)
    split = split_at(backbone, cut, verify_size=None)
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(split.suffix(split.prefix(x)), backbone(x))
    points = cut_points(backbone)
    assert cut_points(split.suffix) == ([] if cut == "head" else points[points.index(cut):])
    owned = {id(p) for p in split.prefix.parameters()} | {id(p) for p in split.suffix.parameters()}
    assert owned == {id(p) for p in backbone.parameters()}  # shared, each in one part
    assert not {id(p) for p in split.prefix.parameters()} & {id(p) for p in split.suffix.parameters()}


@pytest.mark.parametrize(("arch", "truncate_at", "cut"), [("tf_efficientnet_lite0", "blocks.4", "blocks.2"),
                                                          ("small_cnn", None, "blocks.1")])
def test_split_of_truncated_and_scratch_backbones(arch: str, truncate_at: str | None, cut: str) -> None:
    torch.manual_seed(0)
    model, _ = create_model(arch, "none", 2, truncate_at=truncate_at)
    freeze_before(model.backbone, cut)
    split = split_at(model.backbone, cut, verify_size=32)  # raises when the split does not reproduce it
    assert cut_points(split.suffix)[0] == cut


def test_split_refuses_a_trainable_prefix_and_unknown_cuts(backbones: dict[str, nn.Module]) -> None:
    backbone = copy.deepcopy(backbones["tf_efficientnet_lite0"])
    with pytest.raises(ConfigError, match="trainable"):
        split_at(backbone, "blocks.5")
    with pytest.raises(ConfigError, match="Did you mean 'blocks.5'"):
        split_at(backbone, "block.5")


class _ScaledForward(nn.Module):
    """A forward with an operation between its modules, which no walk of the modules reproduces."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(2 * x)).mean((2, 3))  # the prefix (stem) alone misses the 2 *


def test_split_detects_a_forward_it_cannot_reproduce() -> None:
    model = _ScaledForward()
    model.stem.requires_grad_(False)
    with pytest.raises(ConfigError, match="does not reproduce"):
        split_at(model, "body", verify_size=16)


def test_cache_cut_per_strategy(backbones: dict[str, nn.Module]) -> None:
    lite0 = backbones["tf_efficientnet_lite0"]
    schedule = [UnfreezeStep(epoch=0, unfreeze_from="head"), UnfreezeStep(epoch=2, unfreeze_from="blocks.5"),
                UnfreezeStep(epoch=4, unfreeze_from="blocks.3")]
    assert cache_cut(lite0, TransferConfig(strategy="feature_extraction")) == "head"
    assert cache_cut(lite0, TransferConfig(strategy="fine_tune", unfreeze_from="blocks.5")) == "blocks.5"
    assert cache_cut(lite0, TransferConfig(strategy="gradual", schedule=schedule)) == "blocks.3"
    assert cache_cut(lite0, TransferConfig(strategy="fine_tune")) is None
    assert cache_cut(lite0, TransferConfig(strategy="fine_tune", unfreeze_from="conv_stem")) is None
    assert cache_cut(lite0, TransferConfig(strategy="scratch")) is None


# ---------------------------------------------------------------- the cache


def test_hit_across_instances_on_one_root(tmp_path: Path) -> None:
    imgs, idx = images(), np.arange(12)
    compute = Counting()
    first = ActivationCache(tmp_path, 10**7, "float32").get_or_compute(KEY, imgs, idx, compute)
    second = ActivationCache(tmp_path, 10**7, "float32").get_or_compute(KEY, imgs, idx, compute)
    assert compute.calls == 1
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, imgs.astype(np.float32))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("change", ["weights", "cut", "image_size", "images", "dtype", "indices"])
def test_any_key_change_misses(tmp_path: Path, change: str) -> None:
    imgs, idx = images(), np.arange(12)
    compute = Counting()
    ActivationCache(tmp_path, 10**7, "float32").get_or_compute(KEY, imgs, idx, compute)
    key, dtype = KEY, "float32"
    if change == "weights":
        key = replace(KEY, weights="b" * 64)
    elif change == "cut":
        key = replace(KEY, cut="blocks.3")
    elif change == "image_size":
        key = replace(KEY, preprocessing={**KEY.preprocessing, "image_size": 64})
    elif change == "images":
        imgs = imgs.copy()
        imgs[3, 0, 0, 0] ^= 1
    elif change == "dtype":
        dtype = "float16"
    else:
        idx = idx[::-1].copy()
    ActivationCache(tmp_path, 10**7, dtype).get_or_compute(key, imgs, idx, compute)
    assert compute.calls == 2
    assert ActivationCache(tmp_path).info().entries == 2


def test_prefix_key_follows_the_prefix_weights_and_cut(backbones: dict[str, nn.Module]) -> None:
    pre = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "rgb", "stretch")
    backbone = copy.deepcopy(backbones["tf_efficientnet_lite0"])
    backbone.requires_grad_(False)
    key5 = prefix_key(split_at(backbone, "blocks.5", None), "tf_efficientnet_lite0", pre)
    assert prefix_key(split_at(backbone, "blocks.5", None), "tf_efficientnet_lite0", pre) == key5
    assert prefix_key(split_at(backbone, "blocks.3", None), "tf_efficientnet_lite0", pre).weights != key5.weights
    with torch.no_grad():
        backbone.blocks[6][0].conv_pw.weight.add_(1.0)  # above the cut: the prefix is unchanged
    assert prefix_key(split_at(backbone, "blocks.5", None), "tf_efficientnet_lite0", pre) == key5
    with torch.no_grad():
        backbone.bn1.running_mean.add_(0.1)  # a buffer of the prefix changes what it computes
    assert prefix_key(split_at(backbone, "blocks.5", None), "tf_efficientnet_lite0", pre) != key5


def test_augmented_views_key_on_augmentation_and_seed_but_view_zero_does_not(tmp_path: Path) -> None:
    cache = ActivationCache(tmp_path, 10**7)
    a = replace(KEY, augment=AugmentConfig(hflip=True).model_dump(), seed=1)
    b = replace(KEY, augment=AugmentConfig(rotate=10).model_dump(), seed=2)
    assert cache.digest(a, 0, "c") == cache.digest(b, 0, "c") == cache.digest(KEY, 0, "c")
    assert cache.digest(a, "hflip", "c") == cache.digest(b, "hflip", "c")
    assert cache.digest(a, "zoom", "c") == cache.digest(b, "zoom", "c") != cache.digest(a, "zoom_hflip", "c")
    assert cache.digest(a, 1, "c") != cache.digest(b, 1, "c")
    assert cache.digest(a, 1, "c") != cache.digest(a, 2, "c")
    assert cache.digest(a, np.int64(1), "c") == cache.digest(a, 1, "c")
    with pytest.raises(ValueError, match="view"):
        cache.digest(a, -1, "c")
    with pytest.raises(ValueError, match="zoom_hflip"):
        cache.digest(a, "vflip", "c")


def test_lru_eviction_keeps_the_total_under_the_cap(tmp_path: Path) -> None:
    imgs = images(4)
    idx = np.arange(4)
    probe = ActivationCache(tmp_path / "probe", 10**7, "float32")
    probe.get_or_compute({"k": "x"}, imgs, idx, Counting())
    size = probe.info().bytes
    cache = ActivationCache(tmp_path / "c", int(2.5 * size), "float32")
    computes = {name: Counting() for name in "ABC"}
    for name in "AB":
        cache.get_or_compute({"k": name}, imgs, idx, computes[name])
    cache.get_or_compute({"k": "A"}, imgs, idx, computes["A"])  # A is now more recent than B
    cache.get_or_compute({"k": "C"}, imgs, idx, computes["C"])
    assert cache.info().entries == 2 and cache.info().bytes <= cache.max_bytes
    for name in "AC":
        cache.get_or_compute({"k": name}, imgs, idx, computes[name])
    assert [computes[n].calls for n in "AC"] == [1, 1]  # still there
    cache.get_or_compute({"k": "B"}, imgs, idx, computes["B"])
    assert computes["B"].calls == 2  # B was evicted
    assert cache.info().bytes <= cache.max_bytes


def test_an_entry_larger_than_the_cap_stays_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ActivationCache(tmp_path, 1000, "float32")
    with caplog.at_level(logging.WARNING, logger="medtl.transfer.prefix_cache"):
        out = cache.get_or_compute(KEY, images(), np.arange(12), Counting())
    assert not isinstance(out, np.memmap) and out.shape == (12, 32, 32, 3)
    assert cache.info().entries == 0 and "exceeds max_bytes" in caplog.text
    assert not list(tmp_path.glob("tmp-*"))


def test_info_and_clear(tmp_path: Path) -> None:
    cache = ActivationCache(tmp_path, 10**7, "float32")
    for scale in (1.0, 2.0):
        cache.get_or_compute({"scale": scale}, images(), np.arange(12), Counting(scale))
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix in (".npy", ".json"))
    info = cache.info()
    assert (info.root, info.entries, info.bytes) == (tmp_path, 2, on_disk)
    assert {e["parts"]["scale"] for e in cache.entries()} == {1.0, 2.0}
    dead = tmp_path / f"tmp-{'0' * 16}-999999999-{'0' * 8}.npy"  # a writer that died mid-way
    dead.write_bytes(b"partial")
    keep = tmp_path / "notes.txt"
    keep.write_text("not ours")
    assert cache.clear() == (2, on_disk)
    assert cache.info().entries == 0 and not dead.exists() and keep.exists()


def test_default_root_follows_medtl_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path))
    assert default_root() == tmp_path / "activations"
    assert ActivationCache(max_bytes=10).root == tmp_path / "activations"
    monkeypatch.delenv("MEDTL_CACHE")
    assert default_root() == Path.home() / ".cache" / "medtl" / "activations"


def _writer(root: str, log_path: str, start: float) -> None:
    imgs = images()

    def compute(imgs: np.ndarray, idx: np.ndarray, view: object):
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # long enough for the other writer to arrive meanwhile
        yield imgs[idx].astype(np.float32) * 2

    time.sleep(max(0.0, start - time.time()))
    out = ActivationCache(Path(root), 10**7, "float32").get_or_compute(KEY, imgs, np.arange(12), compute)
    np.testing.assert_array_equal(out, imgs.astype(np.float32) * 2)


def test_concurrent_writers_leave_one_valid_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    log_path = tmp_path / "computed.log"
    start = time.time() + 0.5
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "cache"), str(log_path), start)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert len(log_path.read_text().split()) == 1  # the second writer waited and read the first's entry
    cache = ActivationCache(tmp_path / "cache", 10**7, "float32")
    assert cache.info().entries == 1 and not list((tmp_path / "cache").glob("tmp-*"))
    compute = Counting(2.0)
    out = cache.get_or_compute(KEY, images(), np.arange(12), compute)
    assert compute.calls == 0
    np.testing.assert_array_equal(out, images().astype(np.float32) * 2)


@pytest.mark.parametrize("damage", ["truncated", "too long", "other shape", "garbage", "sidecar"])
def test_a_corrupt_entry_is_detected_and_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    damage: str) -> None:
    imgs, idx = images(), np.arange(12)
    cache = ActivationCache(tmp_path, 10**7, "float32")
    compute = Counting()
    cache.get_or_compute(KEY, imgs, idx, compute)
    path = next(tmp_path.glob("*.npy"))
    if damage == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "too long":
        with open(path, "ab") as fh:
            fh.write(b"\0" * 64)
    elif damage == "other shape":
        np.save(path, np.zeros((11, 32, 32, 3), np.float32))
    elif damage == "garbage":
        path.write_bytes(b"not an array")
    else:
        path.with_suffix(".json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="medtl.transfer.prefix_cache"):
        out = cache.get_or_compute(KEY, imgs, idx, compute)
    assert compute.calls == 2
    assert str(path) in caplog.text and "corrupt" in caplog.text
    np.testing.assert_array_equal(out, imgs.astype(np.float32))
    assert cache.info().entries == 1


def test_non_finite_float16_activations_raise(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="float32"):
        ActivationCache(tmp_path, 10**7, "float16").get_or_compute(KEY, images(), np.arange(12), Counting(1e5))
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("tmp-*"))


def test_float16_storage_error_is_small(tmp_path: Path, backbones: dict[str, nn.Module]) -> None:
    backbone = copy.deepcopy(backbones["tf_efficientnet_lite0"])
    freeze_before(backbone, "blocks.5")
    split = split_at(backbone, "blocks.5", None)
    imgs = images(8)
    half, full = (prefix_views(ActivationCache(tmp_path / d, 10**8, d), split, KEY, imgs, HALF)[0]
                  for d in ("float16", "float32"))
    assert half.dtype == np.float16 and full.dtype == np.float32
    scale = float(np.abs(full).max())
    torch.testing.assert_close(torch.from_numpy(half.astype(np.float32)), torch.from_numpy(np.array(full)),
                               rtol=2e-3, atol=2e-3 * scale)


# ---------------------------------------------------------------- views and training


def test_augmented_views_are_reproducible(tmp_path: Path) -> None:
    imgs = images(6)
    augment = build_augment(AugmentConfig(hflip=True, rotate=20, brightness=0.2))
    state = torch.random.get_rng_state()
    one = view_images(imgs, np.arange(6), 1, augment, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    parts = torch.cat([view_images(imgs, np.arange(3), 1, augment, 3),
                       view_images(imgs, np.arange(3, 6), 1, augment, 3)])
    assert torch.equal(one, parts)  # independent of batching
    assert not torch.equal(one, view_images(imgs, np.arange(6), 2, augment, 3))
    assert not torch.equal(one, view_images(imgs, np.arange(6), 1, augment, 4))
    assert torch.equal(view_images(imgs, np.arange(6), 0, augment, 3), torch.from_numpy(imgs).permute(0, 3, 1, 2))
    with pytest.raises(ConfigError, match="augmentation"):
        view_images(imgs, np.arange(6), 1, None, 3)


def test_views_dataset_draws_views_per_epoch_in_workers_too() -> None:
    k, n = 4, 40
    views = [np.full((n, 2), v, dtype=np.float32) for v in range(k)]
    ds = PrefixViewsDataset(views, np.arange(n), np.arange(n) % 2, seed=5)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append([ds.view_of(i) for i in range(n)])
        assert [int(ds[i][0][0]) for i in range(n)] == seen[-1]
    assert seen[0] != seen[1] and set(seen[0]) == set(range(k))
    ds.set_epoch(0)
    assert [ds.view_of(i) for i in range(n)] == seen[0]  # deterministic
    loader = DataLoader(ds, batch_size=8, num_workers=1, persistent_workers=True, multiprocessing_context="fork")
    for epoch in range(2):
        ds.set_epoch(epoch)
        drawn = torch.cat([x[:, 0] for x, _ in loader]).int().tolist()
        assert drawn == seen[epoch]


def test_training_on_cached_activations_equals_training_the_full_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full, _ = create_model("tf_efficientnet_lite0", "none", 2)
    apply_strategy(full, TransferConfig(strategy="fine_tune", unfreeze_from="blocks.5", bn="train"))
    cached = copy.deepcopy(full)
    before = {k: v.clone() for k, v in full.state_dict().items()}
    imgs, labels, idx = images(16), np.arange(16) % 2, np.arange(16)
    # One batch per epoch: the prefix then sees the same batch as in the cached computation. (With
    # other batches convolutions round differently in the last bit, which training amplifies.)
    cfg = TrainConfig(optimizer="adam", lr=1e-2, epochs=3, batch_size=16, warmup_epochs=0, progress=False)

    L.seed_everything(0, verbose=False)
    fit(ClassifierModule(full, cfg, 1, prepare=HALF), ImageArrayDataset(imgs, labels, idx), None, cfg, 0, False)

    split = split_at(cached.backbone, "blocks.5")
    blocks = prefix_views(ActivationCache(tmp_path, 10**8, "float32"), split, KEY, imgs, HALF)
    net = TransferNet(split.suffix, cached.head)
    net.freeze_bn_stats = cached.freeze_bn_stats
    train = PrefixViewsDataset(blocks, idx, labels)
    L.seed_everything(0, verbose=False)
    fit(ClassifierModule(net, cfg, 1, prepare=activation_prepare), train, None, cfg, 0, False, [ViewEpoch(train)])

    after = full.state_dict()
    assert not torch.equal(after["backbone.blocks.5.0.conv_pw.weight"], before["backbone.blocks.5.0.conv_pw.weight"])
    assert torch.equal(after["backbone.blocks.4.0.conv_pw.weight"], before["backbone.blocks.4.0.conv_pw.weight"])
    for name, value in cached.state_dict().items():  # the suffix's modules are the cached model's own
        torch.testing.assert_close(value, after[name], rtol=1e-4, atol=1e-5, msg=name)
    probs = predict_cached(net, blocks, idx)
    with torch.no_grad():
        expected = cached.eval()(HALF(torch.from_numpy(imgs).permute(0, 3, 1, 2))).softmax(1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # Test-time views from the cache: the same average as the full model's predict_probs.
    views = [blocks[0], *prefix_views(ActivationCache(tmp_path, 10**8, "float32"), split, KEY, imgs, HALF,
                                      TTA_VIEWS["hflip_zoom"][1:])]
    np.testing.assert_allclose(predict_cached(net, views, idx),
                               predict_probs(cached, HALF, imgs, idx, tta="hflip_zoom", fast=False),
                               rtol=1e-4, atol=1e-5)


def test_suffix_net_supports_gradual_unfreezing_and_layer_decay() -> None:
    torch.manual_seed(0)
    full, _ = create_model("tf_efficientnet_lite0", "none", 2)
    schedule = [UnfreezeStep(epoch=0, unfreeze_from="head"), UnfreezeStep(epoch=1, unfreeze_from="blocks.5"),
                UnfreezeStep(epoch=2, unfreeze_from="blocks.3", lr=1e-4)]
    transfer = TransferConfig(strategy="gradual", schedule=schedule)
    apply_strategy(full, transfer)
    net = TransferNet(split_at(full.backbone, cache_cut(full.backbone, transfer)).suffix, full.head)
    check_schedule(net, schedule)
    assert step_lr_mults(net, schedule, 1e-3) == step_lr_mults(full, schedule, 1e-3)
    set_trainable(net, "blocks.5")
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}  # the shared parameters moved
    assert trainable and all(n.startswith(("backbone.blocks.5.", "backbone.blocks.6.", "backbone.conv_head.",
                                           "backbone.bn2.", "head.")) for n in trainable)
    decay = {id(p): m for m, params in lr_multipliers(full, 0.8) for p in params}
    assert all(decay[id(p)] == m for m, params in lr_multipliers(net, 0.8) for p in params)


def test_prefix_views_hash_images_once_and_hit_on_rerun(tmp_path: Path, backbones: dict[str, nn.Module]) -> None:
    backbone = copy.deepcopy(backbones["resnet18"])
    freeze_before(backbone, "layer2.0")
    split = split_at(backbone, "layer2.0", None)
    imgs = images(6)
    key = replace(KEY, augment=AugmentConfig(hflip=True).model_dump(), seed=1)
    augment = build_augment(AugmentConfig(hflip=True))
    first = prefix_views(ActivationCache(tmp_path, 10**8), split, key, imgs, HALF, [0, 1, "hflip"], augment)
    assert [b.shape for b in first] == [(6, 64, 8, 8)] * 3
    assert ActivationCache(tmp_path).info().entries == 3
    assert images_sha256(imgs, np.arange(6)) != images_sha256(imgs, np.arange(5))
    inodes = {p.name: p.stat().st_ino for p in tmp_path.glob("*.npy")}
    again = prefix_views(ActivationCache(tmp_path, 10**8), split, key, imgs, HALF, [0, 1, "hflip"], augment)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {p.name: p.stat().st_ino for p in tmp_path.glob("*.npy")} == inodes  # read, not written again
