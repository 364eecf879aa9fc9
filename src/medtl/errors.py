"""Exception classes of medtl.

Every message names the file or key at fault, what is wrong and what to do about it.
"""

from __future__ import annotations


class MedtlError(Exception):
    """Base class of every error medtl raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code: int = 2


class ConfigError(MedtlError):
    """An experiment configuration is invalid (unknown key, bad value, missing file)."""


class DataError(MedtlError):
    """Input data is unusable (missing files, unknown labels, leaking or degenerate splits)."""


class WeightsError(MedtlError):
    """Pretrained weights cannot be found, downloaded or mapped onto a model."""


class TrainingError(MedtlError):
    """Training diverged or could not proceed (e.g. NaN loss)."""


class RunInterrupted(MedtlError):
    """The user interrupted a run (Ctrl-C); the message says what was kept and how to continue."""

    exit_code = 130
