"""One place that turns ``train.device`` into the torch device a run uses, never falling back silently;
the provenance of the environment a run used (:func:`environment`); and :func:`release_memory`, which
hands freed memory back to the system between folds."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import importlib.metadata
import logging
import os
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
    if device == "cpu" and "busy" not in _announced:
        _announced.add("busy")
        warn_if_cpu_busy()
    return device


def warn_if_cpu_busy() -> str | None:
    """Warn (once per process, from :func:`resolve_device`) when the CPUs are already busy and torch would
    still start one thread per core: the threads of several processes then contend for the same cores.

    Measured on the project's 2-core machine with four training jobs side by side: about 45 s per epoch with
    torch's default 2 threads per process against 11 s with ``OMP_NUM_THREADS=1``. Returns the warning, or
    None when the 1-minute load average is below the number of cores, torch uses one thread, or the system
    has no load average (Windows).
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    if threads <= 1 or load < cores:
        return None
    message = (f"the CPUs are already busy (1-minute load average {load:.1f} on {cores} cores) and torch will use "
               f"{threads} threads: processes that share cores run several times slower. For runs side by side, "
               "start each with OMP_NUM_THREADS=1 (results do not change)")
    log.warning(message)
    return message


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


@functools.cache
def _libc_malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def release_memory() -> bool:
    """Collect garbage, empty the CUDA cache and return freed heap pages to the system (glibc ``malloc_trim``).

    Called between folds. A fold frees hundreds of MB of tensors (activations, optimizer state, the
    checkpoint it serialised); glibc keeps much of that in its heap, so without the trim each fold
    starts higher than the one before and the run's peak RSS grows with the number of folds. Returns
    whether the heap could be trimmed (False where the C library has no ``malloc_trim``).
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
