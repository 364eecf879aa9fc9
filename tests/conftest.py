"""Shared fixtures: where the real datasets are, and skips when they are absent."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medtl.config import data_root


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared datasets folder; tests that need it are skipped when it is missing."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared datasets not found at {root} (set MEDTL_DATA)")
    return root


@pytest.fixture(scope="session")
def brain_mri(datasets: Path) -> Path:
    folder = datasets / "brain_tumor_mri"
    if not (folder / "yes").is_dir():
        pytest.skip(f"brain MRI not found at {folder}")
    return folder


@pytest.fixture(autouse=True)
def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
