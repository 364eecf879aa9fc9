"""DICOM fixtures: real pydicom test files, and a tomosynthesis-like set built from a real multi-frame file."""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Real files that ship with pydicom (and pydicom-data for emri_small): CT, MR, a JPEG 2000, RLE and
# JPEG-LS compressed MR, a 10-frame MR and an RGB 2-frame RLE file. Labels are keyed by path.
PYDICOM_FILES: dict[str, str] = {
    "CT_small.dcm": "a",  # CT, uncompressed, Rescale -1024
    "MR_small.dcm": "a",  # MR with its own window 600/1600
    "MR_small_RLE.dcm": "a",  # the same MR, RLE Lossless
    "MR_small_jpeg_ls_lossless.dcm": "a",  # the same MR, JPEG-LS Lossless
    "SC_rgb_rle_2frame.dcm": "a",  # RGB, 2 frames, RLE
    "JPEG2000.dcm": "b",  # NM, JPEG 2000
    "693_J2KI.dcm": "b",  # CT head, JPEG 2000 (irreversible)
    "emri_small.dcm": "b",  # MR, 10 frames (pydicom-data)
}

VIEWS: tuple[tuple[str, str], ...] = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
TOMO_LABELS: dict[str, str] = {
    **{f"P{i:03d}": "normal" for i in range(1, 7)},
    "P007": "benign", "P008": "benign", "P009": "malignant", "P010": "malignant",
    "P011": "actionable", "P012": "actionable",
}
"""Patient -> class of the tomosynthesis fixture (6 normal, 2 benign, 2 malignant, 2 actionable)."""


def pydicom_file(name: str) -> Path:
    """A pydicom test file, found offline (skips when it is not installed)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    """A folder with the real pydicom test files, plus ``labels.csv`` (path,label) next to it."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name in PYDICOM_FILES:
        shutil.copy(pydicom_file(name), folder / name)
    write_csv(tmp_path / "labels.csv", ["path", "label"], [[n, y] for n, y in PYDICOM_FILES.items()])
    return folder


def _tomo_view(template: pydicom.Dataset, patient: str, study: str, view: tuple[str, str], seed: int
               ) -> pydicom.Dataset:
    ds = copy.deepcopy(template)
    ds.PatientID, ds.PatientName = patient, f"DOE^{patient}"
    ds.PatientBirthDate, ds.InstitutionName = "19600101", "ST ELSEWHERE HOSPITAL"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, generate_uid(), generate_uid()
    ds.Modality, ds.ImageLaterality, ds.ViewPosition = "MG", view[0], view[1]
    arr = template.pixel_array.astype(np.int32)
    noise = np.random.default_rng(seed).integers(0, 40, size=arr.shape)
    ds.set_pixel_data((arr + noise).clip(0, 65535).astype(np.uint16), "MONOCHROME2", 16)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="session")
def tomo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients x 4 views (LCC, LMLO, RCC, RMLO), each a 10-slice volume made from the real emri_small.dcm.

    Every volume gets its own noise so that no two volumes share pixels. ``labels.csv`` (PatientID,label)
    lies next to the ``dicom`` folder.
    """
    template = pydicom.dcmread(pydicom_file("emri_small.dcm"))
    root = tmp_path_factory.mktemp("tomo")
    folder = root / "dicom"
    for p, patient in enumerate(TOMO_LABELS):
        study = generate_uid()
        (folder / patient).mkdir(parents=True)
        for v, view in enumerate(VIEWS):
            ds = _tomo_view(template, patient, study, view, seed=10 * p + v)
            ds.save_as(folder / patient / f"{view[0]}{view[1]}.dcm", enforce_file_format=True)
    write_csv(root / "labels.csv", ["PatientID", "label"], [[p, y] for p, y in TOMO_LABELS.items()])
    return folder
