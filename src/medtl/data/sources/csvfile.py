"""``data.source: csv``: a CSV with one row per image (path, label, optional patient and split).

Paths are relative to the CSV's folder; sample ids are the paths as written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from medtl.config import DataConfig
from medtl.data.samples import (
    MAX_LISTED,
    Listing,
    Sample,
    cell,
    check_labels,
    read_csv,
    require_file,
    sorted_labels,
    split_value,
)
from medtl.data.sources.files import ImageFileSource
from medtl.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _CsvColumns:
    path: str
    label: str
    patient: str | None
    split: str | None


class CsvSource(ImageFileSource):
    """Rows of a CSV: file path (relative to the CSV's folder), label, optional patient and split."""

    name: ClassVar[str] = "csv"

    def list_samples(self, cfg: DataConfig) -> Listing:
        """One sample per row of ``cfg.csv`` (rows with an empty label refused, or dropped on request)."""
        csv_path = require_file(cfg.csv, "csv")
        header, rows = read_csv(csv_path)
        cols = _csv_columns(cfg, header, csv_path)
        dropped = check_labels([(line, cell(row, cols.label)) for line, row in rows], csv_path, cols.label,
                               cfg.drop_unlabelled)
        rows = [(line, row) for line, row in rows if line not in dropped]
        if not rows:
            raise DataError(f"{csv_path}: no row has a label in column '{cols.label}'; label the rows")
        class_names = cfg.classes or sorted_labels({cell(row, cols.label) for _, row in rows})
        index = {name: i for i, name in enumerate(class_names)}
        samples = [_csv_sample(row, line, cols, index, csv_path) for line, row in rows]
        _check_files_exist(samples, [line for line, _ in rows], csv_path)
        _note_missing_patients(samples, cols, csv_path)
        return Listing(samples, list(class_names))


def _csv_columns(cfg: DataConfig, header: list[str], csv_path: Path) -> _CsvColumns:
    for key in ("path_column", "label_column"):
        column = getattr(cfg, key)
        if column not in header:
            raise DataError(
                f"{csv_path}: column '{column}' (data.{key}) not found; the header is {header}: "
                f"set data.{key} to one of these"
            )
    patient = _optional_column(cfg, "patient_column", header, csv_path)
    split = _optional_column(cfg, "split_column", header, csv_path)
    return _CsvColumns(cfg.path_column, cfg.label_column, patient, split)


def _optional_column(cfg: DataConfig, key: str, header: list[str], csv_path: Path) -> str | None:
    """The column if present; an absent column is fine only when the config left the default name."""
    column = getattr(cfg, key)
    if column is None or column in header:
        return column
    if column == DataConfig.model_fields[key].default:
        logger.info("%s: no '%s' column, so no %s information", csv_path, column, key.removesuffix("_column"))
        return None
    raise DataError(
        f"{csv_path}: column '{column}' (data.{key}) not found; the header is {header}: "
        f"set data.{key} to one of these, or to null if the CSV has none"
    )


def _csv_sample(
    row: dict[str, Any], line: int, cols: _CsvColumns, index: dict[str, int], csv_path: Path
) -> Sample:
    written = cell(row, cols.path)
    if not written:
        raise DataError(f"{csv_path} line {line}: empty '{cols.path}' cell; every row needs an image path")
    label = cell(row, cols.label)
    if label not in index:
        raise DataError(
            f"{csv_path} line {line}: label '{label}' in column '{cols.label}' is not one of the classes "
            f"{list(index)}; fix the row or add the label to data.classes (labels are matched as text)"
        )
    file = Path(written) if Path(written).is_absolute() else csv_path.parent / written
    return Sample(
        id=written,
        path=str(file),
        label=index[label],
        patient=(cell(row, cols.patient) or None) if cols.patient else None,
        split=split_value(cell(row, cols.split), line, cols.split, csv_path) if cols.split else None,
    )


def _check_files_exist(samples: list[Sample], lines: list[int], csv_path: Path) -> None:
    missing = [(line, s.path) for line, s in zip(lines, samples, strict=True) if not os.path.isfile(s.path)]
    if missing:
        listed = "; ".join(f"line {line}: {path}" for line, path in missing[:MAX_LISTED])
        raise DataError(
            f"{csv_path}: {len(missing)} rows name files that do not exist ({listed}); paths are relative "
            "to the CSV's folder: fix the paths or remove the rows"
        )


def _note_missing_patients(samples: list[Sample], cols: _CsvColumns, csv_path: Path) -> None:
    if cols.patient is None:
        return
    without = sum(s.patient is None for s in samples)
    if without:
        logger.warning(
            "%s: %d of %d rows have an empty '%s' cell; those images are grouped on their own",
            csv_path,
            without,
            len(samples),
            cols.patient,
        )
