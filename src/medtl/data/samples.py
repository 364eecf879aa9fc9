"""What every data source produces: samples, the sample table, decoded images, and the CSV helpers.

A leaf module: it imports nothing from medtl but :mod:`medtl.errors` and :mod:`medtl.config`, so
every source (:mod:`medtl.data.sources`), the DICOM reader, the splitter and the audit can use it
without import circles.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtl.config import data_root
from medtl.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The split names a source may predefine."""

MAX_LISTED = 10
"""How many offending items an error message lists."""

_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        id: Unique, stable, human-readable id (relative path, CSV path or ``train[115]``).
        path: Absolute file path; for MedMNIST ``"<abs npz path>::train[115]"``.
        label: Index into :attr:`SampleTable.class_names`.
        patient: Patient id, ``None`` when the source has none.
        split: ``train``/``val``/``test`` when the source defines it, else ``None``.
        meta: Extra facts about the image (DICOM: file, study, series, view, slice, ...); empty else.
    """

    id: str
    path: str
    label: int
    patient: str | None
    split: str | None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class SampleTable:
    """All samples of a data source plus what is known about the classes.

    Attributes:
        samples: The samples, in a deterministic order.
        class_names: Class names; ``Sample.label`` indexes this list.
        positive_index: Index of the positive class for binary tasks (``data.positive_class``,
            default the second class); ``None`` for > 2 classes.
        source: The ``data.source`` name (``folder``, ``csv``, ``medmnist``, ``dicom``, ...).
        location: The folder, CSV or ``.npz`` file read.
        has_patients: Whether any sample carries a patient id.
        bad: ``(file, reason)`` for files the source found but could not list (DICOM headers).
    """

    samples: list[Sample]
    class_names: list[str]
    positive_index: int | None
    source: str
    location: str
    has_patients: bool
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """Labels of all samples as an int64 array."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name (every class listed, also empty ones)."""
        counts = Counter(s.label for s in self.samples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}


@dataclass
class LoadedImages:
    """Decoded images of a table.

    Attributes:
        table: The table restricted to the samples that decoded (order preserved).
        images: uint8 array ``(N, size, size, C)`` with C = 1 (grayscale) or 3 (rgb).
        hashes: Pixel hash per kept sample (:func:`~medtl.data.images.pixel_hash` /
            :func:`~medtl.data.images.array_hash`).
        bad: ``(sample id, reason)`` for every sample that failed to decode.
        color: The colour the images were converted to, ``grayscale`` or ``rgb`` (``data.color: auto``
            resolved from the data).
    """

    table: SampleTable
    images: np.ndarray
    hashes: list[str]
    bad: list[tuple[str, str]]
    color: str = "grayscale"


@dataclass
class Listing:
    """What a source lists before any pixel is decoded.

    Attributes:
        samples: The samples, in a deterministic order.
        class_names: Class names; ``Sample.label`` indexes this list.
        bad: ``(file, reason)`` for files found but not usable (e.g. unreadable DICOM headers).
    """

    samples: list[Sample]
    class_names: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- locations


def missing_location(key: str, path: Path | None, what: str) -> DataError:
    """The error for a ``data.<key>`` that does not exist (naming ``MEDTL_DATA``)."""
    return DataError(
        f"data.{key} {path} does not exist or is not a {what}; fix data.{key} in the config, or set the "
        f"environment variable MEDTL_DATA to the folder that holds the shared datasets (now {data_root()})"
    )


def require_dir(path: Path | None, key: str) -> Path:
    """``path`` as an absolute folder, or a :class:`DataError` naming ``data.<key>``."""
    if path is None or not path.is_dir():
        raise missing_location(key, path, "folder")
    return path.absolute()


def require_file(path: Path | None, key: str) -> Path:
    """``path`` as an absolute file, or a :class:`DataError` naming ``data.<key>``."""
    if path is None or not path.is_file():
        raise missing_location(key, path, "file")
    return path.absolute()


