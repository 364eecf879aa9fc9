"""The decision rule of a run, fixed on validation predictions only: temperature and threshold.

:func:`needs_validation` is checked before any training (a rule that needs validation images on a
split without them fails at once, not after every fold has trained); :func:`choose_operating_point`
is a pure function of the pooled validation predictions; :func:`calibrate` applies the fitted
temperature to any probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medtl.config import EvaluateConfig
from medtl.errors import MedtlError
from medtl.evaluate.calibration import apply_temperature, fit_temperature
from medtl.evaluate.threshold import operating_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatingChoice:
    """The decision rule fixed on validation data: threshold (binary), how it was chosen, temperature."""

    threshold: float
    rule: dict
    temperature: float | None = None


def _thresholded(ev: EvaluateConfig, positive_index: int | None, n_classes: int) -> bool:
    """Whether the threshold is chosen from data (binary task, a rule other than ``fixed``)."""
    return ev.threshold_rule != "fixed" and positive_index is not None and n_classes == 2


def needs_validation(ev: EvaluateConfig, positive_index: int | None, n_classes: int) -> list[str]:
    """The settings of ``ev`` that need validation predictions (empty when none does)."""
    keys = ["evaluate.temperature_scaling"] if ev.temperature_scaling else []
    if _thresholded(ev, positive_index, n_classes):
        keys.append(f"evaluate.threshold_rule '{ev.threshold_rule}'")
    return keys


def check_validation(ev: EvaluateConfig, positive_index: int | None, n_classes: int, n_val: list[int]) -> None:
    """Refuse, before training, a decision rule that needs validation images when a fold has none.

    Raises:
        MedtlError: Naming the setting and ``data.split.val_fraction``.
    """
    keys = needs_validation(ev, positive_index, n_classes)
    empty = [i for i, n in enumerate(n_val) if n == 0]
    if keys and empty:
        raise MedtlError(f"{' and '.join(keys)} needs validation data, but fold(s) {empty} have no validation "
                         "images: set data.split.val_fraction > 0 (or give the CSV a 'val' split), or use "
                         "evaluate.threshold_rule: fixed without temperature scaling")


def choose_operating_point(ev: EvaluateConfig, labels: np.ndarray, probs: np.ndarray, positive_index: int | None,
                           n_classes: int) -> OperatingChoice:
    """Temperature (when asked) and threshold from the pooled validation ``labels`` / ``probs``.

    The threshold is chosen on the temperature-scaled probabilities, as they will be applied.
    """
    temperature = None
    if ev.temperature_scaling:
        if len(labels) == 0:
            raise MedtlError("evaluate.temperature_scaling needs validation data (data.split.val_fraction > 0)")
        temperature = fit_temperature(probs, labels, kind="probs")
        probs = apply_temperature(probs, temperature)
        log.info("temperature scaling on %d validation predictions: T = %.3f", len(labels), temperature)
    if not _thresholded(ev, positive_index, n_classes):
        return OperatingChoice(ev.threshold, {"rule": "fixed", "threshold": ev.threshold}, temperature)
    if len(labels) == 0:
        raise MedtlError(f"evaluate.threshold_rule '{ev.threshold_rule}' needs validation data "
                         "(data.split.val_fraction > 0)")
    op = operating_point(labels == positive_index, probs[:, positive_index], ev.threshold_rule, ev.threshold_target)
    log.info("operating point from %d validation predictions: %s", len(labels), op.describe())
    return OperatingChoice(op.threshold, op.to_dict(), temperature)


def calibrate(probs: np.ndarray, choice: OperatingChoice) -> np.ndarray:
    """``probs`` with the choice's temperature applied (unchanged without one, or when empty)."""
    if choice.temperature is None or len(probs) == 0:
        return probs
    return apply_temperature(probs, choice.temperature)
