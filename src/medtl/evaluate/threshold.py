"""Operating points of a binary classifier, chosen on validation data by a named rule.

A threshold chosen on the test split makes the test metrics optimistic, so every rule here is
meant to be fitted on validation predictions only; the chosen threshold then travels in the model
artifact (``model.json``) and is applied unchanged to the test split and to new images.

Rules (a case is predicted positive iff ``prob_pos >= threshold``):

* ``fixed``: ``target`` if given, else 0.5. Needs no data.
* ``youden``: maximises Youden's J = sensitivity + specificity - 1; ties go to the higher
  sensitivity (lower threshold).
* ``sensitivity``: the highest threshold whose validation sensitivity is at least ``target``
  (so the best specificity among those reaching the target).
* ``specificity``: the lowest threshold whose validation specificity is at least ``target``
  (so the best sensitivity among those reaching the target).

All validation thresholds between two adjacent distinct scores classify the validation data
the same way; the rules return the midpoint of that interval rather than a validation score
itself, so a test score equal to a validation score is not decided by an accident of ties.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from medtl.errors import ConfigError, DataError
from medtl.evaluate.inputs import as_labels, as_scores

logger = logging.getLogger(__name__)

Rule = Literal["fixed", "youden", "sensitivity", "specificity"]
RULES: tuple[str, ...] = get_args(Rule)
"""Names accepted by :func:`choose_threshold`."""

_EPS = 1e-12


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen threshold and what it achieved on the data it was chosen on.

    Attributes:
        rule: The rule's name (one of :data:`RULES`).
        target: The rule's target (sensitivity or specificity), the fixed value, or None.
        threshold: Predicted positive iff ``prob_pos >= threshold``.
        sensitivity: Sensitivity at ``threshold`` on the fitting data (nan without positives).
        specificity: Specificity at ``threshold`` on the fitting data (nan without negatives).
        n_positive: Positive cases in the fitting data.
        n_negative: Negative cases in the fitting data.
    """

    rule: str
    target: float | None
    threshold: float
    sensitivity: float
    specificity: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict:
        """JSON-safe dict (nan written as None), e.g. for ``model.json``'s ``threshold_rule``."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``sensitivity >= 0.95 -> threshold 0.231``."""
        return f"{describe_rule(self.rule, self.target)} -> threshold {self.threshold:.4g}"


def describe_rule(rule: str, target: float | None) -> str:
    """Human-readable name of a rule, e.g. ``Youden's J`` or ``sensitivity >= 0.95``."""
    if rule == "youden":
        return "Youden's J"
    if rule == "fixed":
        return f"fixed {0.5 if target is None else target:g}"
    return f"{rule} >= {target:g}" if target is not None else rule


def _check_rule(rule: str, target: float | None) -> None:
    """Raise :class:`ConfigError` on an unknown rule or a missing / out-of-range target."""
    if rule not in RULES:
        hint = difflib.get_close_matches(str(rule), RULES, n=1)
        raise ConfigError(f"unknown threshold rule '{rule}'." + (f" Did you mean '{hint[0]}'?" if hint else "")
                          + f" Valid: {', '.join(RULES)}")
    if rule in ("sensitivity", "specificity"):
        if target is None:
            raise ConfigError(f"threshold rule '{rule}' needs a target, e.g. {rule} >= 0.95 (target=0.95)")
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"threshold rule '{rule}': target must be in (0, 1], got {target}")
    if rule == "fixed" and target is not None and not math.isfinite(target):
        raise ConfigError(f"threshold rule 'fixed': the threshold must be finite, got {target}")


