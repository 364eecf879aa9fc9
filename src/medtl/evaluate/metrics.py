"""Classification metrics, patient-level bootstrap confidence intervals and paired tests.

Every metric function returns the same six keys (:data:`METRIC_KEYS`). Point estimates use
scikit-learn primitives. Undefined values (AUC with a single class, precision with no
predicted positive, ...) are logged as warnings and returned as ``float('nan')``; they never
raise. Malformed input (wrong shapes, labels outside ``0..K-1``, non-finite scores) raises
:class:`~medtl.errors.DataError`; invalid options raise :class:`~medtl.errors.ConfigError`.

Conventions:

* Binary problems (``K == 2``): a case is predicted positive iff
  ``probs[:, positive_index] >= threshold``.
* Multiclass problems: the prediction is the argmax; ``sensitivity``, ``specificity``,
  ``precision``, ``f1`` and ``auc`` are macro averages over the classes *present in*
  ``y_true`` (one-vs-rest for specificity and AUC). A present class that is never predicted
  has precision 0 (scikit-learn's convention).
* The bootstrap resamples groups (patients), not images, and is computed in closed form from
  per-group sufficient statistics, so 1000 resamples of thousands of images take well under a
  second. Its per-resample values equal :func:`compute_metrics` on the explicitly resampled
  data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse, stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medtl.errors import ConfigError, DataError
from medtl.evaluate.inputs import as_labels, as_probs, as_scores, factorize, resolve_positive

logger = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
"""Keys of every metrics dict, in output order."""

_MCNEMAR_EXACT_BELOW = 25
_BOOT_CHUNK_CELLS = 2_000_000


# --------------------------------------------------------------------------- validation


def predict_classes(probs: np.ndarray, positive_index: int | None, threshold: float) -> np.ndarray:
    """Predicted class indices: thresholded for binary problems, argmax otherwise."""
    pos = resolve_positive(positive_index, probs.shape[1])
    if pos is None:
        return np.argmax(probs, axis=1)
    return np.where(probs[:, pos] >= threshold, pos, 1 - pos)


# --------------------------------------------------------------------------- point metrics


def _binary_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of binary labels, nan (with a warning) when only one class is present."""
    if np.unique(y).size < 2:
        logger.warning("AUC is undefined: y_true holds a single class (%d samples); returning nan.", y.size)
        return math.nan
    return float(roc_auc_score(y, scores))


def _warn_binary_nans(out: dict[str, float]) -> None:
    """Log why binary metrics came out nan."""
    reasons = {
        "sensitivity": "no positive case in y_true",
        "specificity": "no negative case in y_true",
        "precision": "no case predicted positive",
        "f1": "no positive case and no positive prediction",
    }
    for key, why in reasons.items():
        if math.isnan(out[key]):
            logger.warning("%s is undefined (%s); returning nan.", key, why)


