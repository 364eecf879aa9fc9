"""Tests of medtl.data.dicom: real pydicom files through ``source: dicom``, intensity policy, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_windowing
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000

from medtl.config import DataConfig, DicomConfig, parse_config
from medtl.data.dicom import WINDOW_PRESETS, iter_frames, render_frame, view_of
from medtl.data.sources import load_images, load_table
from medtl.data.splits import read_manifest
from medtl.errors import ConfigError, DataError
from medtl.experiment import run_experiment

from .conftest import PYDICOM_FILES, pydicom_file, write_csv


def dicom_cfg(folder: Path, **over: object) -> DataConfig:
    base = {"source": "dicom", "root": folder, "csv": folder.parent / "labels.csv", "image_size": 32,
            "color": "grayscale", "dicom": {"label_key": "path"}, "max_bad_fraction": 0.5}
    return DataConfig.model_validate(base | over)


# ---------------------------------------------------------------- loading real files


def test_pydicom_test_files_load_with_frames_and_metadata(dicom_dir: Path) -> None:
    cfg = dicom_cfg(dicom_dir)
    table = load_table(cfg)
    assert table.bad == []
    ids = {s.id for s in table.samples}
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "693_J2KI.dcm"} <= ids
    emri = [s for s in table.samples if s.meta["file"] == "emri_small.dcm"]
    assert [s.id for s in emri] == [f"emri_small.dcm::frame[{i}]" for i in range(10)]
    assert emri[3].path.endswith("emri_small.dcm::frame[3]") and emri[3].meta["slice"] == 3
    assert emri[0].meta["n_slices"] == 10 and emri[0].meta["modality"] == "MR"
    ct = next(s for s in table.samples if s.id == "CT_small.dcm")
    assert ct.patient == "1CT1" and ct.meta["study"].startswith("1.3.6.1.4.1.5962")
    loaded = load_images(table, cfg, progress=False)
    assert loaded.bad == []
    assert loaded.images.shape == (len(table.samples), 32, 32, 1)
    assert loaded.images.std() > 10  # real content, not blank frames


def test_compressed_variants_decode_to_the_same_pixels(dicom_dir: Path) -> None:
    cfg = dicom_cfg(dicom_dir)
    loaded = load_images(load_table(cfg), cfg, progress=False)
    by_id = dict(zip([s.id for s in loaded.table.samples], loaded.hashes, strict=True))
    # MR_small stored uncompressed, RLE and JPEG-LS lossless: identical decoded pixels
    assert by_id["MR_small.dcm"] == by_id["MR_small_RLE.dcm"] == by_id["MR_small_jpeg_ls_lossless.dcm"]


def test_missing_patient_id_groups_by_study_with_a_warning(dicom_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = load_table(dicom_cfg(dicom_dir))
    emri = next(s for s in table.samples if s.meta["file"] == "emri_small.dcm")
    assert emri.patient == f"study:{emri.meta['study']}"
    assert "empty PatientID" in caplog.text


def test_end_to_end_training_on_pydicom_files(dicom_dir: Path, tmp_path: Path) -> None:
    cfg = parse_config({
        "name": "dicom-e2e",
        "data": {"source": "dicom", "root": str(dicom_dir), "csv": str(dicom_dir.parent / "labels.csv"),
                 "image_size": 32, "dicom": {"label_key": "path", "window": "file"},
                 "split": {"method": "kfold", "folds": 2, "val_fraction": 0.0, "near_duplicates": None}},
        "train": {"epochs": 1, "batch_size": 8, "progress": False, "warmup_epochs": 0},
        "evaluate": {"bootstrap": 20, "tta": "none", "patient_level": {"method": "max"}},
    })
    metrics = run_experiment(cfg, tmp_path / "run", progress=False)
    assert metrics["n"] == sum(10 if n == "emri_small.dcm" else 2 if "2frame" in n else 1 for n in PYDICOM_FILES)
    assert metrics["patient_level"]["aggregation"]["n_patients"] == metrics["protocol"]["n_groups"]
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "window: file" in resolved and "channels: replicate" in resolved  # the intensity policy is recorded
    rows = read_manifest(tmp_path / "run" / "splits.csv")
    assert {r["meta"]["file"] for r in rows if r["meta"]} >= {"CT_small.dcm", "emri_small.dcm"}


# ---------------------------------------------------------------- intensity policy


def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_file("CT_small.dcm"))


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_presets_match_pydicom_windowing(preset: str) -> None:
    ds = _ct()
    center, width = WINDOW_PRESETS[preset]
    image, policy = render_frame(ds.pixel_array, ds, 0, DicomConfig(window=preset))
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert np.isclose(hu.min(), ds.pixel_array.min() - 1024)  # RescaleIntercept -1024
    ds.WindowCenter, ds.WindowWidth, ds.BitsStored, ds.PixelRepresentation = center, width, 8, 0
    del ds.RescaleSlope, ds.RescaleIntercept
    expected = np.rint(apply_windowing(hu, ds)).astype(np.uint8)
    assert policy == preset
    assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1


def test_custom_window_and_file_window() -> None:
    mr = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    _, policy = render_frame(mr.pixel_array, mr, 0, DicomConfig())
    assert policy == "file window 600/1600"
    image, policy = render_frame(mr.pixel_array, mr, 0, DicomConfig(window="custom", center=0, width=2))
    assert policy == "custom 0/2"
    assert set(np.unique(np.asarray(image))) <= {0, 255}  # a 2-wide window is a threshold


def test_monochrome1_is_inverted() -> None:
    ds = _ct()
    normal, _ = render_frame(ds.pixel_array, ds, 0, DicomConfig(window="brain"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted, policy = render_frame(ds.pixel_array, ds, 0, DicomConfig(window="brain"))
    assert "inverted" in policy
    assert np.array_equal(np.asarray(inverted), 255 - np.asarray(normal))


def test_three_windows_stack_as_rgb(dicom_dir: Path) -> None:
    ds = _ct()
    image, policy = render_frame(ds.pixel_array, ds, 0, DicomConfig(channels="windows"))
    arr = np.asarray(image)
    assert image.mode == "RGB" and policy == "windows brain/subdural/bone"
    assert not np.array_equal(arr[..., 0], arr[..., 2])  # brain and bone windows differ
    with pytest.raises(ConfigError, match="data.color: rgb"):
        parse_config({"data": {"source": "dicom", "root": "x", "color": "grayscale", "dicom": {"channels": "windows"}}})
    cfg = dicom_cfg(dicom_dir, color="rgb", dicom={"label_key": "path", "channels": "windows"})
    loaded = load_images(load_table(cfg), cfg, progress=False)
    assert loaded.images.shape[-1] == 3


def test_view_from_laterality_and_position() -> None:
    ds = pydicom.Dataset()
    ds.ImageLaterality, ds.ViewPosition = "R", "MLO"
    assert view_of(ds) == "RMLO"


def test_dicom_config_errors_suggest_fixes() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'subdural'"):
        parse_config({"data": {"source": "dicom", "root": "x", "dicom": {"window": "subdual"}}})
    with pytest.raises(ConfigError, match="needs data.dicom.center"):
        parse_config({"data": {"source": "dicom", "root": "x", "dicom": {"window": "custom"}}})


def test_unknown_patient_tag_is_named(dicom_dir: Path) -> None:
    with pytest.raises(DataError, match="Did you mean 'PatientID'"):
        load_table(dicom_cfg(dicom_dir, dicom={"label_key": "path", "patient_tag": "PatientId"}))


# ---------------------------------------------------------------- bad input


def _bad_reasons(cfg: DataConfig) -> tuple[dict[str, str], int]:
    loaded = load_images(load_table(cfg), cfg, progress=False)
    return {sid.split("::")[0]: reason for sid, reason in loaded.bad}, len(loaded.table.samples)


def test_bad_files_are_listed_and_the_rest_is_used(dicom_dir: Path) -> None:
    (dicom_dir / "notes.txt").write_text("not an image")
    data = pydicom_file("CT_small.dcm").read_bytes()
    (dicom_dir / "truncated.dcm").write_bytes(data[: len(data) - 5000])
    (dicom_dir / "header_only.dcm").write_bytes(data[:400])
    no_pixels = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = "1.2.3.4"
    no_pixels.save_as(dicom_dir / "no_pixels.dcm")
    labels = dicom_dir.parent / "labels.csv"
    extra = [[n, "a"] for n in ("truncated.dcm", "header_only.dcm", "no_pixels.dcm")]
    write_csv(labels, ["path", "label"], [[n, y] for n, y in PYDICOM_FILES.items()] + extra)
    reasons, n_good = _bad_reasons(dicom_cfg(dicom_dir))
    assert set(reasons) == {"notes.txt", "truncated.dcm", "header_only.dcm", "no_pixels.dcm"}
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "no PixelData" in reasons["no_pixels.dcm"]
    assert "truncated" in reasons["truncated.dcm"]
    assert "header" in reasons["header_only.dcm"] or "truncated" in reasons["header_only.dcm"]
    assert n_good == 18  # every real image (18 frames) still loaded


def test_real_truncated_pydicom_file_is_reported(dicom_dir: Path) -> None:
    (dicom_dir / "MR_truncated.dcm").write_bytes(pydicom_file("MR_truncated.dcm").read_bytes())
    labels = dicom_dir.parent / "labels.csv"
    write_csv(labels, ["path", "label"], [[n, y] for n, y in PYDICOM_FILES.items()] + [["MR_truncated.dcm", "a"]])
    reasons, _ = _bad_reasons(dicom_cfg(dicom_dir))
    assert list(reasons) == ["MR_truncated.dcm"] and "cannot decode the pixel data" in reasons["MR_truncated.dcm"]


def test_unsupported_transfer_syntax_without_decoder(dicom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = get_decoder(JPEG2000)
    monkeypatch.setattr(decoder, "_available", {})  # as if pylibjpeg-openjpeg / gdcm were not installed
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})
    reasons, n_good = _bad_reasons(dicom_cfg(dicom_dir))
    assert set(reasons) == {"JPEG2000.dcm", "693_J2KI.dcm"}
    assert "no decoder installed for transfer syntax JPEG 2000" in reasons["JPEG2000.dcm"]
    assert "pylibjpeg-openjpeg" in reasons["JPEG2000.dcm"]
    assert n_good == 16


def test_inconsistent_slice_sizes_in_a_series(dicom_dir: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for i, size in enumerate((128, 128, 64)):
        ds.SOPInstanceUID, ds.InstanceNumber = f"1.2.826.0.1.999.{i}", i + 1
        ds.set_pixel_data(np.zeros((size, size), np.int16) + i * 10, "MONOCHROME2", 16)
        ds.save_as(dicom_dir / f"series_{i}.dcm")
    write_csv(dicom_dir.parent / "labels.csv", ["path", "label"],
              [[n, y] for n, y in PYDICOM_FILES.items()] + [[f"series_{i}.dcm", "b"] for i in range(3)])
    table = load_table(dicom_cfg(dicom_dir))
    reasons = dict(table.bad)
    # CT_small.dcm shares the series UID: 3 files of 128x128 against one odd 64x64
    assert list(reasons) == ["series_2.dcm"]
    assert "slice size 64x64 differs from the 128x128" in reasons["series_2.dcm"]


def test_unlabelled_file_is_reported_not_dropped(dicom_dir: Path) -> None:
    write_csv(dicom_dir.parent / "labels.csv", ["path", "label"],
              [[n, y] for n, y in PYDICOM_FILES.items() if n != "CT_small.dcm"])
    table = load_table(dicom_cfg(dicom_dir))
    assert [f for f, _ in table.bad] == ["CT_small.dcm"]
    assert "no label" in table.bad[0][1]


def test_too_many_bad_files_raise(dicom_dir: Path) -> None:
    for i in range(10):
        (dicom_dir / f"junk{i}.bin").write_bytes(b"x" * 200)
    cfg = dicom_cfg(dicom_dir, max_bad_fraction=0.1)
    with pytest.raises(DataError, match="max_bad_fraction"):
        load_images(load_table(cfg), cfg, progress=False)


def test_manifest_meta_is_json(dicom_dir: Path) -> None:
    table = load_table(dicom_cfg(dicom_dir))
    assert json.loads(json.dumps(dict(table.samples[0].meta)))["file"]


# ---------------------------------------------------------------- enhanced multi-frame


def _expected(raw: np.ndarray, intercept: float, center: float, width: float) -> np.ndarray:
    """pydicom's own windowing of ``raw * 1 + intercept`` onto 0..255 (an 8-bit output range)."""
    spec = pydicom.Dataset()
    spec.PhotometricInterpretation, spec.BitsStored, spec.PixelRepresentation = "MONOCHROME2", 8, 0
    spec.WindowCenter, spec.WindowWidth = center, width
    return np.rint(apply_windowing(raw.astype(np.float64) + intercept, spec)).astype(np.uint8)


