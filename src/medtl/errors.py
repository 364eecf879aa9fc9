"""Exception classes of medtl.

Every message names the file or key at fault, what is wrong and what to do about it.
"""

from __future__ import annotations


class MedtlError(Exception):
    """Base class of every error medtl raises on purpose."""


class ConfigError(MedtlError):
    """An experiment configuration is invalid (unknown key, bad value, missing file)."""


class DataError(MedtlError):
    """Input data is unusable (missing files, unknown labels, leaking or degenerate splits)."""


class WeightsError(MedtlError):
    """Pretrained weights cannot be found, downloaded or mapped onto a model."""


class TrainingError(MedtlError):
    """Training diverged or could not proceed (e.g. NaN loss)."""
