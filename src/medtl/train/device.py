"""One place that turns ``train.device`` into the torch device a run uses, never falling back silently;
and the provenance of the environment a run used (:func:`environment`)."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from medtl.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
"""The values of ``train.device``."""

_announced: set[str] = set()


def resolve_device(requested: str) -> str:
    """The torch device string (``"cuda"`` or ``"cpu"``) for a ``train.device`` value.

    ``auto`` picks CUDA when a device is present, else the CPU, and says which at INFO level once
    per process. An explicit request is honoured or refused; it never quietly becomes another device.

    Args:
        requested: ``auto``, ``cpu`` or ``cuda`` (``train.device``).

    Returns:
        ``"cuda"`` or ``"cpu"``.

    Raises:
        ConfigError: ``requested`` is not a known value, or ``cuda`` is requested and no CUDA device is available.
    """
    if requested not in DEVICES:
        raise ConfigError(f"train.device '{requested}' is not one of {', '.join(DEVICES)}")
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (torch.cuda.is_available() "
                          "is False); set train.device: auto or cpu, or install a CUDA build of torch")
    device = "cuda" if requested == "cuda" or (requested == "auto" and available) else "cpu"
    if requested == "auto" and device not in _announced:
        _announced.add(device)
        log.info("train.device auto: using %s%s", device,
                 "" if device == "cuda" else " (no CUDA device found)")
    return device


def environment(device: str) -> dict[str, Any]:
    """Provenance of the software and hardware a run used (``metrics.json`` and ``model.json``).

    Never fails: a fact that cannot be found (no git checkout, medtl not installed as a package) is None.

    Args:
        device: The torch device string the run used (:func:`resolve_device`).
    """
    import lightning
    import timm

    commit, dirty = _git_state()
    return {"medtl": _medtl_version(), "git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "lightning": lightning.__version__,
            "device": device, "device_name": _device_name(device), "torch_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def _medtl_version() -> str | None:
    try:
        return importlib.metadata.version("medtl")
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout medtl runs from; (None, None) outside a git checkout or without git."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, dirty