# ---------------------------------------------------------------- CSV helpers


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and ``(line number, row)`` pairs of a CSV file.

    The file is read as UTF-8 (a byte-order mark is dropped); a file that is not UTF-8 is read as
    cp1252 (Windows Latin-1, what spreadsheet programs write; latin-1 when even that fails) with a
    warning naming the encoding used.

    Raises:
        DataError: Empty file or a header without rows.
    """
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError(f"{path}: empty CSV; expected a header line with the column names")
    reader.fieldnames = [name.strip() for name in reader.fieldnames]
    rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise DataError(f"{path}: the CSV has a header but no rows")
    return list(reader.fieldnames), rows


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
    # cp1252 is what spreadsheet programs on Windows write; latin-1 decodes any byte (the last resort)
    encoding = "cp1252" if _decodes(data, "cp1252") else "latin-1"
    logger.warning("%s is not UTF-8 (byte 0x%02x at offset %d); read it as %s. Save the CSV as UTF-8 to be sure "
                   "that every label and path is read as written", path, data[offset], offset, encoding)
    return data.decode(encoding)


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def cell(row: Mapping[str, Any], column: str) -> str:
    """The stripped text of ``row[column]`` (``""`` when missing)."""
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def sorted_labels(labels: set[str]) -> list[str]:
    """Distinct labels sorted numerically when all are integers, else alphabetically."""
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def split_value(value: str, line: int, column: str | None, csv_path: Path) -> str | None:
    """The split named by a CSV cell (``valid``/``validation`` read as ``val``), ``None`` when empty.

    Raises:
        DataError: Not a split name (naming the file, line and column).
    """
    if not value:
        return None
    split = _SPLIT_ALIASES.get(value.lower())
    if split is None:
        raise DataError(
            f"{csv_path} line {line}: split '{value}' in column '{column}' is not one of train/val/test "
            "(validation and valid are read as val); fix the value or set data.split_column: null"
        )
    return split


def check_labels(labels: list[tuple[int, str]], csv_path: Path, column: str, drop: bool) -> set[int]:
    """Check the label cells of a CSV; returns the lines to drop (empty labels, with ``drop``).

    Labels are compared after stripping surrounding whitespace; labels that then differ only by
    upper/lower case (``Yes`` / ``yes``) are refused, since they almost always mean one class.

    Args:
        labels: ``(line number, stripped label)`` of every row.
        csv_path: The CSV, for messages.
        column: The label column, for messages.
        drop: ``data.drop_unlabelled``: drop rows with an empty label instead of refusing them.

    Raises:
        DataError: Empty labels (without ``drop``) or labels differing only by case.
    """
    empty = [line for line, label in labels if not label]
    if empty and not drop:
        raise DataError(
            f"{csv_path}: {len(empty)} rows have an empty '{column}' label (lines {_lines(empty)}); label them, "
            "remove them, or set data.drop_unlabelled: true to leave them out"
        )
    if empty:
        logger.warning("%s: data.drop_unlabelled: leaving out %d rows with an empty '%s' label (lines %s)",
                       csv_path, len(empty), column, _lines(empty))
    _refuse_case_variants([(line, label) for line, label in labels if label], csv_path, column)
    return set(empty)


def _refuse_case_variants(labels: list[tuple[int, str]], csv_path: Path, column: str) -> None:
    spellings: dict[str, dict[str, int]] = defaultdict(dict)
    for line, label in labels:
        spellings[label.casefold()].setdefault(label, line)
    clashes = [seen for seen in spellings.values() if len(seen) > 1]
    if clashes:
        listed = "; ".join(" / ".join(f"'{s}' (line {line})" for s, line in seen.items()) for seen in clashes)
        raise DataError(
            f"{csv_path}: labels in column '{column}' differ only by upper/lower case: {listed}; write each "
            "class one way (labels are matched as text, so these would become separate classes)"
        )


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_LISTED])
    return shown + (f", ... ({len(lines)} in all)" if len(lines) > MAX_LISTED else "")
