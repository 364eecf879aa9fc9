"""data.storage: memory vs disk (a read-only memmap filled chunk by chunk), pages released after reads."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.config import parse_config
from medtl.data import storage
from medtl.data.sources import load_images, load_table
from medtl.data.splits import near_duplicate_links
from medtl.data.storage import DiskStore, choose_storage, take, take_one
from medtl.data.transforms import ImageArrayDataset


def _rss_file_bytes() -> int:
    """Resident file-backed bytes of this process (``RssFile`` in /proc/self/status)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"RssFile:\s+(\d+) kB", text).group(1)) * 1024


def _folder_config(root: Path, **data) -> object:
    tree = {"name": "t", "data": {"source": "folder", "root": str(root), "image_size": 32, "cache": False, **data}}
    return parse_config(tree).data


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("no", "yes"):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(150):
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "d" / label / f"{i}.png")
    return tmp_path / "d"


def test_auto_chooses_by_decoded_bytes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert choose_storage("memory", 10**9, (224, 224, 3)) == "memory"
    assert choose_storage("disk", 1, (8, 8, 1)) == "disk"
    with caplog.at_level(logging.INFO, "medtl.data.storage"):
        assert choose_storage("auto", 1000, (224, 224, 1)) == "memory"  # 48 MiB < 2 GiB
        assert choose_storage("auto", 50_000, (224, 224, 3)) == "disk"  # 7 GiB
    assert "data.storage auto" in caplog.text and "-> disk" in caplog.text
    monkeypatch.setenv(storage.THRESHOLD_ENV, "0.001")  # ~1 MiB
    assert choose_storage("auto", 1000, (64, 64, 1)) == "disk"


def test_disk_store_is_a_read_only_memmap_and_leaves_no_file(tmp_path: Path) -> None:
    store = DiskStore(3, (4, 4, 1), tmp_path)
    rows = [np.full((4, 4, 1), v, np.uint8) for v in (1, 2, 3)]
    store.append(rows[:2])
    store.append(rows[2:])
    images = store.finish()
    assert isinstance(images, np.memmap) and images.shape == (3, 4, 4, 1)
    assert not images.flags.writeable
    assert [int(images[i, 0, 0, 0]) for i in range(3)] == [1, 2, 3]
    assert list(tmp_path.iterdir()) == []  # unlinked at once: a killed run leaves nothing behind
    with pytest.raises(ValueError, match="expected"):
        DiskStore(1, (4, 4, 1), tmp_path).append([np.zeros((5, 4, 1), np.uint8)])


def test_disk_and_memory_load_the_same_images(tiny_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.STORE_DIR_ENV, str(tmp_path / "stores"))
    monkeypatch.setattr(storage, "CHUNK_BYTES", 1)  # chunks of MIN_CHUNK = 64 images: 300 images in 5 chunks
    mem_cfg = _folder_config(tiny_folder, storage="memory")
    disk_cfg = _folder_config(tiny_folder, storage="disk")
    mem = load_images(load_table(mem_cfg), mem_cfg, progress=False)
    disk = load_images(load_table(disk_cfg), disk_cfg, progress=False)
    assert not isinstance(mem.images, np.memmap) and isinstance(disk.images, np.memmap)
    np.testing.assert_array_equal(mem.images, disk.images)
    assert mem.hashes == disk.hashes and mem.table.samples == disk.table.samples
    assert list((tmp_path / "stores").iterdir()) == []
    ds_mem = ImageArrayDataset(mem.images, mem.table.labels, np.arange(5, 20))
    ds_disk = ImageArrayDataset(disk.images, disk.table.labels, np.arange(5, 20))
    for i in range(len(ds_mem)):
        assert ds_mem[i][0].equal(ds_disk[i][0]) and ds_mem[i][1] == ds_disk[i][1]
    assert near_duplicate_links(mem.images, 4) == near_duplicate_links(disk.images, 4)


def test_a_failing_file_is_skipped_in_disk_storage_too(tiny_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.STORE_DIR_ENV, str(tmp_path / "stores"))
    (tiny_folder / "yes" / "broken.png").write_bytes(b"not a png")
    cfg = _folder_config(tiny_folder, storage="disk")
    loaded = load_images(load_table(cfg), cfg, progress=False)
    assert len(loaded.images) == 300 == len(loaded.hashes) == len(loaded.table.samples)
    assert [sid for sid, _ in loaded.bad] == ["yes/broken.png"]


def test_take_copies_rows_and_releases_the_pages_it_read(tmp_path: Path) -> None:
    n, shape = 512, (128, 128, 3)  # 24 MiB
    store = DiskStore(n, shape, tmp_path)
    store.append(np.full(shape, i % 251, np.uint8) for i in range(n))
    images = store.finish()
    before = _rss_file_bytes()
    for start in range(0, n, 32):
        batch = take(images, np.arange(start, start + 32)[::-1])
        assert not isinstance(batch, np.memmap) and int(batch[-1, 0, 0, 0]) == start % 251
    released = _rss_file_bytes() - before
    assert int(take_one(images, 300)[0, 0, 0]) == 300 % 251
    touched = np.asarray(images[:]).sum(dtype=np.int64)  # plain reads keep the pages resident
    kept = _rss_file_bytes() - before
    assert touched > 0
    assert released < 4 * 2**20 < 16 * 2**20 < kept, (released, kept)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fine_tune", "feature_extraction"])
def test_a_real_run_predicts_bit_identically_from_disk(brain_mri: Path, tmp_path: Path, strategy: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        one_torch_thread: None) -> None:
    from medtl.experiment import run_experiment

    monkeypatch.setenv(storage.STORE_DIR_ENV, str(tmp_path / "stores"))
    outputs = {}
    for where in ("memory", "disk"):
        tree = {"name": "s", "data": {"source": "folder", "root": str(brain_mri), "positive_class": "yes",
                                      "image_size": 32, "max_per_class": 12, "storage": where,
                                      "augment": {"hflip": True}, "split": {"method": "kfold", "folds": 2, "seed": 0}},
                "transfer": {"strategy": strategy}, "train": {"epochs": 2, "batch_size": 8, "progress": False},
                "evaluate": {"bootstrap": 20, "report": False}}
        metrics = run_experiment(parse_config(tree), tmp_path / where, progress=False)
        outputs[where] = ((tmp_path / where / "predictions.csv").read_text(), metrics["auc"]["value"])
    assert outputs["memory"] == outputs["disk"]