def _frame_voi(center: float, width: float) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.WindowCenter, item.WindowWidth = center, width
    return item


def test_enhanced_ct_frames_use_the_shared_functional_group() -> None:
    """eCT_Supplemental.dcm (Enhanced CT, 2 frames) keeps rescale -1024 and window 49/102 only in the shared group."""
    path = pydicom_file("eCT_Supplemental.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert "WindowCenter" not in header and "PerFrameFunctionalGroupsSequence" in header
    frames = list(iter_frames(path, None, DicomConfig()))
    assert [f.policy for f in frames] == ["file window 49/102"] * 2
    for frame in frames:
        assert np.array_equal(np.asarray(frame.image), _expected(frame.raw, -1024.0, 49.0, 102.0))


def test_per_frame_window_and_rescale_override_the_shared_ones(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("eCT_Supplemental.dcm"))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    per_frame[0].FrameVOILUTSequence = [_frame_voi(40.0, 80.0)]
    per_frame[1].FrameVOILUTSequence = [_frame_voi(400.0, 1800.0)]
    rescale = pydicom.Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = -1000.0, 1.0, "HU"
    per_frame[1].PixelValueTransformationSequence = [rescale]
    path = tmp_path / "two_windows.dcm"
    ds.save_as(path)
    frames = list(iter_frames(path, None, DicomConfig()))
    assert [f.policy for f in frames] == ["file window 40/80", "file window 400/1800"]
    assert np.array_equal(np.asarray(frames[0].image), _expected(frames[0].raw, -1024.0, 40.0, 80.0))
    assert np.array_equal(np.asarray(frames[1].image), _expected(frames[1].raw, -1000.0, 400.0, 1800.0))
    only_second = list(iter_frames(path, [1], DicomConfig()))  # selecting frames keeps each frame's own values
    assert only_second[0].policy == "file window 400/1800"
    folder = tmp_path / "data"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        ds.save_as(folder / name / "ct.dcm")
    cfg = DataConfig(source="dicom", root=folder, image_size=512)
    loaded = load_images(load_table(cfg), cfg, progress=False)  # the data source renders frame by frame too
    assert np.array_equal(loaded.images[1, ..., 0], np.asarray(frames[1].image))
    assert not np.array_equal(loaded.images[0, ..., 0], _expected(frames[0].raw, -1024.0, 400.0, 1800.0))
