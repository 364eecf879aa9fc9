"""Corpus cases: ``medtl predict`` on folders without usable images and with hidden files.

Each case copies one tiny trained run (trained once per session, 1 epoch, 32 px), hence ``slow``.
"""

from __future__ import annotations

from pathlib import Path

from corpus.case import Case
from corpus.inputs import csv_rows, first_image, image_folder, tiny_run


def _empty(root: Path) -> list[str]:
    tiny_run(root)
    (root / "new").mkdir()
    (root / "new" / "readme.txt").write_text("images follow\n")
    return ["predict", "run", "new", "--out", "preds.csv"]


def _unreadable(root: Path) -> list[str]:
    tiny_run(root)
    (root / "new").mkdir()
    (root / "new" / "a.png").write_text("not an image\n")
    (root / "new" / "b.jpg").write_bytes(b"")
    return ["predict", "run", "new", "--out", "preds.csv"]


def _hidden(root: Path) -> list[str]:
    tiny_run(root)
    folder = image_folder(root, "new")
    image = first_image(folder)
    (folder / "yes" / f"._{image.name}").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X" + b"\0" * 64)
    (folder / "yes" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 64)
    (folder / "no" / ".cache").mkdir()
    (folder / "no" / ".cache" / image.name).write_bytes(image.read_bytes())
    return ["predict", "run", "new", "--out", "preds.csv"]


def _predicted_without_errors(root: Path) -> int:
    """Rows of preds.csv, or -1 when a row carries an error or names a hidden file."""
    text = (root / "preds.csv").read_text()
    if "/." in text or "cannot decode" in text:
        return -1
    return csv_rows(root / "preds.csv")


CASES = [
    Case("predict-no-image-files", "#22.11", "`predict RUN FOLDER` on a folder holding only a text file",
         "exit 2 naming the folder and what it holds; no CSV", _empty, 2, "no image files to predict in new",
         lambda root: int((root / "preds.csv").exists()), 0, slow=True),
    Case("predict-no-readable-images", "#22.11", "`predict RUN FOLDER` where no image decodes",
         "exit 2: none of the 2 image files could be decoded (first reason given)", _unreadable, 2,
         "none of the 2 image files could be decoded", lambda root: int((root / "preds.csv").exists()), 0,
         slow=True),
    Case("predict-hidden-files", "#22.11", "`predict` on a folder with `._x.jpg`, `.DS_Store` and `.cache/`",
         "hidden entries skipped exactly as `train` skips them; the 12 images predicted", _hidden, 0,
         "12 rows written", _predicted_without_errors, 12, slow=True),
]
