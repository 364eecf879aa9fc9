"""Tests of medtl.data.sources on the real shared datasets and on small synthetic ones."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medtl.config import DataConfig, data_root
from medtl.data.sources import load_images, load_table
from medtl.errors import DataError

from .conftest import write_csv


def _shared(*parts: str) -> Path:
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset {path} not available (set MEDTL_DATA)")
    return path


def _write_image(path: Path, value: int = 0, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0]), value, dtype=np.uint8)
    arr[0, 0] = 255 - value  # not uniform
    Image.fromarray(arr, mode="L").save(path, format="PNG")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """tmp/imgs/a.png ... e.png, distinct pixels."""
    for i, name in enumerate("abcde"):
        _write_image(tmp_path / "imgs" / f"{name}.png", value=10 * i)
    return tmp_path


# ---------------------------------------------------------------- real data


def test_brain_mri_folder() -> None:
    root = _shared("brain_tumor_mri")
    table = load_table(DataConfig(source="folder", root=root))
    assert len(table.samples) == 253
    assert table.class_names == ["no", "yes"]
    assert table.positive_index == 1
    assert table.class_counts() == {"no": 98, "yes": 155}
    assert table.source == "folder" and not table.has_patients
    by_id = {s.id: s for s in table.samples}
    assert by_id["yes/Y1.jpg"].label == 1
    assert by_id["no/1 no.jpeg"].label == 0
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in table.samples)
    assert all(s.patient is None and s.split is None for s in table.samples)


def test_brain_mri_positive_class_and_limit() -> None:
    root = _shared("brain_tumor_mri")
    table = load_table(DataConfig(source="folder", root=root, positive_class="no", max_per_class=7))
    assert table.positive_index == 0
    assert table.class_counts() == {"no": 7, "yes": 7}
    again = load_table(DataConfig(source="folder", root=root, max_per_class=7))
    other_seed = load_table(DataConfig(source="folder", root=root, max_per_class=7, split={"seed": 1}))
    assert [s.id for s in again.samples] == [s.id for s in table.samples]
    assert [s.id for s in other_seed.samples] != [s.id for s in table.samples]
    with pytest.raises(DataError, match=r"positive_class 'tumour'.*\['no', 'yes'\]"):
        load_table(DataConfig(source="folder", root=root, positive_class="tumour"))


def test_brain_mri_pngs_named_jpg_decode() -> None:
    root = _shared("brain_tumor_mri")
    cfg = DataConfig(source="folder", root=root, image_size=16, color="rgb")
    table = load_table(cfg)
    pngs = [s for s in table.samples if s.id in {"no/No15.jpg", "no/no.jpg", "no/No18.jpg"}]
    loaded = load_images(replace(table, samples=pngs), cfg, progress=False)
    assert loaded.bad == []
    assert loaded.images.shape == (3, 16, 16, 3)


def test_chest_xray_manifest() -> None:
    manifest = _shared("chest_xray_pneumonia_224", "manifest.csv")
    cfg = DataConfig(
        source="csv",
        csv=manifest,
        label_column="label_name",
        patient_column="patient_key",
        split_column="split",
    )
    table = load_table(cfg)
    assert len(table.samples) == 5840
    assert table.class_names == ["NORMAL", "PNEUMONIA"]
    assert table.positive_index == 1
    assert table.has_patients
    assert table.class_counts() == {"NORMAL": 1575, "PNEUMONIA": 4265}
    splits = [s.split for s in table.samples]
    assert splits.count("train") == 5216 and splits.count("test") == 624
    first = table.samples[0]
    assert first.id == "train/NORMAL/IM-0115-0001.jpeg"
    assert first.patient == "train:IM-0115"
    assert Path(first.path) == manifest.parent / "train/NORMAL/IM-0115-0001.jpeg"


def test_breastmnist() -> None:
    npz = _shared("medmnist", "breastmnist.npz")
    cfg = DataConfig(source="medmnist", path=npz, image_size=16)
    table = load_table(cfg)
    splits = [s.split for s in table.samples]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (546, 78, 156)
    assert table.class_names == ["malignant", "normal_or_benign"]
    assert table.samples[115].id == "train[115]"
    assert table.samples[115].path == f"{npz.absolute()}::train[115]"
    loaded = load_images(table, cfg, progress=False)
    assert loaded.images.shape == (780, 16, 16, 1)
    ids = [s.id for s in loaded.table.samples]
    # the upstream duplicate across splits (README): train[115] == test[76]
    assert loaded.hashes[ids.index("train[115]")] == loaded.hashes[ids.index("test[76]")]
    assert len(set(loaded.hashes)) == 779


# ---------------------------------------------------------------- folder source


def test_folder_class_order_hidden_and_other_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_image(tmp_path / "b" / "x.PNG")
    _write_image(tmp_path / "a" / "sub" / "y.png")
    _write_image(tmp_path / "a" / ".hidden.png")
    _write_image(tmp_path / ".cache" / "z.png")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        table = load_table(DataConfig(source="folder", root=tmp_path, classes=["b", "a"]))
    assert table.class_names == ["b", "a"]
    assert [(s.id, s.label) for s in table.samples] == [("b/x.PNG", 0), ("a/sub/y.png", 1)]
    assert "notes.txt" in caplog.text


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MEDTL_DATA"):
        load_table(DataConfig(source="folder", root=tmp_path / "missing"))
    _write_image(tmp_path / "yes" / "1.png")
    (tmp_path / "no").mkdir()
    with pytest.raises(DataError, match="'no' has no image files"):
        load_table(DataConfig(source="folder", root=tmp_path))
    with pytest.raises(DataError, match=r"\['maybe'\].*no such subfolder"):
        load_table(DataConfig(source="folder", root=tmp_path, classes=["yes", "maybe"]))


def test_load_images_skips_corrupt_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        _write_image(tmp_path / "no" / f"{i}.png", value=i)
        _write_image(tmp_path / "yes" / f"{i}.png", value=100 + i)
    (tmp_path / "yes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = DataConfig(source="folder", root=tmp_path, image_size=8, max_bad_fraction=0.2)
    table = load_table(cfg)
    with caplog.at_level(logging.WARNING):
        loaded = load_images(table, cfg, progress=False)
    assert [sid for sid, _ in loaded.bad] == ["yes/broken.jpg"]
    assert "broken.jpg" in loaded.bad[0][1] and "broken.jpg" in caplog.text
    assert loaded.images.shape == (6, 8, 8, 1)
    assert len(loaded.hashes) == len(loaded.table.samples) == 6
    assert "yes/broken.jpg" not in {s.id for s in loaded.table.samples}
    cfg.max_bad_fraction = 0.1
    with pytest.raises(DataError, match=r"1 of 7 images.*data\.max_bad_fraction.*broken\.jpg"):
        load_images(table, cfg, progress=False)


# ---------------------------------------------------------------- csv source


def _csv_cfg(csv_path: Path, **kw: Any) -> DataConfig:
    return DataConfig(source="csv", csv=csv_path, **kw)


def test_csv_basic(image_dir: Path) -> None:
    rows = [
        ["imgs/a.png", "cat", "p1", "train"],
        ["imgs/b.png", "dog", "p1", "validation"],
        ["imgs/c.png", "cat", "", "TEST"],
    ]
    csv_path = write_csv(image_dir / "labels.csv", ["path", "label", "patient_id", "split"], rows)
    table = load_table(_csv_cfg(csv_path))
    assert table.class_names == ["cat", "dog"]
    assert [s.split for s in table.samples] == ["train", "val", "test"]
    assert [s.patient for s in table.samples] == ["p1", "p1", None]
    assert table.samples[0].id == "imgs/a.png"
    assert table.samples[0].path == str(image_dir / "imgs" / "a.png")
    assert table.has_patients


def test_csv_integer_labels_sort_numerically(image_dir: Path) -> None:
    rows = [["imgs/a.png", 10], ["imgs/b.png", 2], ["imgs/c.png", 2]]
    table = load_table(
        _csv_cfg(write_csv(image_dir / "l.csv", ["file", "y"], rows), path_column="file", label_column="y")
    )
    assert table.class_names == ["2", "10"]
    assert [s.label for s in table.samples] == [1, 0, 0]
    assert not table.has_patients and all(s.split is None for s in table.samples)


def test_csv_missing_column(image_dir: Path) -> None:
    csv_path = write_csv(image_dir / "l.csv", ["path", "diagnosis"], [["imgs/a.png", "x"]])
    with pytest.raises(
        DataError, match=r"column 'label' \(data.label_column\) not found.*\['path', 'diagnosis'\]"
    ):
        load_table(_csv_cfg(csv_path))


def test_csv_missing_files_reported_with_line(image_dir: Path) -> None:
    rows = [["imgs/a.png", "x"], ["imgs/gone.png", "y"], ["imgs/b.png", "y"], ["imgs/also_gone.png", "x"]]
    csv_path = write_csv(image_dir / "l.csv", ["path", "label"], rows)
    with pytest.raises(
        DataError, match=r"2 rows name files that do not exist \(line 3: .*gone\.png; line 5: "
    ):
        load_table(_csv_cfg(csv_path))


def test_csv_unknown_label_with_classes(image_dir: Path) -> None:
    rows = [["imgs/a.png", "benign"], ["imgs/b.png", "malignant"], ["imgs/c.png", "unsure"]]
    csv_path = write_csv(image_dir / "l.csv", ["path", "label"], rows)
    with pytest.raises(DataError, match=r"line 4: label 'unsure'"):
        load_table(_csv_cfg(csv_path, classes=["benign", "malignant"]))
    table = load_table(_csv_cfg(csv_path, classes=["unsure", "malignant", "benign"]))
    assert [s.label for s in table.samples] == [2, 1, 0]


def test_csv_bad_split_value(image_dir: Path) -> None:
    rows = [["imgs/a.png", "x", "train"], ["imgs/b.png", "y", "holdout"]]
    csv_path = write_csv(image_dir / "l.csv", ["path", "label", "split"], rows)
    with pytest.raises(DataError, match=r"line 3: split 'holdout'"):
        load_table(_csv_cfg(csv_path))


def test_csv_optional_columns(image_dir: Path) -> None:
    csv_path = write_csv(image_dir / "l.csv", ["path", "label"], [["imgs/a.png", "x"], ["imgs/b.png", "y"]])
    assert not load_table(_csv_cfg(csv_path)).has_patients  # default names absent: fine
    with pytest.raises(DataError, match=r"column 'subject' \(data.patient_column\) not found"):
        load_table(_csv_cfg(csv_path, patient_column="subject"))
    with pytest.raises(DataError, match=r"column 'fold' \(data.split_column\) not found"):
        load_table(_csv_cfg(csv_path, split_column="fold"))


def test_csv_single_class_rejected(image_dir: Path) -> None:
    csv_path = write_csv(image_dir / "l.csv", ["path", "label"], [["imgs/a.png", "x"], ["imgs/b.png", "x"]])
    with pytest.raises(DataError, match="fewer than two classes"):
        load_table(_csv_cfg(csv_path))


# ---------------------------------------------------------------- medmnist source (synthetic)


def _write_npz(path: Path, rgb: bool = False, drop: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8).reshape(n, 1)
    arrays.pop(drop or "", None)
    np.savez_compressed(path, **arrays)
    return path


def test_medmnist_rgb_and_generic_class_names(tmp_path: Path) -> None:
    cfg = DataConfig(
        source="medmnist", path=_write_npz(tmp_path / "somemnist.npz", rgb=True), image_size=8, color="rgb"
    )
    table = load_table(cfg)
    assert table.class_names == ["0", "1", "2"]
    assert table.positive_index is None
    assert [s.id for s in table.samples[:2]] == ["train[0]", "train[1]"]
    loaded = load_images(table, cfg, progress=False)
    assert loaded.images.shape == (11, 8, 8, 3)
    assert len(set(loaded.hashes)) == 11


def test_medmnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"keys \['val_labels'\] missing"):
        load_table(DataConfig(source="medmnist", path=_write_npz(tmp_path / "x.npz", drop="val_labels")))
    with pytest.raises(DataError, match="ensure_medmnist"):
        load_table(DataConfig(source="medmnist", path=tmp_path / "breastmnist.npz"))
    with pytest.raises(DataError, match="label 2 occurs but only 2 class names"):
        load_table(DataConfig(source="medmnist", path=_write_npz(tmp_path / "y.npz"), classes=["a", "b"]))
