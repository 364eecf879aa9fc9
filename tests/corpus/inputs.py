"""Inputs shared by corpus cases: a small folder dataset of real brain MRI images, a tiny config, a tiny run."""

from __future__ import annotations

import csv
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from medtl.config import data_root

N_PER_CLASS = 6
"""Good images per class of :func:`image_folder` (enough for ``audit``'s default 5 folds)."""


def brain_images() -> Path:
    """The real brain MRI folder under ``$MEDTL_DATA`` (the calling test is skipped when it is absent)."""
    folder = data_root() / "brain_tumor_mri"
    if not (folder / "yes").is_dir():
        pytest.skip(f"brain MRI images not found at {folder} (set MEDTL_DATA)")
    return folder


def image_folder(root: Path, name: str = "images") -> Path:
    """``root/name/{yes,no}/`` with :data:`N_PER_CLASS` real JPEGs each; returns the folder."""
    source = brain_images()
    folder = root / name
    for cls in ("yes", "no"):
        (folder / cls).mkdir(parents=True)
        for path in sorted((source / cls).iterdir())[:N_PER_CLASS]:
            shutil.copy(path, folder / cls / path.name)
    return folder


def first_image(folder: Path) -> Path:
    """The first real image of class ``yes`` in a folder made by :func:`image_folder`."""
    return sorted((folder / "yes").iterdir())[0]


def tiny_config(root: Path, folder: str = "images", **data: object) -> Path:
    """A 1-epoch, 32 px ``small_cnn`` experiment on ``root/folder`` (holdout split) as ``root/tiny.yaml``."""
    cfg = {"name": "tiny",
           "data": {"source": "folder", "root": folder, "image_size": 32,
                    "split": {"method": "holdout", "test_fraction": 0.3, "val_fraction": 0.2}, **data},
           "model": {"backbone": "small_cnn", "weights": "none"}, "transfer": {"strategy": "scratch"},
           "train": {"epochs": 1, "batch_size": 8}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@functools.cache
def _trained_run() -> Path:
    from medtl.config import load_config
    from medtl.experiment import run_experiment

    root = Path(tempfile.mkdtemp(prefix="medtl-corpus-run-"))
    image_folder(root)
    cfg = load_config(tiny_config(root))
    run_experiment(cfg, root / "run", progress=False)
    return root / "run"


def tiny_run(root: Path) -> Path:
    """A finished tiny run copied to ``root/run`` (trained once per test session)."""
    return Path(shutil.copytree(_trained_run(), root / "run"))


def audit_decoded(json_path: Path, unreadable: set[str]) -> int:
    """Images ``medtl audit --json`` decoded, or -1 when its unreadable list is not exactly ``unreadable`` (ids)."""
    if not json_path.is_file():
        return -1
    report = json.loads(json_path.read_text())
    listed = {row["id"] for row in report.get("unreadable", [])}
    return report["images"]["n_decoded"] if listed == unreadable else -1


def csv_rows(path: Path) -> int:
    """Data rows of a CSV file (0 when it does not exist)."""
    if not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)
