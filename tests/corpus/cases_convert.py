"""Corpus cases: ``medtl convert`` (DICOM -> de-identified PNG) on malformed files and unsafe folder layouts.

Inputs are pydicom's own test files (``pydicom.data.get_testdata_file``): two good images and
``badVR.dcm``, whose NumberOfFrames is ``'1A'``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pydicom.data import get_testdata_file

from corpus.case import Case
from corpus.inputs import csv_rows
from medtl.data.convert import convert_dicom

GOOD_FILES = ("CT_small.dcm", "MR_small.dcm")


def _dicom_folder(folder: Path, names: tuple[str, ...] = GOOD_FILES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(get_testdata_file(name), folder / name)
    return folder


def _n_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _bad_header(root: Path) -> list[str]:
    _dicom_folder(root / "in", (*GOOD_FILES, "badVR.dcm"))
    return ["convert", "in", "out", "--quiet"]


def _bad_header_good(root: Path) -> int:
    """Manifest rows, or -1 when the report does not count the bad file as an error."""
    report = (root / "out" / "convert_report.json").read_text()
    return csv_rows(root / "out" / "manifest.csv") if '"n_errors": 1' in report else -1


def _out_not_empty(root: Path) -> list[str]:
    _dicom_folder(root / "in")
    (root / "out").mkdir()
    (root / "out" / "old_export.png").write_bytes(b"an earlier export")
    return ["convert", "in", "out", "--quiet"]


def _earlier_conversion(overwrite: bool) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        _dicom_folder(root / "in")
        convert_dicom(root / "in", root / "out", progress=False)
        (root / "out" / "stale").mkdir()
        (root / "out" / "stale" / "0000000000000000.png").write_bytes(b"a stale output")
        return ["convert", "in", "out", "--quiet", *(["--overwrite"] if overwrite else [])]
    return make


def _overwritten_good(root: Path) -> int:
    """PNG files in the output, or -1 when a stale one survived or the manifest lists another number."""
    pngs = sorted((root / "out").rglob("*.png"))
    if any(p.parent.name == "stale" for p in pngs) or len(pngs) != csv_rows(root / "out" / "manifest.csv"):
        return -1
    return len(pngs)


def _overwrite_foreign(root: Path) -> list[str]:
    _dicom_folder(root / "in")
    (root / "home").mkdir()
    (root / "home" / "thesis.docx").write_bytes(b"years of work")
    return ["convert", "in", "home", "--overwrite", "--quiet"]


def _layout(src: str, out: str, overwrite: bool = False) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        _dicom_folder(root / "data" / "in")
        return ["convert", src, out, "--quiet", *(["--overwrite"] if overwrite else [])]
    return make


def _inputs_intact(root: Path) -> int:
    return _n_files(root / "data" / "in")


_KEPT = "nothing written or deleted"
CASES = [
    Case("convert-malformed-header-value", "#22.4", "3 DICOM files, one with `NumberOfFrames = '1A'` (`badVR.dcm`)",
         "the 2 good files converted; the bad one listed with the element and value (terminal and "
         "convert_report.json), exit 0", _bad_header, 0, "NumberOfFrames = '1A'", _bad_header_good, 2),
    Case("convert-out-not-empty", "#22.5", "OUT_DIR already holds other files",
         "exit 2: old and new outputs would mix; " + _KEPT, _out_not_empty, 2, "is not empty",
         lambda root: _n_files(root / "out"), 1),
    Case("convert-out-earlier-no-overwrite", "#22.5", "OUT_DIR holds an earlier conversion",
         "exit 2 naming `--overwrite`", _earlier_conversion(False), 2, "--overwrite"),
    Case("convert-overwrite-earlier", "#22.5", "OUT_DIR holds an earlier conversion, `--overwrite`",
         "OUT_DIR emptied first: only the new outputs, all in the manifest", _earlier_conversion(True), 0, "",
         _overwritten_good, 2),
    Case("convert-overwrite-foreign", "#22.5", "`--overwrite` on a non-empty folder that is no earlier conversion",
         "exit 2; the folder is not emptied", _overwrite_foreign, 2, "no convert_report.json",
         lambda root: _n_files(root / "home"), 1),
    Case("convert-in-inside-out", "#22.5", "`convert data/in data` (SRC_DIR inside OUT_DIR)",
         "exit 2 naming both folders; " + _KEPT, _layout("data/in", "data"), 2, "contains the source folder",
         _inputs_intact, 2),
    Case("convert-out-inside-in", "#22.5", "`convert data/in data/in/png` (OUT_DIR inside SRC_DIR)",
         "exit 2 naming both folders; " + _KEPT, _layout("data/in", "data/in/png"), 2,
         "lies inside the source folder", _inputs_intact, 2),
    Case("convert-in-is-out-overwrite", "#22.5", "`convert data/in data/in --overwrite`",
         "exit 2: emptying OUT_DIR would delete the input; " + _KEPT, _layout("data/in", "data/in", True), 2,
         "would delete the input", _inputs_intact, 2),
]
