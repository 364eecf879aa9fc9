"""ROC and precision-recall curves with bootstrap confidence bands, resampling groups (patients).

The point curves equal scikit-learn's (``roc_curve(..., drop_intermediate=False)``,
``precision_recall_curve``; their areas ``roc_auc_score`` and ``average_precision_score``, ties
included). The bands are pointwise percentile intervals over grouped bootstrap resamples:

* ROC: vertical averaging, the TPR of each resample read at a fixed grid of FPR values (linear
  between the curve's points, so tied scores give the usual diagonal segment);
* PR: the interpolated precision (the highest precision at a recall at least ``r``) read at a
  fixed grid of recall values.

A resample that holds a single class has no curve; it is skipped (and counted). When fewer than
half the resamples define a curve, the band is nan and a warning is logged, as in
:func:`medtl.evaluate.metrics.bootstrap_ci`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medtl.errors import ConfigError, DataError
from medtl.evaluate.inputs import as_labels, as_probs, as_scores, factorize
from medtl.evaluate.metrics import bootstrap_ci, compute_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveBand:
    """A ROC or PR curve, its area and a bootstrap band.

    Attributes:
        kind: ``roc`` or ``pr``.
        x: Curve points: FPR (ROC) or recall (PR), in order of decreasing threshold.
        y: Curve points: TPR (ROC) or precision (PR).
        grid: Where the band is evaluated (FPR or recall values in [0, 1]).
        y_grid: The point curve on ``grid`` (TPR, or interpolated precision).
        lo: Lower band on ``grid`` (nan when the bootstrap is off or undefined).
        hi: Upper band on ``grid``.
        area: ROC AUC or average precision.
        area_ci: Percentile interval of the area.
        prevalence: Fraction of positives (the PR curve of a random classifier).
        n_boot: Resamples drawn.
        n_valid: Resamples holding both classes (the ones the band is made of).
    """

    kind: str
    x: np.ndarray
    y: np.ndarray
    grid: np.ndarray
    y_grid: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    area: float
    area_ci: tuple[float, float]
    prevalence: float
    n_boot: int
    n_valid: int


def _cumulative(order: np.ndarray, y: np.ndarray, weights: np.ndarray, n_unique: int) -> tuple[np.ndarray, ...]:
    """Weighted true / false positive counts of the cuts ``score >= u[k]`` (u descending)."""
    tp = np.cumsum(np.bincount(order, weights * y, n_unique))
    fp = np.cumsum(np.bincount(order, weights * (1.0 - y), n_unique))
    return tp, fp


def _roc_points(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr) with the origin prepended, and the trapezoidal AUC."""
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    tpr = np.concatenate([[0.0], tp / tp[-1]])
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _pr_points(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision) per cut and the average precision ``sum (R_k - R_k-1) P_k``."""
    recall = tp / tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return recall, precision, ap


def _read_roc(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR at each grid FPR: the top of a vertical step, linear along a sloped segment."""
    idx = np.searchsorted(fpr, grid, side="right") - 1
    nxt = np.minimum(idx + 1, fpr.size - 1)
    span = fpr[nxt] - fpr[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(span > 0, (grid - fpr[idx]) / span, 0.0)
    return tpr[idx] + frac * (tpr[nxt] - tpr[idx])


def _read_pr(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Interpolated precision (max precision at recall >= r) at each grid recall."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.minimum(np.searchsorted(recall, grid, side="left"), recall.size - 1)
    return envelope[idx]


def _curve(kind: str, tp: np.ndarray, fp: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, float,
                                                                                   np.ndarray]:
    """Points, area and the curve read on ``grid``."""
    if kind == "roc":
        x, y, area = _roc_points(tp, fp)
        return x, y, area, _read_roc(x, y, grid)
    x, y, area = _pr_points(tp, fp)
    return x, y, area, _read_pr(x, y, grid)


def _percentiles(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile interval over the rows of ``values``."""
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def _validate(y_true: ArrayLike, scores: ArrayLike, n_boot: int, level: float,
              n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated binary labels and scores; both classes must be present."""
    if n_boot < 0 or not 0.0 < level < 1.0 or n_grid < 2:
        raise ConfigError(f"curve bands need n_boot >= 0, 0 < level < 1 and n_grid >= 2, got n_boot={n_boot}, "
                          f"level={level}, n_grid={n_grid}")
    y = as_labels(y_true, 2)
    s = as_scores(scores, y.size, "scores")
    if y.min() == y.max():
        raise DataError(f"a ROC / PR curve needs both classes, but all {y.size} labels are {int(y[0])}")
    return y, s


def _band(kind: str, y_true: ArrayLike, scores: ArrayLike, groups: ArrayLike | Sequence[Hashable] | None,
          n_boot: int, seed: int, level: float, n_grid: int) -> CurveBand:
    """Shared body of :func:`roc_band` and :func:`pr_band`."""
    y, s = _validate(y_true, scores, n_boot, level, n_grid)
    uniq, inv_score = np.unique(s, return_inverse=True)
    order = uniq.size - 1 - inv_score
    grid = np.linspace(0.0, 1.0, n_grid)
    yf = y.astype(float)
    tp, fp = _cumulative(order, yf, np.ones(y.size), uniq.size)
    x, yy, area, y_grid = _curve(kind, tp, fp, grid)
    inv, n_groups = factorize(groups if groups is not None else np.arange(y.size), y.size)
    rng = np.random.default_rng(seed)
    rows, areas = [], []
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[inv].astype(float)
        tp_b, fp_b = _cumulative(order, yf, weights, uniq.size)
        if tp_b[-1] == 0 or fp_b[-1] == 0:
            continue
        _, _, area_b, read = _curve(kind, tp_b, fp_b, grid)
        rows.append(read)
        areas.append(area_b)
    lo, hi, area_ci = _summarise(kind, rows, areas, n_boot, n_grid, level)
    return CurveBand(kind, x, yy, grid, y_grid, lo, hi, area, area_ci, float(y.mean()), n_boot, len(rows))


def _summarise(kind: str, rows: list[np.ndarray], areas: list[float], n_boot: int, n_grid: int,
               level: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Band and area interval, or nan when fewer than half the resamples are defined."""
    if n_boot and 2 * len(rows) < n_boot:
        logger.warning("%s band: only %d of %d bootstrap resamples hold both classes; band set to nan",
                       kind.upper(), len(rows), n_boot)
    if not rows or 2 * len(rows) < n_boot:
        nan = np.full(n_grid, np.nan)
        return nan, nan.copy(), (math.nan, math.nan)
    if len(rows) < n_boot:
        logger.info("%s band: %d single-class resamples skipped", kind.upper(), n_boot - len(rows))
    lo, hi = _percentiles(np.stack(rows), level)
    a_lo, a_hi = _percentiles(np.asarray(areas), level)
    return lo, hi, (float(a_lo), float(a_hi))


def roc_band(y_true: ArrayLike, scores: ArrayLike, groups: ArrayLike | Sequence[Hashable] | None = None,
             n_boot: int = 1000, seed: int = 0, level: float = 0.95, n_grid: int = 101) -> CurveBand:
    """ROC curve, AUC and a grouped-bootstrap band.

    Args:
        y_true: Labels in {0, 1} (1 = positive).
        scores: Positive-class scores.
        groups: One group (patient) id per sample; resamples draw groups with replacement and
            take all their samples. None resamples samples (say so when you report it).
        n_boot: Resamples; 0 gives no band (nan).
        seed: Seed of the resampling.
        level: Coverage of the band and of the AUC interval.
        n_grid: Number of FPR grid points in [0, 1].

    Returns:
        The :class:`CurveBand` (``x`` = FPR, ``y`` = TPR, ``area`` = AUC).

    Raises:
        DataError: Malformed input or a single class.
        ConfigError: Invalid ``n_boot``, ``level`` or ``n_grid``.
    """
    return _band("roc", y_true, scores, groups, n_boot, seed, level, n_grid)


def pr_band(y_true: ArrayLike, scores: ArrayLike, groups: ArrayLike | Sequence[Hashable] | None = None,
            n_boot: int = 1000, seed: int = 0, level: float = 0.95, n_grid: int = 101) -> CurveBand:
    """Precision-recall curve, average precision and a grouped-bootstrap band.

    Args:
        y_true: Labels in {0, 1} (1 = positive).
        scores: Positive-class scores.
        groups: One group (patient) id per sample (see :func:`roc_band`).
        n_boot: Resamples; 0 gives no band (nan).
        seed: Seed of the resampling.
        level: Coverage.
        n_grid: Number of recall grid points in [0, 1].

    Returns:
        The :class:`CurveBand` (``x`` = recall, ``y`` = precision, ``area`` = average precision).
    """
    return _band("pr", y_true, scores, groups, n_boot, seed, level, n_grid)


def one_vs_rest_bands(y_true: ArrayLike, probs: ArrayLike, class_names: list[str],
                      groups: ArrayLike | Sequence[Hashable] | None = None, kind: str = "roc",
                      n_boot: int = 1000, seed: int = 0) -> dict[str, CurveBand]:
    """One-vs-rest curve of every class present in ``y_true`` (and absent from no prediction).

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Probabilities (n, K).
        class_names: Name per class.
        groups: Group id per sample.
        kind: ``roc`` or ``pr``.
        n_boot: Resamples.
        seed: Seed.

    Returns:
        ``{class_name: CurveBand}``; classes absent from ``y_true`` (or the only class) are left out.
    """
    if kind not in ("roc", "pr"):
        raise ConfigError(f"curve kind must be 'roc' or 'pr', got {kind!r}")
    p = as_probs(probs)
    y = as_labels(y_true, p.shape[1], p.shape[0])
    out = {}
    for c, name in enumerate(class_names):
        hit = (y == c).astype(int)
        if 0 < hit.sum() < hit.size:
            out[name] = _band(kind, hit, p[:, c], groups, n_boot, seed + c, 0.95, 101)
    return out


def per_class_auc(y_true: ArrayLike, probs: ArrayLike, class_names: list[str],
                  groups: ArrayLike | Sequence[Hashable] | None = None, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, dict]:
    """One-vs-rest AUC of each class and the macro AUC, with grouped-bootstrap 95% intervals.

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Probabilities (n, K).
        class_names: Name per class (length K).
        groups: Group id per sample (None: each sample its own group).
        n_boot: Resamples.
        seed: Seed.

    Returns:
        ``{"per_class": {name: {"value", "ci95"}}, "macro": {"value", "ci95"}}``; classes absent
        from ``y_true`` are left out of both.
    """
    p = as_probs(probs)
    if len(class_names) != p.shape[1]:
        raise DataError(f"{len(class_names)} class names for {p.shape[1]} probability columns")
    y = as_labels(y_true, p.shape[1], p.shape[0])
    g = groups if groups is not None else np.arange(y.size)
    bands = one_vs_rest_bands(y, p, class_names, g, "roc", n_boot, seed)
    per_class = {name: {"value": b.area, "ci95": list(b.area_ci)} for name, b in bands.items()}
    macro_ci = bootstrap_ci(y, p, g, n_boot=n_boot, seed=seed)["auc"]
    macro = {"value": compute_metrics(y, p)["auc"], "ci95": list(macro_ci)}
    return {"per_class": per_class, "macro": macro}