def binary_metrics(y_true: ArrayLike, prob_pos: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Threshold and ranking metrics of a binary classifier.

    Args:
        y_true: Labels in {0, 1} (or booleans); 1 is the positive class.
        prob_pos: Score of the positive class for each sample.
        threshold: A sample is predicted positive iff ``prob_pos >= threshold``.

    Returns:
        Dict with keys :data:`METRIC_KEYS`. ``sensitivity`` is the recall of class 1,
        ``specificity`` the recall of class 0. Undefined values are nan (logged).

    Raises:
        DataError: On malformed input (shapes, labels outside {0, 1}, non-finite scores).
    """
    y = as_labels(y_true, 2)
    scores = as_scores(prob_pos, y.size, "prob_pos")
    pred = (scores >= threshold).astype(int)
    prec, rec, f1, _ = precision_recall_fscore_support(
        y, pred, labels=[0, 1], average=None, zero_division=np.nan
    )
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": float(rec[1]),
        "specificity": float(rec[0]),
        "precision": float(prec[1]),
        "f1": float(f1[1]),
        "auc": _binary_auc(y, scores),
    }
    _warn_binary_nans(out)
    return out


def _macro_specificity(cm: np.ndarray, present: np.ndarray) -> float:
    """Macro one-vs-rest specificity over ``present`` classes of a confusion matrix."""
    total = cm.sum()
    specs = []
    for c in present:
        negatives = total - cm[c, :].sum()
        if negatives > 0:
            false_pos = cm[:, c].sum() - cm[c, c]
            specs.append((negatives - false_pos) / negatives)
    if not specs:
        logger.warning("specificity is undefined: y_true holds a single class; returning nan.")
        return math.nan
    return float(np.mean(specs))


def _macro_auc(y: np.ndarray, probs: np.ndarray, present: np.ndarray) -> float:
    """Macro one-vs-rest AUC over ``present`` classes; nan (logged) if fewer than two."""
    if present.size < 2:
        logger.warning("AUC is undefined: y_true holds a single class (%d samples); returning nan.", y.size)
        return math.nan
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def multiclass_metrics(y_true: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """Macro-averaged metrics of a K-class classifier (prediction = argmax).

    Averages run over the classes present in ``y_true``; absent classes are logged and left
    out (their recall and AUC are undefined). A present class that is never predicted counts
    with precision 0.

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Scores of shape (n, K), K >= 2.

    Returns:
        Dict with keys :data:`METRIC_KEYS`: accuracy, macro recall (``sensitivity``), macro
        one-vs-rest specificity, macro precision, macro F1 and macro one-vs-rest AUC.

    Raises:
        DataError: On malformed input.
    """
    p = as_probs(probs)
    k = p.shape[1]
    y = as_labels(y_true, k, p.shape[0])
    pred = np.argmax(p, axis=1)
    present = np.unique(y)
    if present.size < k:
        absent = sorted(set(range(k)) - set(present.tolist()))
        logger.warning("Classes %s are absent from y_true; macro metrics average over the others.", absent)
    cm = confusion_matrix(y, pred, labels=np.arange(k))
    never = [int(c) for c in present if cm[:, c].sum() == 0]
    if never:
        logger.warning("Classes %s are never predicted; their precision counts as 0.", never)
    prec, rec, f1, _ = precision_recall_fscore_support(
        y, pred, labels=present, average=None, zero_division=0.0
    )
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": float(np.mean(rec)),
        "specificity": _macro_specificity(cm, present),
        "precision": float(np.mean(prec)),
        "f1": float(np.mean(f1)),
        "auc": _macro_auc(y, p, present),
    }


def compute_metrics(
    y_true: ArrayLike, probs: ArrayLike, positive_index: int | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """Metrics of a classifier, binary or multiclass depending on the number of columns.

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Scores of shape (n, K).
        positive_index: Positive class for K == 2 (default 1); ignored for K > 2.
        threshold: Decision threshold on ``probs[:, positive_index]`` (binary only).

    Returns:
        Dict with keys :data:`METRIC_KEYS` (see :func:`binary_metrics`,
        :func:`multiclass_metrics`).

    Raises:
        DataError: On malformed input.
        ConfigError: If ``positive_index`` is not 0 or 1 for a binary problem.
    """
    p = as_probs(probs)
    pos = resolve_positive(positive_index, p.shape[1])
    if pos is None:
        return multiclass_metrics(y_true, p)
    y = as_labels(y_true, 2, p.shape[0])
    return binary_metrics(y == pos, p[:, pos], threshold)


def confusion(
    y_true: ArrayLike, probs: ArrayLike, positive_index: int | None = None, threshold: float = 0.5
) -> list[list[int]]:
    """K x K confusion matrix (rows = true class, columns = predicted, order ``0..K-1``).

    The prediction rule is that of :func:`compute_metrics`.

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Scores of shape (n, K).
        positive_index: Positive class for K == 2 (default 1); ignored for K > 2.
        threshold: Decision threshold (binary only).

    Returns:
        The matrix as nested lists of Python ints.
    """
    p = as_probs(probs)
    y = as_labels(y_true, p.shape[1], p.shape[0])
    pred = predict_classes(p, positive_index, threshold)
    cm = confusion_matrix(y, pred, labels=np.arange(p.shape[1]))
    return [[int(v) for v in row] for row in cm]


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class _GroupStats:
    """Per-group sufficient statistics: every bootstrap metric is a function of these."""

    binary: bool
    n_classes: int  # classes of the confusion matrix (2 for binary problems)
    cells: np.ndarray  # (G, n_classes**2): count of (true, predicted) pairs per group
    auc_tasks: tuple[tuple[Any, Any], ...]  # per one-vs-rest task: (pos, neg) sparse (U, G)


def _auc_task(is_pos: np.ndarray, scores: np.ndarray, inv: np.ndarray, n_groups: int) -> tuple[Any, Any]:
    """Sparse (n_unique_scores, G) counts of positive and negative samples per score and group."""
    uniq, u_idx = np.unique(scores, return_inverse=True)
    shape = (uniq.size, n_groups)

    def counts(mask: np.ndarray) -> Any:
        ones = np.ones(int(mask.sum()))
        return sparse.csr_matrix((ones, (u_idx[mask], inv[mask])), shape=shape)

    return counts(is_pos), counts(~is_pos)


def _group_stats(
    y: np.ndarray,
    probs: np.ndarray,
    inv: np.ndarray,
    n_groups: int,
    positive_index: int | None,
    threshold: float,
) -> _GroupStats:
    """Collect the per-group statistics of a (validated) data set."""
    pos = resolve_positive(positive_index, probs.shape[1])
    pred = predict_classes(probs, positive_index, threshold)
    if pos is not None:
        y_eff, pred_eff, k = (y == pos).astype(int), (pred == pos).astype(int), 2
        tasks = (_auc_task(y_eff == 1, probs[:, pos], inv, n_groups),)
    else:
        y_eff, pred_eff, k = y, pred, probs.shape[1]
        tasks = tuple(_auc_task(y == c, probs[:, c], inv, n_groups) for c in range(k))
    flat = inv * k * k + y_eff * k + pred_eff
    cells = np.bincount(flat, minlength=n_groups * k * k).reshape(n_groups, k * k).astype(float)
    return _GroupStats(binary=pos is not None, n_classes=k, cells=cells, auc_tasks=tasks)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with nan where ``den == 0`` (no runtime warning)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row means of ``values`` over entries where ``mask`` holds; nan for empty rows."""
    return _div(np.where(mask, values, 0.0).sum(axis=1), mask.sum(axis=1))


def _weighted_auc(pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row from (B, U) weights per unique score (ascending order)."""
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    num = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    return _div(num, pos_w.sum(axis=1) * neg_w.sum(axis=1))


def _binary_from_cm(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Threshold metrics from (B, 2, 2) confusion matrices (index 1 = positive)."""
    tn, fp, fn, tp = cm[:, 0, 0], cm[:, 0, 1], cm[:, 1, 0], cm[:, 1, 1]
    return {
        "accuracy": _div(tp + tn, cm.sum(axis=(1, 2))),
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "precision": _div(tp, tp + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }


def _multiclass_from_cm(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Macro threshold metrics over present classes from (B, K, K) confusion matrices."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    row, col = cm.sum(axis=2), cm.sum(axis=1)
    total = row.sum(axis=1, keepdims=True)
    present, negatives = row > 0, total - row
    precision = np.where(col > 0, _div(tp, col), 0.0)
    specificity = _div(negatives - (col - tp), negatives)
    return {
        "accuracy": _div(tp.sum(axis=1), total[:, 0]),
        "sensitivity": _masked_mean(_div(tp, row), present),
        "specificity": _masked_mean(specificity, present & (negatives > 0)),
        "precision": _masked_mean(precision, present),
        "f1": _masked_mean(_div(2 * tp, row + col), present),
    }


def _replicates(stats_: _GroupStats, counts: np.ndarray) -> np.ndarray:
    """Metric values (B, len(METRIC_KEYS)) for group multiplicities ``counts`` (B, G)."""
    k = stats_.n_classes
    cm = (counts @ stats_.cells).reshape(-1, k, k)
    out = _binary_from_cm(cm) if stats_.binary else _multiclass_from_cm(cm)
    aucs = np.stack([_weighted_auc((p @ counts.T).T, (n @ counts.T).T) for p, n in stats_.auc_tasks], axis=1)
    if stats_.binary:
        out["auc"] = aucs[:, 0]
    else:
        present = cm.sum(axis=2) > 0
        macro = _masked_mean(aucs, present)
        out["auc"] = np.where(present.sum(axis=1) >= 2, macro, np.nan)
    return np.stack([out[key] for key in METRIC_KEYS], axis=1)


def _draw_counts(rng: np.random.Generator, n_groups: int, n_draws: int) -> np.ndarray:
    """Multiplicities (n_draws, G) of G groups drawn uniformly with replacement, per resample."""
    draws = rng.integers(0, n_groups, size=(n_draws, n_groups))
    flat = (np.arange(n_draws)[:, None] * n_groups + draws).ravel()
    return np.bincount(flat, minlength=n_draws * n_groups).reshape(n_draws, n_groups).astype(float)


def _bootstrap_values(stats_: _GroupStats, n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """Metric values (n_boot, len(METRIC_KEYS)) over grouped bootstrap resamples."""
    rng = np.random.default_rng(seed)
    widest = max([n_groups] + [p.shape[0] for p, _ in stats_.auc_tasks])
    chunk = max(1, _BOOT_CHUNK_CELLS // widest)
    parts = []
    for start in range(0, n_boot, chunk):
        counts = _draw_counts(rng, n_groups, min(chunk, n_boot - start))
        parts.append(_replicates(stats_, counts))
    return np.concatenate(parts, axis=0)


def _percentile_ci(values: np.ndarray, key: str, level: float) -> tuple[float, float]:
    """Percentile interval of the non-nan ``values``; (nan, nan) if fewer than half are valid."""
    valid = values[~np.isnan(values)]
    if valid.size == 0 or 2 * valid.size < values.size:
        logger.warning(
            "%s: only %d of %d bootstrap resamples are defined; CI set to (nan, nan).",
            key,
            valid.size,
            values.size,
        )
        return (math.nan, math.nan)
    if valid.size < values.size:
        logger.info("%s: %d bootstrap resamples undefined and skipped.", key, values.size - valid.size)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(valid, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def bootstrap_ci(
    y_true: ArrayLike,
    probs: ArrayLike,
    groups: ArrayLike | Sequence[Hashable],
    positive_index: int | None = None,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals, resampling groups (patients), not images.

    Each resample draws as many groups as there are distinct ids, uniformly with replacement,
    and takes all samples of each drawn group (a group drawn twice counts twice). Resamples
    where a metric is undefined are skipped for that metric.

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Scores of shape (n, K).
        groups: One hashable group id (e.g. patient id) per sample.
        positive_index: Positive class for K == 2 (default 1); ignored for K > 2.
        threshold: Decision threshold (binary only).
        n_boot: Number of resamples; 0 gives (nan, nan) intervals.
        seed: Seed of the resampling; equal seeds give equal intervals.
        level: Coverage of the intervals, in (0, 1).

    Returns:
        ``{metric: (low, high)}`` for every key of :data:`METRIC_KEYS`; (nan, nan) with a
        warning where fewer than half the resamples define the metric.

    Raises:
        DataError: On malformed input.
        ConfigError: On a negative ``n_boot`` or ``level`` outside (0, 1).
    """
    if n_boot < 0 or not 0.0 < level < 1.0:
        raise ConfigError(
            f"bootstrap needs n_boot >= 0 and 0 < level < 1, got n_boot={n_boot}, level={level}."
        )
    p = as_probs(probs)
    y = as_labels(y_true, p.shape[1], p.shape[0])
    inv, n_groups = factorize(groups, y.size)
    if n_boot == 0:
        return {key: (math.nan, math.nan) for key in METRIC_KEYS}
    stats_ = _group_stats(y, p, inv, n_groups, positive_index, threshold)
    values = _bootstrap_values(stats_, n_groups, n_boot, seed)
    return {key: _percentile_ci(values[:, i], key, level) for i, key in enumerate(METRIC_KEYS)}


# --------------------------------------------------------------------------- summaries


def _json_float(value: float | None) -> float | None:
    """``value`` as a float, or None where it is None, nan or infinite (JSON-safe)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def summarize(
    y_true: ArrayLike,
    probs: ArrayLike,
    groups: ArrayLike | Sequence[Hashable],
    class_names: list[str],
    positive_index: int | None = None,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Body of ``metrics.json``: point estimates, 95% grouped-bootstrap CIs and counts.

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Scores of shape (n, K).
        groups: One group (patient) id per sample.
        class_names: Name of each class, in index order (length K).
        positive_index: Positive class for K == 2 (default 1); ignored for K > 2.
        threshold: Decision threshold (binary only; reported as given).
        n_boot: Number of bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        JSON-safe dict (nan written as None): ``{metric: {"value", "ci95"}}`` for each key of
        :data:`METRIC_KEYS`, then ``n``, ``n_groups``, ``class_names``, ``positive_class``
        (None for multiclass), ``threshold``, ``confusion_matrix`` and ``class_counts``.

    Raises:
        DataError: On malformed input or a ``class_names`` list of the wrong length.
    """
    p = as_probs(probs)
    k = p.shape[1]
    if len(class_names) != k:
        raise DataError(
            f"class_names has {len(class_names)} names but probs has {k} columns; they must match."
        )
    y = as_labels(y_true, k, p.shape[0])
    pos = resolve_positive(positive_index, k)
    point = compute_metrics(y, p, pos, threshold)
    cis = bootstrap_ci(y, p, groups, pos, threshold, n_boot=n_boot, seed=seed, level=0.95)
    out: dict[str, Any] = {
        key: {"value": _json_float(point[key]), "ci95": [_json_float(v) for v in cis[key]]}
        for key in METRIC_KEYS
    }
    counts = np.bincount(y, minlength=k)
    out.update(
        n=int(y.size),
        n_groups=factorize(groups, y.size)[1],
        class_names=list(class_names),
        positive_class=None if pos is None else class_names[pos],
        threshold=float(threshold),
        confusion_matrix=confusion(y, p, pos, threshold),
        class_counts={name: int(c) for name, c in zip(class_names, counts, strict=True)},
    )
    return out


def _fold_value(value: Any) -> float:
    """A fold's metric value as a float (None and non-numbers become nan)."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def per_fold_summary(fold_metrics: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Mean and sample SD of each metric across cross-validation folds.

    Args:
        fold_metrics: One metrics dict per fold (e.g. from :func:`compute_metrics`). A key
            missing from a fold, None or nan counts as undefined for that fold.

    Returns:
        ``{metric: {"mean", "sd", "values"}}`` in first-seen key order. ``mean`` and ``sd``
        (ddof=1; 0.0 with a single defined fold) ignore undefined folds and are None when no
        fold defines the metric; ``values`` lists every fold with None for undefined ones.
    """
    keys: dict[str, None] = {}
    for fold in fold_metrics:
        keys.update(dict.fromkeys(fold))
    summary: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = np.array([_fold_value(fold.get(key)) for fold in fold_metrics], dtype=float)
        valid = values[np.isfinite(values)]
        mean = float(valid.mean()) if valid.size else None
        sd = float(valid.std(ddof=1)) if valid.size > 1 else (0.0 if valid.size == 1 else None)
        summary[key] = {"mean": mean, "sd": sd, "values": [_json_float(v) for v in values]}
    return summary


# --------------------------------------------------------------------------- paired tests


def structural_components(
    pos_scores: np.ndarray, neg_scores: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong structural components via midranks (Sun & Xu 2014).

    Returns:
        (auc, v10 per positive, v01 per negative).
    """
    m, n = pos_scores.size, neg_scores.size
    tx = stats.rankdata(pos_scores)
    ty = stats.rankdata(neg_scores)
    tz = stats.rankdata(np.concatenate([pos_scores, neg_scores]))
    auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> tuple[float, float, float]:
    """DeLong test of two correlated ROC AUCs measured on the same cases.

    Uses the fast midrank algorithm of Sun & Xu (2014), equal to DeLong et al. (1988).

    Args:
        y_true: Binary labels in {0, 1}.
        score_a: Scores of classifier A (higher = more likely positive).
        score_b: Scores of classifier B.

    Returns:
        (auc_a, auc_b, two-sided p-value). The p-value is 1.0 when the AUCs and their
        variance both vanish (e.g. identical scores); it is nan (logged) when a class has
        fewer than two cases, or the variance is zero while the AUCs differ.
    """
    y = as_labels(y_true, 2, name="y_true")
    a = as_scores(score_a, y.size, "score_a")
    b = as_scores(score_b, y.size, "score_b")
    pos, neg = y == 1, y == 0
    if pos.sum() == 0 or neg.sum() == 0:
        logger.warning("DeLong test undefined: y_true holds a single class; returning nan.")
        return (math.nan, math.nan, math.nan)
    auc_a, v10_a, v01_a = structural_components(a[pos], a[neg])
    auc_b, v10_b, v01_b = structural_components(b[pos], b[neg])
    if pos.sum() < 2 or neg.sum() < 2:
        logger.warning("DeLong test needs >= 2 cases of each class; p-value is nan.")
        return (auc_a, auc_b, math.nan)
    diff10, diff01 = v10_a - v10_b, v01_a - v01_b
    var = diff10.var(ddof=1) / diff10.size + diff01.var(ddof=1) / diff01.size
    delta = auc_a - auc_b
    if var <= 1e-15:
        if abs(delta) <= 1e-12:
            return (auc_a, auc_b, 1.0)
        logger.warning(
            "DeLong variance is zero while the AUCs differ (%.4f vs %.4f); p-value is nan.",
            auc_a,
            auc_b,
        )
        return (auc_a, auc_b, math.nan)
    z = delta / math.sqrt(var)
    return (auc_a, auc_b, float(2.0 * stats.norm.sf(abs(z))))


def mcnemar_test(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike) -> tuple[int, int, float]:
    """McNemar test of two classifiers' paired predictions on the same cases.

    Args:
        y_true: True class per case.
        pred_a: Predicted class of classifier A.
        pred_b: Predicted class of classifier B.

    Returns:
        (b, c, p): ``b`` cases only A gets right, ``c`` cases only B gets right, and the
        two-sided p-value: exact binomial when ``b + c < 25``, otherwise chi-square with
        continuity correction; 1.0 when there is no discordant case.
    """
    y, pa, pb = (np.asarray(v).ravel() for v in (y_true, pred_a, pred_b))
    if not y.size or pa.shape != y.shape or pb.shape != y.shape:
        raise DataError(
            f"McNemar needs equal-length non-empty inputs, got {y.shape}, {pa.shape}, {pb.shape}."
        )
    right_a, right_b = pa == y, pb == y
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    if b + c == 0:
        return (b, c, 1.0)
    if b + c < _MCNEMAR_EXACT_BELOW:
        return (b, c, float(stats.binomtest(b, b + c, 0.5).pvalue))
    chi2 = (abs(b - c) - 1.0) ** 2 / (b + c)
    return (b, c, float(stats.chi2.sf(chi2, df=1)))
