"""One place that turns ``train.device`` into the torch device a run uses, never falling back silently."""

from __future__ import annotations

import logging

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