def _cut_table(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (descending) and sensitivity / specificity of the cut ``score >= u[k]``."""
    uniq, inv = np.unique(scores, return_inverse=True)
    order = uniq.size - 1 - inv  # index into descending order
    pos = np.bincount(order[y == 1], minlength=uniq.size)
    neg = np.bincount(order[y == 0], minlength=uniq.size)
    sens = np.cumsum(pos) / max(pos.sum(), 1)
    spec = 1.0 - np.cumsum(neg) / max(neg.sum(), 1)
    return uniq[::-1], sens, spec


def _between(desc: np.ndarray, k: int) -> float:
    """Midpoint between the k-th distinct score (descending) and the next lower one."""
    if k < 0:
        return float(np.nextafter(desc[0], np.inf))
    if k + 1 >= desc.size:
        return float(desc[k])
    mid = 0.5 * (float(desc[k]) + float(desc[k + 1]))
    return mid if mid > desc[k + 1] else float(desc[k])


def _require_classes(y: np.ndarray, rule: str) -> None:
    """Raise :class:`DataError` when ``rule`` cannot be computed from the classes present."""
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    needs_pos = rule in ("youden", "sensitivity")
    needs_neg = rule in ("youden", "specificity")
    if (needs_pos and n_pos == 0) or (needs_neg and n_neg == 0):
        needed = "positive and negative" if rule == "youden" else "positive" if needs_pos else "negative"
        raise DataError(
            f"threshold rule '{rule}' needs {needed} cases in the validation data, got {n_pos} positive and "
            f"{n_neg} negative; use rule 'fixed' or a larger validation split (data.split.val_fraction)")


def choose_threshold(y_true: ArrayLike, prob_pos: ArrayLike, rule: Rule = "youden",
                     target: float | None = None) -> float:
    """Decision threshold on validation scores by a named rule.

    Args:
        y_true: Validation labels in {0, 1} (1 = positive class).
        prob_pos: Validation scores of the positive class.
        rule: ``fixed``, ``youden``, ``sensitivity`` or ``specificity`` (see the module docstring).
        target: Minimum sensitivity / specificity for those rules, in (0, 1]; the threshold itself
            for ``fixed`` (default 0.5); ignored by ``youden``.

    Returns:
        The threshold: predicted positive iff ``prob_pos >= threshold``.

    Raises:
        ConfigError: Unknown rule (with a did-you-mean hint), missing or out-of-range target.
        DataError: Malformed input, or the validation data lack a class the rule needs.
    """
    _check_rule(rule, target)
    if rule == "fixed":
        return 0.5 if target is None else float(target)
    y = as_labels(y_true, 2)
    scores = as_scores(prob_pos, y.size, "prob_pos")
    _require_classes(y, rule)
    desc, sens, spec = _cut_table(y, scores)
    if rule == "youden":
        j = sens + spec - 1.0
        k = int(np.flatnonzero(j >= j.max() - _EPS)[-1])
    elif rule == "sensitivity":
        k = int(np.flatnonzero(sens >= target - _EPS)[0])
    else:
        ok = np.flatnonzero(spec >= target - _EPS)
        k = int(ok[-1]) if ok.size else -1
        if k < 0:
            logger.warning("no validation threshold reaches specificity >= %g (ties at the top score); predicting "
                           "no case positive (sensitivity 0)", target)
    return _between(desc, k)


def operating_point(y_true: ArrayLike, prob_pos: ArrayLike, rule: Rule = "youden",
                    target: float | None = None) -> OperatingPoint:
    """Choose a threshold with :func:`choose_threshold` and record what it achieves on the same data.

    Args:
        y_true: Validation labels in {0, 1}.
        prob_pos: Validation scores of the positive class.
        rule: Rule name (see :data:`RULES`).
        target: The rule's target.

    Returns:
        The :class:`OperatingPoint`; its :meth:`~OperatingPoint.to_dict` is what ``model.json`` stores.
    """
    threshold = choose_threshold(y_true, prob_pos, rule, target)
    if rule == "fixed" and np.asarray(y_true).size == 0:
        return OperatingPoint(rule, None if target is None else float(target), threshold, math.nan, math.nan, 0, 0)
    y = as_labels(y_true, 2)
    pred = as_scores(prob_pos, y.size, "prob_pos") >= threshold
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    sens = float(pred[y == 1].mean()) if n_pos else math.nan
    spec = float((~pred[y == 0]).mean()) if n_neg else math.nan
    return OperatingPoint(rule, None if target is None else float(target), threshold, sens, spec, n_pos, n_neg)
