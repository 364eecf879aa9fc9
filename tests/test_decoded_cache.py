"""The decoded-image cache: hits, misses, corruption, eviction, switches and the CLI."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medtl.config import DataConfig, parse_config
from medtl.data import decoded_cache
from medtl.data.sources import LoadedImages, files, load_images, load_table
from medtl.errors import ConfigError


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own disk root and an empty memory tier, and leaves the memory tier empty."""
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    for name in (decoded_cache.SWITCH_ENV, decoded_cache.MEMORY_ENV, decoded_cache.DISK_ENV):
        monkeypatch.delenv(name, raising=False)
    decoded_cache.clear_memory()
    yield
    decoded_cache.clear_memory()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths passed to ``open_image`` by ``load_images`` (one per decoded file)."""
    calls: list[str] = []
    real = files.open_image

    def counting(path: str | Path) -> Image.Image:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(files, "open_image", counting)
    return calls


def _noise(shape: tuple[int, ...], seed: int, dtype: type = np.uint8, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def _dataset(root: Path) -> Path:
    """Two class folders with PNGs of several modes and a JPEG (all different pixels)."""
    (root / "no").mkdir(parents=True)
    (root / "yes").mkdir(parents=True)
    Image.fromarray(_noise((30, 40), 0)).save(root / "no" / "gray.png")
    Image.fromarray(_noise((41, 23, 3), 1)).save(root / "no" / "rgb.jpg", quality=90)
    Image.fromarray(_noise((20, 20, 4), 2)).save(root / "no" / "rgba.png")
    Image.fromarray(_noise((33, 35), 3, np.uint16, 65536)).save(root / "yes" / "deep.png")
    Image.fromarray(_noise((25, 30, 3), 4)).convert("P").save(root / "yes" / "palette.png")
    Image.fromarray(_noise((64, 48), 5)).save(root / "yes" / "big.jpeg", quality=80)
    return root


def _cfg(root: Path, **kw: object) -> DataConfig:
    return DataConfig.model_validate({"source": "folder", "root": root, "image_size": 16, "color": "grayscale"} | kw)


def _load(cfg: DataConfig) -> LoadedImages:
    return load_images(load_table(cfg), cfg, progress=False)


def _with_cache(cfg: DataConfig, cache: bool) -> DataConfig:
    return cfg.model_copy(update={"cache": cache})


def _entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "decoded").rglob("*.npy"))


def _same(a: LoadedImages, b: LoadedImages) -> None:
    assert a.images.dtype == b.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert a.hashes == b.hashes
    assert a.bad == b.bad
    assert [s.id for s in a.table.samples] == [s.id for s in b.table.samples]


N = 6  # images in _dataset


# ---------------------------------------------------------------- hits and identity


@pytest.mark.parametrize("policy", [{}, {"color": "rgb", "resize": "pad"}, {"resize": "crop", "crop": "foreground"}])
def test_second_load_hits_and_is_bit_identical(tmp_path: Path, decodes: list[str], caplog: pytest.LogCaptureFixture,
                                               policy: dict) -> None:
    root = _dataset(tmp_path / "data")
    reference = _load(_cfg(root, cache=False, **policy))
    assert len(decodes) == N
    cfg = _cfg(root, **policy)
    with caplog.at_level(logging.INFO, logger="medtl.data.sources"):
        first = _load(cfg)
    assert len(decodes) == 2 * N and f"decoded images: 0 from cache, {N} decoded" in caplog.text
    assert len(_entries(tmp_path)) == N
    _same(first, reference)

    decoded_cache.clear_memory()  # the disk tier alone
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medtl.data.sources"):
        from_disk = _load(cfg)
    assert len(decodes) == 2 * N and f"decoded images: {N} from cache, 0 decoded" in caplog.text
    _same(from_disk, reference)
    assert decoded_cache.memory_info()[0] == N  # promoted to memory

    for entry in _entries(tmp_path):
        entry.unlink()  # the memory tier alone
    from_memory = _load(cfg)
    assert len(decodes) == 2 * N and not _entries(tmp_path)
    _same(from_memory, reference)


def test_memory_tier_works_with_the_disk_tier_off(tmp_path: Path, decodes: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_DECODED_CACHE", "0")
    cfg = _cfg(_dataset(tmp_path / "data"))
    first = _load(cfg)
    second = _load(cfg)
    assert len(decodes) == N
    _same(first, second)
    assert not (tmp_path / "cache" / "decoded").exists()
    assert not decoded_cache.info().enabled


def test_memory_tier_bound(tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_DECODED_CACHE", "0")
    monkeypatch.setenv("MEDTL_DECODED_MEMORY_GB", str(2.5 * 16 * 16 / 2**30))  # room for two 16x16 images
    cfg = _cfg(_dataset(tmp_path / "data"))
    _load(cfg)
    assert decoded_cache.memory_info() == (2, 2 * 16 * 16)
    _load(cfg)
    assert 2 * N - 2 <= len(decodes) <= 2 * N  # at most the two kept images hit
    assert decoded_cache.memory_info() == (2, 2 * 16 * 16)


def test_cache_follows_content_not_path(tmp_path: Path, decodes: list[str]) -> None:
    a = _dataset(tmp_path / "a")
    b = shutil.copytree(a, tmp_path / "b")  # the same bytes under other paths, with new mtimes
    first = _load(_cfg(a))
    other = _load(_cfg(b))
    assert len(decodes) == N
    np.testing.assert_array_equal(first.images, other.images)
    assert first.hashes == other.hashes


# ---------------------------------------------------------------- misses


def test_policy_change_misses(tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "data")
    _load(_cfg(root))
    bigger = _load(_cfg(root, image_size=24))
    assert len(decodes) == 2 * N and bigger.images.shape == (N, 24, 24, 1)
    _load(_cfg(root, color="rgb"))
    assert len(decodes) == 3 * N
    monkeypatch.setattr(decoded_cache, "FORMAT_VERSION", decoded_cache.FORMAT_VERSION + 1)
    _load(_cfg(root))
    assert len(decodes) == 4 * N
    policies = {p.name for p in (tmp_path / "cache" / "decoded").iterdir() if p.is_dir()}
    assert len(policies) == 4 and all("16px" in p or "24px" in p for p in policies)


def test_content_change_at_the_same_path_misses(tmp_path: Path, decodes: list[str]) -> None:
    root = _dataset(tmp_path / "data")
    cfg = _cfg(root)
    _load(cfg)
    Image.fromarray(_noise((30, 40), 99)).save(root / "no" / "gray.png")  # same path, new pixels
    again = _load(cfg)
    assert decodes[N:] == [str((root / "no" / "gray.png").absolute())]
    _same(again, _load(_cfg(root, cache=False)))


def test_file_changed_while_decoding_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "data")
    target = root / "no" / "gray.png"
    real = files.open_image

    def racing(path: str | Path) -> Image.Image:
        img = real(path)
        if Path(path).name == "gray.png":
            Image.fromarray(_noise((31, 40), 7)).save(target)  # rewritten after it was hashed
        return img

    monkeypatch.setattr(files, "open_image", racing)
    _load(_cfg(root))
    assert len(_entries(tmp_path)) == N - 1


# ---------------------------------------------------------------- corruption


def test_corrupt_entries_are_decoded_again(tmp_path: Path, decodes: list[str]) -> None:
    cfg = _cfg(_dataset(tmp_path / "data"))
    reference = _load(cfg)
    garbage, truncated, flipped = _entries(tmp_path)[:3]
    garbage.write_bytes(b"not an npy file")
    truncated.write_bytes(truncated.read_bytes()[:-10])
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # a pixel: only the checksum notices
    flipped.write_bytes(bytes(data))
    decoded_cache.clear_memory()
    again = _load(cfg)
    assert len(decodes) == N + 3
    _same(again, reference)
    decoded_cache.clear_memory()
    _same(_load(cfg), reference)  # the entries were rewritten whole
    assert len(decodes) == N + 3


def test_corrupt_image_is_reported_and_never_cached(tmp_path: Path, decodes: list[str]) -> None:
    root = _dataset(tmp_path / "data")
    (root / "yes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    reference = _load(_cfg(root, cache=False, max_bad_fraction=0.5))
    assert [sid for sid, _ in reference.bad] == ["yes/broken.jpg"]
    cfg = _cfg(root, max_bad_fraction=0.5)
    first = _load(cfg)
    second = _load(cfg)
    _same(first, reference)
    _same(second, reference)
    assert decodes[2 * (N + 1):] == [str((root / "yes" / "broken.jpg").absolute())]  # only it decoded again
    assert len(_entries(tmp_path)) == N
    sha = hashlib.sha256((root / "yes" / "broken.jpg").read_bytes()).hexdigest()
    assert not any(p.stem == sha for p in _entries(tmp_path))


def test_missing_file_is_reported_as_without_the_cache(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    cfg = _cfg(root, max_bad_fraction=0.5)
    table = load_table(cfg)
    (root / "yes" / "big.jpeg").unlink()  # vanished between listing and decoding
    cached = load_images(table, cfg, progress=False)
    plain = load_images(table, _with_cache(cfg, False), progress=False)
    _same(cached, plain)
    assert [sid for sid, _ in cached.bad] == ["yes/big.jpeg"] and "file not found" in cached.bad[0][1]


def test_unwritable_root_never_fails_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MEDTL_CACHE", str(blocker))
    cfg = _cfg(_dataset(tmp_path / "data"))
    _same(_load(cfg), _load(_with_cache(cfg, False)))


# ---------------------------------------------------------------- eviction


def test_eviction_keeps_the_most_recently_used(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    cfg = _cfg(root)
    _load(cfg)
    entries = _entries(tmp_path)
    size = entries[0].stat().st_size
    assert all(e.stat().st_size == size for e in entries)
    for i, entry in enumerate(entries):
        os.utime(entry, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # old, in a known order
    decoded_cache.clear_memory()
    table = load_table(cfg)
    used = replace(table, samples=[s for s in table.samples if s.id == "no/gray.png"])
    load_images(used, cfg, progress=False)  # a disk hit: the LRU clock of its entry moves to now
    sha = hashlib.sha256((root / "no" / "gray.png").read_bytes()).hexdigest()
    newest_other = max((e for e in entries if e.stem != sha), key=lambda e: e.stat().st_mtime_ns)
    removed, freed = decoded_cache.evict(tmp_path / "cache" / "decoded", int(2.5 * size))
    assert (removed, freed) == (N - 2, (N - 2) * size)
    assert {e.stem for e in _entries(tmp_path)} == {sha, newest_other.stem}


def test_load_evicts_under_a_tiny_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "data")
    _load(_cfg(root))
    size = _entries(tmp_path)[0].stat().st_size
    monkeypatch.setenv("MEDTL_DECODED_CACHE_GB", str(2.5 * size / 2**30))
    _load(_cfg(root, image_size=17))  # writes N more entries, then evicts down to the cap
    info = decoded_cache.info()
    assert info.entries == 2 and info.bytes <= info.max_bytes


# ---------------------------------------------------------------- switches


def test_data_cache_false_bypasses_both_tiers(tmp_path: Path, decodes: list[str]) -> None:
    root = _dataset(tmp_path / "data")
    _load(_cfg(root, cache=False))
    assert not (tmp_path / "cache" / "decoded").exists() and decoded_cache.memory_info() == (0, 0)
    _load(_cfg(root))
    before = {p: p.stat().st_mtime_ns for p in _entries(tmp_path)}
    for entry in before:
        os.utime(entry, ns=(10**18, 10**18))
    _load(_cfg(root, cache=False))
    assert len(decodes) == 3 * N
    assert all(p.stat().st_mtime_ns == 10**18 for p in before)  # not even read


def test_config_cache_key(tmp_path: Path) -> None:
    tree = {"data": {"source": "folder", "root": str(tmp_path), "cache": False}}
    assert parse_config(tree).data.cache is False
    assert DataConfig(source="folder", root=tmp_path).cache is True
    with pytest.raises(ConfigError, match=r"unknown key 'cahce'.*Did you mean 'cache'"):
        parse_config({"data": {"source": "folder", "root": str(tmp_path), "cahce": False}})


def test_root_follows_the_activation_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medtl.transfer.prefix_cache import default_root

    assert decoded_cache.default_root() == default_root().parent / "decoded" == tmp_path / "cache" / "decoded"
    monkeypatch.delenv("MEDTL_CACHE")
    assert decoded_cache.default_root() == default_root().parent / "decoded"
    assert decoded_cache.default_root() == Path.home() / ".cache" / "medtl" / "decoded"


# ---------------------------------------------------------------- a real image


def test_real_brain_mri_images(brain_mri: Path, decodes: list[str]) -> None:
    cfg = DataConfig(source="folder", root=brain_mri, image_size=64, max_per_class=2, color="grayscale")
    reference = _load(_with_cache(cfg, False))
    first = _load(cfg)
    decoded_cache.clear_memory()
    before = len(decodes)
    second = _load(cfg)
    assert len(decodes) - before == len(reference.bad)  # only undecodable files are decoded again
    assert len(_entries(Path(os.environ["MEDTL_CACHE"]).parent)) == len(reference.hashes)
    _same(first, reference)
    _same(second, reference)


# ---------------------------------------------------------------- the CLI


def test_cli_info_and_clear(tmp_path: Path) -> None:
    from medtl.cli import app
    from medtl.transfer.prefix_cache import ActivationCache

    runner = CliRunner(env={"MEDTL_CACHE": str(tmp_path / "cache"), "COLUMNS": "300"})
    result = runner.invoke(app, ["cache", "clear", "--what", "decoded"])
    assert result.exit_code == 0 and "nothing to clear" in result.output
    _load(_cfg(_dataset(tmp_path / "data")))
    activations = ActivationCache(tmp_path / "cache" / "activations")
    activations.get_or_compute({"backbone": "b", "cut": "blocks.5"}, np.zeros((3, 4, 4, 1), np.uint8), np.arange(3),
                               lambda images, idx, view: [np.ones((len(idx), 8), np.float32)])
    result = runner.invoke(app, ["cache", "info", "--entries"])
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert "decoded-image cache" in text and f"entries: {N}" in text and "entries: 1" in text
    assert decoded_cache.policy_key(_cfg(tmp_path)) in text
    assert str(tmp_path / "cache" / "decoded") in result.output.replace("\n", "")

    result = runner.invoke(app, ["cache", "clear", "--what", "decoded"], input="n\n")
    assert result.exit_code == 1 and decoded_cache.info().entries == N
    result = runner.invoke(app, ["cache", "clear", "--what", "decoded", "--yes"])
    assert result.exit_code == 0 and f"removed {N} entries" in result.output
    assert decoded_cache.info().entries == 0 and activations.info().entries == 1
    assert not any((tmp_path / "cache" / "decoded").rglob("*.npy"))

    result = runner.invoke(app, ["cache", "clear", "--what", "everything"])
    assert result.exit_code == 2
    _load(_cfg(tmp_path / "data", image_size=20))
    result = runner.invoke(app, ["cache", "clear", "--yes"])  # default: both
    assert result.exit_code == 0, result.output
    assert "removed 1 entries" in result.output and f"removed {N} entries" in result.output
    assert decoded_cache.info().entries == 0 and activations.info().entries == 0
