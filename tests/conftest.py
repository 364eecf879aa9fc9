"""Shared fixtures: where the real datasets are, and skips when they are absent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite never writes into the user's ``~/.cache/medtl``: one temporary cache for the session.

    The decoded-image cache then also shares decoded images between tests (as between study cells).
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDTL_CACHE", str(tmp_path_factory.mktemp("medtl-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, busy CPU two threads spin-wait and run ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
