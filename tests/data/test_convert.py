"""Tests of medtl.data.convert: DICOM → de-identified PNG / DICOM, manifest, audit log, warnings, errors."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from medtl.cli import app
from medtl.config import DataConfig
from medtl.data import convert as convert_mod
from medtl.data.convert import ConvertOptions, convert_dicom
from medtl.data.sources import load_table
from medtl.errors import ConfigError, DataError

from .conftest import PYDICOM_FILES, pydicom_file

# PS3.15 Basic Profile attributes whose values identify a patient, a visit or a place.
IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
    "AccessionNumber", "StudyID", "StationName", "DeviceSerialNumber", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "InstanceCreationDate", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "FrameOfReferenceUID", "StudyDescription", "SeriesDescription", "ImageComments",
)
TEXT_OUTPUTS = ("manifest.csv", "deid_audit.csv", "convert_report.json")


def identifying_values(folder: Path) -> set[str]:
    """Every non-trivial value of :data:`IDENTIFYING` in the DICOM files of ``folder`` (nested ones too)."""
    values: set[str] = set()
    for path in folder.rglob("*"):
        try:
            ds = pydicom.dcmread(path)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            continue
        values |= {str(e.value).strip() for e in ds.iterall() if e.keyword in IDENTIFYING}
    return {v for v in values if len(v) >= 4}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_no_identifying_value(out: Path, values: set[str]) -> None:
    assert values, "the inputs should hold identifying values"
    for name in TEXT_OUTPUTS:
        text = (out / name).read_text()
        leaked = sorted(v for v in values if v in text)
        assert not leaked, f"{name} leaks {leaked}"
    for png in out.rglob("*.png"):
        with Image.open(png) as img:
            assert not img.info.get("text") and not any(k in img.info for k in ("tEXt", "iTXt", "zTXt"))
        data = png.read_bytes()
        assert not [v for v in values if len(v) >= 8 and v.encode() in data], png
    for dcm in out.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm)
        for elem in ds.iterall():
            if elem.VR == "SQ" or elem.keyword in ("PixelData", "CodeMeaning"):  # coded terms are not identifying
                continue
            text = str(elem.value)
            assert text not in values or len(text) < 4, (dcm, elem.keyword, text)
            assert not [v for v in values if len(v) >= 8 and v in text], (dcm, elem.keyword)
        assert "DICOGNITO" in str(ds.DeidentificationMethod)


@pytest.mark.parametrize("fmt", ["png8", "png16", "dicom"])
def test_no_identifying_value_survives_conversion(dicom_dir: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out_{fmt}"
    options = ConvertOptions(format=fmt, labels=dicom_dir.parent / "labels.csv", label_key="path")  # type: ignore[arg-type]
    report = convert_dicom(dicom_dir, out, options, progress=False)
    colour = {"SC_rgb_rle_2frame.dcm"} if fmt == "png16" else set()
    assert report.n_converted == 8 - len(colour)
    assert [Path(s).name for s, _ in report.errors] == sorted(colour)
    assert_no_identifying_value(out, identifying_values(dicom_dir))
    rows = read_rows(out / "manifest.csv")
    assert {r["label"] for r in rows} == {"a", "b"}
    assert all((out / r["path"]).is_file() for r in rows)
    audit = read_rows(out / "deid_audit.csv")
    changed = {(r["element"], r["action"]) for r in audit}
    assert {("PatientName", "changed"), ("StudyInstanceUID", "changed")} <= changed


def test_png8_manifest_and_images(dicom_dir: Path, tmp_path: Path) -> None:
    report = convert_dicom(dicom_dir, tmp_path / "out", ConvertOptions(), progress=False)
    rows = read_rows(report.manifest)
    assert len(rows) == 18  # 10 + 2 frames + 6 single frames
    emri = [r for r in rows if r["n_slices"] == "10"]
    assert sorted(int(r["slice"]) for r in emri) == list(range(10))
    assert len({r["patient"] for r in rows if r["modality"] == "MR" and r["n_slices"] == "1"}) == 1
    mr = next(r for r in rows if r["window"] == "file window 600/1600")
    with Image.open(tmp_path / "out" / mr["path"]) as img:
        assert img.mode == "L" and img.size == (64, 64)
    summary = json.loads(report.report.read_text())
    assert summary["n_converted"] == 8 and "dicognito" in summary["deidentification"]["method"]
    assert summary["deidentification"]["pseudonym_key"] == "random, not stored"


def test_png16_keeps_stored_values(dicom_dir: Path, tmp_path: Path) -> None:
    report = convert_dicom(dicom_dir, tmp_path / "out", ConvertOptions(format="png16"), progress=False)
    ct_rows = [r for r in read_rows(report.manifest) if r["modality"] == "CT" and r["rescale_intercept"] == "-1024"]
    row = next(r for r in ct_rows if int(r["offset"]) == 32768)
    with Image.open(tmp_path / "out" / row["path"]) as img:
        stored = np.asarray(img).astype(np.int64) - int(row["offset"])
    original = pydicom.dcmread(pydicom_file("CT_small.dcm")).pixel_array
    if stored.shape == original.shape and np.array_equal(stored, original):
        return
    other = pydicom.dcmread(pydicom_file("693_J2KI.dcm")).pixel_array
    assert np.array_equal(stored, other)


def test_pseudonyms_group_patients_and_dates_shift_consistently(tomo_dir: Path, tmp_path: Path) -> None:
    options = ConvertOptions(format="dicom", labels=tomo_dir.parent / "labels.csv", key="secret")
    report = convert_dicom(tomo_dir, tmp_path / "a", options, progress=False)
    rows = read_rows(report.manifest)
    assert len(rows) == 48 and len({r["patient"] for r in rows}) == 12
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(r["label"])
    assert all(len(v) == 1 for v in by_patient.values())
    assert sorted(len([r for r in rows if r["patient"] == p]) for p in by_patient) == [4] * 12
    shifts = set()
    for r in rows:
        ds = pydicom.dcmread(tmp_path / "a" / r["path"])
        shifts.add(date(1960, 1, 1) - date.fromisoformat(str(ds.PatientBirthDate)[:4] + "-" +
                                                          str(ds.PatientBirthDate)[4:6] + "-" +
                                                          str(ds.PatientBirthDate)[6:]))
    assert len(shifts) == 1 and shifts != {date(1960, 1, 1) - date(1960, 1, 1)}
    again = convert_dicom(tomo_dir, tmp_path / "b", options, progress=False)
    assert {r["patient"] for r in read_rows(again.manifest)} == set(by_patient)  # same key, same pseudonyms
    assert_no_identifying_value(tmp_path / "a", identifying_values(tomo_dir))


def test_converted_manifest_is_a_csv_source(tomo_dir: Path, tmp_path: Path) -> None:
    options = ConvertOptions(labels=tomo_dir.parent / "labels.csv")
    report = convert_dicom(tomo_dir, tmp_path / "png", options, progress=False)
    table = load_table(DataConfig(source="csv", csv=report.manifest, patient_column="patient", split_column=None))
    assert len(table.samples) == 480 and len({s.patient for s in table.samples}) == 12


def test_dates_removed(tomo_dir: Path, tmp_path: Path) -> None:
    report = convert_dicom(tomo_dir, tmp_path / "out", ConvertOptions(format="dicom", dates="remove"), progress=False)
    ds = pydicom.dcmread(tmp_path / "out" / read_rows(report.manifest)[0]["path"])
    assert all(not str(e.value) for e in ds.iterall() if e.VR in ("DA", "DT", "TM"))


def test_burned_in_and_ultrasound_warnings_and_bad_files(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    ds.save_as(dicom_dir / "burned.dcm")
    (dicom_dir / "US1_J2KR.dcm").write_bytes(pydicom_file("US1_J2KR.dcm").read_bytes())
    (dicom_dir / "readme.txt").write_text("notes")
    data = pydicom_file("MR_truncated.dcm").read_bytes()
    (dicom_dir / "MR_truncated.dcm").write_bytes(data)
    report = convert_dicom(dicom_dir, tmp_path / "out", ConvertOptions(), progress=False)
    warned = {Path(s).name: w for s, w in report.warnings}
    assert "BurnedInAnnotation" in warned["burned.dcm"] and "US" in warned["US1_J2KR.dcm"]
    assert sorted(Path(s).name for s, _ in report.errors) == ["MR_truncated.dcm", "readme.txt"]
    assert report.n_converted == 10 and report.n_files == 12
    summary = json.loads(report.report.read_text())
    assert summary["n_errors"] == 2 and all("readme" not in e["reason"] for e in summary["errors"])


def test_bad_options_and_folders(dicom_dir: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'png8'"):
        ConvertOptions(format="png9")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="inside the source folder"):
        convert_dicom(dicom_dir, dicom_dir / "out", progress=False)


def test_output_folder_never_overlaps_the_source_and_is_emptied_only_with_overwrite(dicom_dir: Path) -> None:
    parent = dicom_dir.parent
    for out in (dicom_dir, parent):
        with pytest.raises(DataError, match="OUT_DIR") as info:
            convert_dicom(dicom_dir, out, progress=False, overwrite=True)
        assert str(dicom_dir) in str(info.value)
    out = parent / "out"
    first = convert_dicom(dicom_dir, out, progress=False)
    (out / "stale.png").write_bytes(b"old")
    with pytest.raises(DataError, match="--overwrite"):
        convert_dicom(dicom_dir, out, progress=False)
    second = convert_dicom(dicom_dir, out, progress=False, overwrite=True)
    assert not (out / "stale.png").exists() and second.n_outputs == first.n_outputs
    assert len(list(out.rglob("*.png"))) == len(read_rows(second.manifest))
    (parent / "mine").mkdir()
    (parent / "mine" / "thesis.txt").write_text("keep")
    with pytest.raises(DataError, match="no convert_report.json"):
        convert_dicom(dicom_dir, parent / "mine", progress=False, overwrite=True)
    assert (parent / "mine" / "thesis.txt").exists()


def test_a_file_failing_mid_way_is_reported_and_its_partial_outputs_removed(
        dicom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (dicom_dir / "badVR.dcm").write_bytes(pydicom_file("badVR.dcm").read_bytes())
    save_png, calls = convert_mod._save_png, []

    def fail_on_third_frame(raw, image, ds, path, fmt):  # noqa: ANN001, ANN202 - same signature as _save_png
        calls.append(path.name)
        if path.name.endswith("_f0002.png"):
            raise ValueError("disk full")
        return save_png(raw, image, ds, path, fmt)

    monkeypatch.setattr(convert_mod, "_save_png", fail_on_third_frame)
    report = convert_dicom(dicom_dir, tmp_path / "out", progress=False)
    failed = {Path(s).name: reason for s, reason in report.errors}
    assert "NumberOfFrames = '1A'" in failed["badVR.dcm"] and "disk full" in failed["emri_small.dcm"]
    assert report.n_converted == len(PYDICOM_FILES) - 1
    assert len(list((tmp_path / "out").rglob("*.png"))) == len(read_rows(report.manifest)) == report.n_outputs


def test_cli_convert(dicom_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["convert", str(dicom_dir), str(tmp_path / "out"), "--window", "brain",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "8 of 8 files converted into 18 outputs" in result.output
    bad = CliRunner().invoke(app, ["convert", str(dicom_dir), str(tmp_path / "o2"), "--dates", "shifted"])
    assert bad.exit_code == 2 and "shift" in bad.output
