"""Corpus cases of the data sources: CSV label files (issue 22 items 1-3, 10 and 13, and the CSV cases that held).

CSV cases run ``medtl audit data.yaml`` (lists and decodes every image, trains nothing); ``good`` reads
the number of listed samples from the audit's JSON report.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from corpus.case import Case

N_PER_CLASS = 10
SPLITS = ("train", "train", "train", "train", "train", "train", "val", "val", "test", "test")


def _images(root: Path, classes: tuple[str, ...] = ("no", "yes")) -> list[tuple[str, str, str]]:
    """``N_PER_CLASS`` distinct 16 px PNGs per class; ``(path, label, split)`` rows."""
    rows = []
    for c, name in enumerate(classes):
        (root / "img" / name).mkdir(parents=True, exist_ok=True)
        for i in range(N_PER_CLASS):
            pixels = np.random.default_rng(100 * c + i).integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "img" / name / f"{i}.png")
            rows.append((f"img/{name}/{i}.png", name, SPLITS[i]))
    return rows


def _write(root: Path, text: str, encoding: str = "utf-8", **data: object) -> list[str]:
    (root / "labels.csv").write_bytes(text.encode(encoding))
    block = ", ".join(f"{k}: {json.dumps(v)}" for k, v in ({"source": "csv", "csv": "labels.csv"} | data).items())
    (root / "data.yaml").write_text(f"name: corpus\ndata: {{{block}, image_size: 16}}\n")
    return ["audit", "data.yaml", "--json", "audit.json", "--quiet"]


def _csv_text(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("path", "label", "split"), sep: str = ",",
              end: str = "\n") -> str:
    lines = [sep.join(header)] + [sep.join(row) for row in rows]
    return end.join(lines) + end


def _n_samples(root: Path) -> int:
    path = root / "audit.json"
    return int(json.loads(path.read_text())["n_samples"]) if path.is_file() else -1


def _rows_changed(change: Callable[[list[tuple[str, ...]]], list[tuple[str, ...]]], **data: object
                  ) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        return _write(root, _csv_text(change(_images(root))), **data)
    return make


def _blank_labels(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [(p, "" if i == 1 else "  " if i == 3 else y, s) for i, (p, y, s) in enumerate(rows)]


def _case_variants(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [(p, "Yes" if (y == "yes" and i % 2) else y, s) for i, (p, y, s) in enumerate(rows)]


def _latin1(root: Path) -> list[str]:
    rows = [(p.replace("/no/", "/naïve/"), y, s) for p, y, s in _images(root, ("naïve", "yes"))]
    return _write(root, _csv_text(rows), encoding="cp1252")


def _three_classes(root: Path) -> list[str]:
    return _write(root, _csv_text(_images(root, ("a", "b", "c"))), positive_class="b")


def _rare_class(root: Path) -> list[str]:
    rows = [(p, y, s) for p, y, s in _images(root, ("common", "rare")) if not p.startswith("img/rare/") or
            p.endswith("/0.png")]
    return _write(root, _csv_text([(p, y) for p, y, _ in rows], header=("path", "label")), split_column=None)


def _bom(root: Path) -> list[str]:
    return _write(root, "\ufeff" + _csv_text(_images(root)))


def _crlf(root: Path) -> list[str]:
    return _write(root, _csv_text(_images(root), end="\r\n"))


def _quoted(root: Path) -> list[str]:
    rows = [(f'"{p}"', f'"{y}"', s) for p, y, s in _images(root)]
    return _write(root, _csv_text(rows, header=('"path"', '"label"', "split")))


def _semicolons(root: Path) -> list[str]:
    return _write(root, _csv_text(_images(root), sep=";"))


def _missing_column(root: Path) -> list[str]:
    return _write(root, _csv_text(_images(root)), label_column="diagnosis")


def _missing_file(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [*rows, ("img/no/gone.png", "no", "train")]


def _duplicate_row(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [*rows, rows[0]]


def _blank_patients(root: Path) -> list[str]:
    rows = [(p, y, s, "" if i % 5 == 0 else f"P{i}") for i, (p, y, s) in enumerate(_images(root))]
    return _write(root, _csv_text(rows, header=("path", "label", "split", "patient_id")))


def _unknown_split(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [(p, y, "tst" if i == 4 else s) for i, (p, y, s) in enumerate(rows)]


# ---------------------------------------------------------------- predict: no training-only hints


def _predict_corrupt(root: Path) -> list[str]:
    """Train a 1-epoch run on 32 px images, then predict a folder with one corrupt file."""
    from medtl.cli import app

    for c, name in enumerate(("no", "yes")):
        (root / "img" / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (32, 32), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "img" / name / f"{i}.png")
    (root / "train.yaml").write_text(
        "name: tiny\ndata: {source: folder, root: img, image_size: 32, split: {method: holdout}}\n"
        "model: {backbone: tf_efficientnet_lite0, weights: none}\ntrain: {epochs: 1, batch_size: 8, device: cpu}\n")
    result = CliRunner().invoke(app, ["train", "train.yaml", "--out", "run", "--quiet"])
    assert result.exit_code == 0, result.output
    (root / "new").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "new" / "ok.png")
    (root / "new" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return ["predict", "run", "new", "--out", "pred.csv"]


def _predicted_without_setting_hints(root: Path) -> int:
    with (root / "pred.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if any("max_bad_fraction" in r["error"] for r in rows):
        return -1
    return sum(not r["error"] for r in rows)


CASES = [
    Case("csv-empty-label", "#22.1", "CSV rows with an empty or blank label",
         "exit 2 naming the CSV and the lines (no class `''`)", _rows_changed(_blank_labels), 2,
         "2 rows have an empty 'label' label (lines 3, 5)"),
    Case("csv-empty-label-dropped", "#22.1", "CSV rows with an empty label and `data.drop_unlabelled: true`",
         "the rows are left out and counted in the log; the rest is used", _rows_changed(_blank_labels,
         drop_unlabelled=True), 0, "", _n_samples, 2 * N_PER_CLASS - 2),
    Case("positive-class-multiclass", "#22.2", "`data.positive_class` on a 3-class dataset",
         "exit 2 naming data.positive_class, the classes and what to do", _three_classes, 2,
         "data.positive_class 'b' applies to two-class tasks"),
    Case("csv-label-case", "#22.3", "labels that differ only by case (`Yes` / `yes`)",
         "exit 2 naming both spellings and their lines (whitespace around labels is stripped)",
         _rows_changed(_case_variants), 2, "'yes' (line 12) / 'Yes' (line 13)"),
    Case("class-named-in-fold-error", "#22.3", "a class with a single image and 5-fold splitting",
         "exit 2 naming the class by name ('rare'), not by index", _rare_class, 2, "'rare'"),
    Case("csv-latin1", "#22.10", "a CSV saved as cp1252 (Latin-1) with a non-ASCII class and paths",
         "read as cp1252 with a warning naming the encoding; every row used", _latin1, 0, "", _n_samples,
         2 * N_PER_CLASS),
    Case("predict-no-setting-hint", "#22.13", "`medtl predict` on a folder with a corrupt PNG",
         "the bad file's row carries the reason, without the training-only `data.max_bad_fraction` hint",
         _predict_corrupt, 0, "could not be read", _predicted_without_setting_hints, 1, slow=True),
    Case("csv-bom", "held", "CSV with a UTF-8 byte-order mark", "read as usual", _bom, 0, "", _n_samples,
         2 * N_PER_CLASS),
    Case("csv-crlf", "held", "CSV with CRLF line ends", "read as usual", _crlf, 0, "", _n_samples, 2 * N_PER_CLASS),
    Case("csv-quoted", "held", "CSV with quoted header and fields", "read as usual", _quoted, 0, "", _n_samples,
         2 * N_PER_CLASS),
    Case("csv-semicolon", "held", "CSV with `;` as delimiter",
         "exit 2: the column is not found and the header read (`path;label;split`) is shown", _semicolons, 2,
         "the header is ['path;label;split']"),
    Case("csv-missing-column", "held", "`data.label_column` names a column the CSV lacks",
         "exit 2 naming the column, the key and the header", _missing_column, 2,
         "column 'diagnosis' (data.label_column) not found"),
    Case("csv-missing-file", "held", "a CSV row naming a file that does not exist",
         "exit 2 listing the line and path", _rows_changed(_missing_file), 2, "rows name files that do not exist"),
    Case("csv-duplicate-row", "held", "the same row twice", "exit 2: sample ids occur more than once",
         _rows_changed(_duplicate_row), 2, "sample ids occur more than once"),
    Case("csv-blank-patient", "held", "some empty `patient_id` cells",
         "a warning; those images are grouped on their own; every row used", _blank_patients, 0, "", _n_samples,
         2 * N_PER_CLASS),
    Case("csv-unknown-split", "held", "a split value `tst`", "exit 2 naming the line, value and column",
         _rows_changed(_unknown_split), 2, "split 'tst' in column 'split' is not one of train/val/test"),
]
