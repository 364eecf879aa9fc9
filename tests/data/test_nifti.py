"""Tests of medtl.data.sources.nifti: real NIfTI files that ship with nibabel, and small volumes made here."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from nibabel.testing import data_path
from typer.testing import CliRunner

from medtl.cli import app
from medtl.config import DataConfig, SplitConfig, parse_config
from medtl.data.audit import audit
from medtl.data.sources import load_images, load_table
from medtl.data.sources.nifti import NiftiSource
from medtl.data.splits import assign_groups, make_folds, near_duplicate_links, read_manifest
from medtl.errors import ConfigError, DataError

from .conftest import write_csv

NIBABEL_FILES: dict[str, tuple[str, int]] = {
    "anatomical.nii": ("a", 25),  # 3-D int16 (big endian), 33x41x25
    "standard.nii.gz": ("a", 7),  # 3-D uint8, 4x5x7
    "example4d.nii.gz": ("b", 24),  # 4-D, 128x96x24x2
    "example_nifti2.nii.gz": ("b", 12),  # NIfTI-2, 4-D, 32x20x12x2
}
"""Real files of nibabel's test data: class and number of slices along axis 2."""


def nibabel_file(name: str) -> Path:
    return Path(data_path) / name


def make_volume(path: Path, shape: tuple[int, ...] = (12, 10, 8), seed: int = 0, **header: float) -> np.ndarray:
    """A random int16 volume saved with nibabel (``slope``/``inter`` set the scaling); returns the stored array."""
    arr = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)
    img = nib.Nifti1Image(arr, np.diag([1.5, 1.0, 2.0, 1.0]))
    img.header.set_data_dtype(np.int16)
    if header:
        img.header.set_slope_inter(header.get("slope", 1.0), header.get("inter", 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return arr


def nifti_cfg(root: Path | None = None, **over: object) -> DataConfig:
    base: dict[str, object] = {"source": "nifti", "image_size": 16, "max_bad_fraction": 0.5}
    if root is not None:
        base["root"] = root
    return DataConfig.model_validate(base | over)


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    for name, (label, _) in NIBABEL_FILES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(nibabel_file(name), root / label / name)
    return root


def synthetic_dir(root: Path, per_class: int = 3, shape: tuple[int, ...] = (12, 10, 8)) -> Path:
    for c, label in enumerate(("healthy", "tumor")):
        for i in range(per_class):
            make_volume(root / label / f"vol{i}.nii.gz", shape, seed=10 * c + i)
    return root


# ---------------------------------------------------------------- real files


def test_real_nibabel_files_become_slices_with_meta(real_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = load_table(nifti_cfg(real_dir))
    assert table.class_names == ["a", "b"] and not table.bad
    counts = {name: sum(s.meta["file"].endswith(name) for s in table.samples) for name in NIBABEL_FILES}
    assert counts == {name: n for name, (_, n) in NIBABEL_FILES.items()}
    first = table.samples[0]
    assert first.id == "a/anatomical.nii#z=0" and first.patient == "a/anatomical.nii"
    assert first.meta["shape"] == [33, 41, 25] and first.meta["voxel_sizes"] == [2.0, 2.0, 2.0]
    assert first.meta["axis"] == 2 and first.meta["n_slices"] == 25
    assert "4-D file of shape (128, 96, 24, 2)" in caplog.text
    assert "used as its own patient" in caplog.text
    loaded = load_images(table, nifti_cfg(real_dir), progress=False)
    assert loaded.images.shape == (68, 16, 16, 1) and not loaded.bad


def test_decoded_slice_is_the_percentile_scaled_voxels(real_dir: Path) -> None:
    cfg = nifti_cfg(real_dir, nifti={"axis": 1})
    sample = next(s for s in load_table(cfg).samples if s.id == "a/anatomical.nii#z=20")
    image, digest = NiftiSource().decode(sample, cfg)
    values = nib.load(nibabel_file("anatomical.nii")).get_fdata()
    low, high = np.percentile(values, [0.5, 99.5])
    expected = np.rint(np.clip((values[:, 20, :] - low) * 255.0 / (high - low), 0, 255)).astype(np.uint8)
    assert np.abs(np.asarray(image).astype(int) - np.rot90(expected)).max() <= 1  # float32 vs float64 rounding
    assert image.size == (33, 25)  # rot90: width = first axis, height = last axis
    assert len(digest) == 64


def test_scl_slope_and_inter_are_applied_before_the_window(tmp_path: Path) -> None:
    stored = make_volume(tmp_path / "a" / "v.nii", slope=2.0, inter=-500.0)
    make_volume(tmp_path / "b" / "w.nii", seed=1)
    cfg = nifti_cfg(tmp_path, nifti={"slices": "middle", "intensity": {"method": "window", "center": 0, "width": 1000}})
    table = load_table(cfg)
    image, _ = NiftiSource().decode(table.samples[0], cfg)
    hu = stored[:, :, 4].astype(np.float64) * 2.0 - 500.0
    expected = np.rint(np.clip((hu + 500.0) * 255.0 / 1000.0, 0, 255)).astype(np.uint8)
    assert np.array_equal(np.asarray(image), np.rot90(expected))


def test_axis_and_slice_selection(tmp_path: Path) -> None:
    synthetic_dir(tmp_path, per_class=1, shape=(6, 8, 10))

    def slices(**nifti: object) -> list[int]:
        table = load_table(nifti_cfg(tmp_path, nifti=nifti))
        return [s.meta["slice"] for s in table.samples if s.meta["file"] == "healthy/vol0.nii.gz"]

    assert slices() == list(range(10))
    assert slices(axis=0) == list(range(6))
    assert slices(slices="middle") == [5]
    assert slices(axis=1, slices="every_k", k=3) == [0, 3, 6]
    cfg = nifti_cfg(tmp_path, nifti={"axis": 0}, image_size=16)
    image, _ = NiftiSource().decode(load_table(cfg).samples[0], cfg)
    assert image.size == (8, 10)


def test_mask_selects_slices_and_bad_masks_are_reported(tmp_path: Path) -> None:
    synthetic_dir(tmp_path, per_class=2)
    mask = np.zeros((12, 10, 8), dtype=np.uint8)
    mask[3:5, 2:4, 2:4] = 1
    for label in ("healthy", "tumor"):
        nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / label / "vol0_mask.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((12, 10, 7), np.uint8), np.eye(4)), tmp_path / "tumor" / "vol1_mask.nii.gz")
    table = load_table(nifti_cfg(tmp_path, nifti={"slices": "mask", "mask_suffix": "_mask"}))
    assert {s.id for s in table.samples} == {f"{c}/vol0.nii.gz#z={z}" for c in ("healthy", "tumor") for z in (2, 3)}
    reasons = dict(table.bad)
    assert "does not exist" in reasons["healthy/vol1.nii.gz"]
    assert "has shape (12, 10, 7), the volume (12, 10, 8)" in reasons["tumor/vol1.nii.gz"]
    with pytest.raises(DataError, match="mask_suffix"):
        load_table(nifti_cfg(tmp_path, nifti={"slices": "mask"}))


def test_csv_with_patients_splits_and_mask_column(tmp_path: Path) -> None:
    synthetic_dir(tmp_path / "vols", per_class=2)
    mask = np.zeros((12, 10, 8), dtype=np.uint8)
    mask[..., 6] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "m.nii.gz")
    rows = [["vols/healthy/vol0.nii.gz", "healthy", "P1", "train", "m.nii.gz"],
            ["vols/healthy/vol1.nii.gz", "healthy", "P1", "train", "m.nii.gz"],
            ["vols/tumor/vol0.nii.gz", "tumor", "P2", "test", "m.nii.gz"],
            ["vols/tumor/vol1.nii.gz", "tumor", "", "test", "m.nii.gz"]]
    csv = write_csv(tmp_path / "labels.csv", ["path", "label", "patient_id", "split", "mask"], rows)
    table = load_table(nifti_cfg(csv=csv, nifti={"slices": "mask"}))
    assert [s.id for s in table.samples] == [r[0] + "#z=6" for r in rows]
    assert [s.patient for s in table.samples] == ["P1", "P1", "P2", "vols/tumor/vol1.nii.gz"]
    assert [s.split for s in table.samples] == ["train", "train", "test", "test"]
    write_csv(csv, ["path", "label"], [["vols/healthy/vol0.nii.gz", "healthy"], ["nope.nii", "tumor"]])
    with pytest.raises(DataError, match="do not exist"):  # the csv source's own rules
        load_table(nifti_cfg(csv=csv))


# ---------------------------------------------------------------- bad input


def test_bad_files_are_reported_and_the_good_volumes_used(tmp_path: Path) -> None:
    synthetic_dir(tmp_path, per_class=2)
    good = (tmp_path / "healthy" / "vol0.nii.gz").read_bytes()
    (tmp_path / "healthy" / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    make_volume(tmp_path / "tumor" / "whole.nii")
    whole = (tmp_path / "tumor" / "whole.nii").read_bytes()
    (tmp_path / "tumor" / "cut.nii").write_bytes(whole[: len(whole) - 100])
    (tmp_path / "tumor" / "text.nii").write_text("not a volume")
    nib.save(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), tmp_path / "tumor" / "flat.nii")
    (tmp_path / "tumor" / "notes.txt").write_text("ignored, with a warning")
    cfg = nifti_cfg(tmp_path)
    table = load_table(cfg)
    reasons = dict(table.bad)
    assert sorted(reasons) == ["healthy/cut.nii.gz", "tumor/cut.nii", "tumor/flat.nii", "tumor/text.nii"]
    assert "truncated" in reasons["healthy/cut.nii.gz"] and "truncated" in reasons["tumor/cut.nii"]
    assert "2-D image" in reasons["tumor/flat.nii"] and "not a readable NIfTI" in reasons["tumor/text.nii"]
    assert all(str(tmp_path) in reason for reason in reasons.values())  # every reason names the file
    assert {s.meta["file"] for s in table.samples} == {f"{c}/vol{i}.nii.gz" for c in ("healthy", "tumor")
                                                        for i in (0, 1)} | {"tumor/whole.nii"}
    loaded = load_images(table, cfg, progress=False)
    assert len(loaded.images) == 5 * 8 and len(loaded.bad) == 4


def test_4d_volume_index_out_of_range_is_reported(tmp_path: Path) -> None:
    synthetic_dir(tmp_path, per_class=1)
    shutil.copy(nibabel_file("example4d.nii.gz"), tmp_path / "tumor" / "fmri.nii.gz")
    table = load_table(nifti_cfg(tmp_path, nifti={"volume_index": 2}))
    assert "4-D file with 2 volumes" in dict(table.bad)["tumor/fmri.nii.gz"]
    second = load_table(nifti_cfg(tmp_path, nifti={"volume_index": 1, "slices": "middle"}))
    sample = next(s for s in second.samples if "fmri" in s.id)
    image, _ = NiftiSource().decode(sample, nifti_cfg(tmp_path, nifti={"volume_index": 1}))
    assert np.asarray(image).shape == (96, 128)


def test_no_volumes_and_config_errors(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.png").write_bytes(b"png")
    with pytest.raises(DataError, match=f"{tmp_path}: no .nii or .nii.gz volumes"):
        load_table(nifti_cfg(tmp_path))
    (tmp_path / "a" / "x.nii").write_text("junk")
    make_volume(tmp_path / "b" / "y.nii")
    with pytest.raises(DataError, match="samples of fewer than two classes"):
        load_table(nifti_cfg(tmp_path))
    for bad, phrase in ((dict(axis=3), "axis"), (dict(slices="every_k"), "data.nifti.k"),
                        (dict(intensity={"method": "window"}), "center and width"),
                        (dict(intensity={"method": "percentil"}), "percentile")):
        with pytest.raises(ConfigError, match=phrase):
            parse_config({"data": {"source": "nifti", "root": str(tmp_path), "nifti": bad}})
    with pytest.raises(ConfigError, match="data.root .* or data.csv"):
        parse_config({"data": {"source": "nifti"}})


# ---------------------------------------------------------------- groups and strategies


def test_slices_of_one_volume_never_land_in_two_splits(tmp_path: Path) -> None:
    synthetic_dir(tmp_path, per_class=4)
    cfg = nifti_cfg(tmp_path)
    loaded = load_images(load_table(cfg), cfg, progress=False)
    samples = loaded.table.samples
    groups = assign_groups(samples, loaded.hashes, near_duplicate_links(loaded.images, 2))
    assert len(set(groups)) == 8  # one group per volume
    folds = make_folds(loaded.table.labels, groups, [None] * len(samples), SplitConfig(folds=4))
    for fold in folds:
        roles = {}
        for role in ("train", "val", "test"):
            for i in fold.role(role):
                roles.setdefault(samples[i].meta["volume"], set()).add(role)
        assert all(len(r) == 1 for r in roles.values()) and len(roles) == 8


def test_blank_edge_slices_do_not_join_volumes(tmp_path: Path) -> None:
    for c, label in enumerate(("a", "b")):
        (tmp_path / label).mkdir()
        for i in range(2):
            arr = np.zeros((8, 8, 6), np.float32)  # slices 0 and 5 are blank in every volume
            arr[..., 1:5] = np.random.default_rng(10 * c + i).random((8, 8, 4))
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / label / f"v{i}.nii")
    cfg = nifti_cfg(tmp_path)
    loaded = load_images(load_table(cfg), cfg, progress=False)
    assert len(set(loaded.hashes)) == len(loaded.hashes) == 24
    assert len(set(assign_groups(loaded.table.samples, loaded.hashes))) == 4


def test_strategy_one_slice_per_volume_and_per_patient(tmp_path: Path) -> None:
    synthetic_dir(tmp_path / "vols", per_class=2)
    rows = [[f"vols/{c}/vol{i}.nii.gz", c, f"{c}-P"] for c in ("healthy", "tumor") for i in range(2)]
    csv = write_csv(tmp_path / "labels.csv", ["path", "label", "patient_id"], rows)
    per_volume = load_table(nifti_cfg(csv=csv, strategy={"slices": "one_per_volume"}))
    assert sorted(s.id for s in per_volume.samples) == sorted(r[0] + "#z=4" for r in rows)
    per_patient = load_table(nifti_cfg(csv=csv, strategy={"slices": "one_per_patient"}))
    assert [s.id for s in per_patient.samples] == ["vols/healthy/vol0.nii.gz#z=4", "vols/tumor/vol0.nii.gz#z=4"]


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_audit_and_report_on_a_nifti_folder(tmp_path: Path, one_torch_thread: None) -> None:
    root = synthetic_dir(tmp_path / "vols", per_class=3, shape=(16, 16, 6))
    shutil.copy(nibabel_file("anatomical.nii"), root / "healthy" / "anatomical.nii")
    config = {"name": "nifti-e2e",
              "data": {"source": "nifti", "root": str(root), "image_size": 32, "positive_class": "tumor",
                       "nifti": {"slices": "every_k", "k": 2, "intensity": {"method": "minmax"}},
                       "split": {"method": "kfold", "folds": 2, "val_fraction": 0.0}},
              "transfer": {"strategy": "feature_extraction"},
              "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "progress": False},
              "evaluate": {"bootstrap": 20, "tta": "none"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [r for r in read_manifest(tmp_path / "run" / "splits.csv") if r["role"] != "unassigned"]
    assert {r["meta"]["file"] for r in rows} >= {"healthy/anatomical.nii", "tumor/vol2.nii.gz"}
    for fold in {r["fold"] for r in rows}:
        roles: dict[str, set[str]] = {}
        for r in rows:
            if r["fold"] == fold:
                roles.setdefault(r["meta"]["volume"], set()).add(r["role"])
        assert all(len(v) == 1 for v in roles.values())
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "method: minmax" in resolved and "axis: 2" in resolved  # the intensity policy is recorded
    result = runner.invoke(app, ["audit", str(tmp_path / "run"), "--json", str(tmp_path / "audit.json"), "--quiet"])
    assert result.exit_code == 0, result.output  # 1 would mean leakage
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["patients"]["has_patients"] and not report["patients"]["crossing"] and not report["leakage"]
    result = runner.invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    assert "nifti" in (tmp_path / "report.html").read_text()


def test_audit_decodes_every_nifti_slice(tmp_path: Path) -> None:
    synthetic_dir(tmp_path / "vols", per_class=2, shape=(8, 8, 3))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": {"source": "nifti", "root": "vols",
                                                              "split": {"method": "kfold", "folds": 2}}}))
    report = audit(tmp_path / "data.yaml", progress=False)
    assert report.n_samples == 12 and report.sections["unreadable"] == []


def test_gzip_trailer_mismatch_falls_back_to_reading_the_stream(tmp_path: Path) -> None:
    make_volume(tmp_path / "v.nii")
    raw = (tmp_path / "v.nii").read_bytes()
    with gzip.open(tmp_path / "two_members.nii.gz", "wb") as handle:  # a valid file whose trailer counts one member
        handle.write(raw[:1000])
    with gzip.open(tmp_path / "rest.gz", "wb") as handle:
        handle.write(raw[1000:])
    (tmp_path / "two_members.nii.gz").write_bytes((tmp_path / "two_members.nii.gz").read_bytes()
                                                  + (tmp_path / "rest.gz").read_bytes())
    from medtl.data.sources.nifti import check_complete, open_volume

    path = tmp_path / "two_members.nii.gz"
    check_complete(path, open_volume(path))  # complete: no error
