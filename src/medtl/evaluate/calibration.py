"""Calibration: reliability diagrams, expected calibration error and temperature scaling.

A well-calibrated model that says 0.8 is right 80% of the time. Two views are computed:

* binary problems: the predicted probability of the positive class against the observed
  fraction of positives (the usual reliability diagram of a diagnostic test);
* multiclass problems: the top-label confidence (highest probability) against the accuracy
  (Guo et al., 2017).

Bins have equal width on [0, 1] and are closed on the right (``(lo, hi]``; the first bin also
holds 0), as in :func:`sklearn.calibration.calibration_curve`.

Temperature scaling divides the logits by one scalar ``T`` fitted on validation data by
minimising the negative log-likelihood (L-BFGS-B on ``log T``). Only probabilities are stored in
medtl's run directories; their logarithms serve as logits, since softmax ignores a per-row constant.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from medtl.errors import ConfigError, DataError
from medtl.evaluate.inputs import as_labels, as_probs, as_scores, resolve_positive

logger = logging.getLogger(__name__)

ScoreKind = Literal["logits", "probs"]
TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
"""Range searched by :func:`fit_temperature`; a fit at a bound is logged as a warning."""

_MIN_PROB = 1e-12


@dataclass(frozen=True)
class ReliabilityCurve:
    """Binned calibration of a classifier.

    Attributes:
        kind: ``positive`` (binary: P(positive) vs fraction positive) or ``top-label``.
        edges: Bin edges, ``n_bins + 1`` values from 0 to 1.
        confidence: Mean predicted probability per bin (nan for empty bins).
        observed: Observed frequency per bin (nan for empty bins).
        counts: Samples per bin.
        ece: Expected calibration error, ``sum(counts / n * |observed - confidence|)``.
    """

    kind: str
    edges: np.ndarray
    confidence: np.ndarray
    observed: np.ndarray
    counts: np.ndarray
    ece: float


def _confidence_and_hits(y_true: ArrayLike, probs: ArrayLike,
                         positive_index: int | None) -> tuple[str, np.ndarray, np.ndarray]:
    """(kind, confidence, outcome) pairs: positive-class view for binary, top-label for multiclass."""
    arr = np.asarray(probs, dtype=float)
    if arr.ndim == 1:
        y = as_labels(y_true, 2)
        return "positive", as_scores(arr, y.size, "probs"), y.astype(float)
    p = as_probs(arr)
    y = as_labels(y_true, p.shape[1], p.shape[0])
    pos = resolve_positive(positive_index, p.shape[1])
    if pos is not None:
        return "positive", p[:, pos], (y == pos).astype(float)
    return "top-label", p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


def reliability_curve(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 10,
                      positive_index: int | None = None) -> ReliabilityCurve:
    """Reliability diagram data and expected calibration error (ECE).

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Probabilities (n, K), or a 1-D array of positive-class probabilities with
            ``y_true`` in {0, 1}.
        n_bins: Number of equal-width bins on [0, 1].
        positive_index: Positive class of a binary problem (default 1).

    Returns:
        The :class:`ReliabilityCurve`.

    Raises:
        ConfigError: ``n_bins < 1``.
        DataError: Malformed input or probabilities outside [0, 1].
    """
    if n_bins < 1:
        raise ConfigError(f"reliability_curve needs n_bins >= 1, got {n_bins}")
    kind, conf, hit = _confidence_and_hits(y_true, probs, positive_index)
    if conf.min() < 0.0 or conf.max() > 1.0:
        raise DataError("reliability_curve needs probabilities in [0, 1]; apply a softmax to logits first")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], conf, side="left")
    counts = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(ids, conf, n_bins) / counts
        observed = np.bincount(ids, hit, n_bins) / counts
    full = counts > 0
    ece = float(np.sum(counts[full] / conf.size * np.abs(observed[full] - mean_conf[full])))
    return ReliabilityCurve(kind, edges, mean_conf, observed, counts, ece)


def expected_calibration_error(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 10,
                               positive_index: int | None = None) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins (see :func:`reliability_curve`).

    Args:
        y_true: Class indices.
        probs: Probabilities (n, K) or positive-class probabilities (n,).
        n_bins: Number of bins.
        positive_index: Positive class of a binary problem (default 1).

    Returns:
        The ECE, in [0, 1].
    """
    return reliability_curve(y_true, probs, n_bins, positive_index).ece


def _as_logits(scores: ArrayLike, kind: ScoreKind) -> np.ndarray:
    """Scores (n, K) as finite logits: log-probabilities when ``kind == 'probs'``."""
    if kind not in ("logits", "probs"):
        raise ConfigError(f"scores kind must be 'logits' or 'probs', got {kind!r}")
    arr = as_probs(scores)
    if kind == "logits":
        return arr
    if arr.min() < 0.0:
        raise DataError("probabilities must be non-negative; pass kind='logits' for raw model outputs")
    return np.log(np.clip(arr, _MIN_PROB, None))


def _nll_and_grad(log_t: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of ``softmax(z / T)`` and its derivative with respect to ``log T``."""
    t = math.exp(float(log_t[0]))
    s = z / t
    lse = special.logsumexp(s, axis=1)
    picked = z[np.arange(y.size), y]
    nll = float(np.mean(lse - picked / t))
    expected = np.sum(special.softmax(s, axis=1) * z, axis=1)
    grad = float(np.mean(picked - expected)) / t  # d nll / d log T
    return nll, np.array([grad])


def fit_temperature(scores: ArrayLike, y_true: ArrayLike, kind: ScoreKind = "logits") -> float:
    """Temperature ``T`` minimising the validation NLL of ``softmax(logits / T)``.

    Args:
        scores: Logits (n, K), or probabilities (n, K) with ``kind='probs'`` (their logs are used).
        y_true: Class indices in ``0..K-1`` (validation data only).
        kind: ``logits`` or ``probs``.

    Returns:
        ``T`` in :data:`TEMPERATURE_BOUNDS`; ``T > 1`` softens over-confident predictions. A fit
        at a bound is logged as a warning. When every validation case is already classified
        correctly the NLL keeps falling as ``T -> 0``, so there is nothing to estimate: 1.0 (no
        scaling) is returned, with a warning.

    Raises:
        DataError: Malformed input.
    """
    z = _as_logits(scores, kind)
    y = as_labels(y_true, z.shape[1], z.shape[0])
    if np.unique(y).size < 2:
        logger.warning("fitting a temperature on %d samples of a single class; the result says little", y.size)
    if np.all(z.argmax(axis=1) == y):
        logger.warning("all %d validation cases are classified correctly: the likelihood has no finite optimum "
                       "(T -> 0); keeping T = 1 (no temperature scaling)", y.size)
        return 1.0
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = optimize.minimize(_nll_and_grad, np.zeros(1), args=(z, y), jac=True, method="L-BFGS-B",
                               bounds=[(lo, hi)])
    t = float(math.exp(float(result.x[0])))
    if min(abs(result.x[0] - lo), abs(result.x[0] - hi)) < 1e-6:
        logger.warning("temperature fit stopped at the bound T=%.3g (search range %s); the validation data may "
                       "be perfectly separated or too small", t, TEMPERATURE_BOUNDS)
    return t


def apply_temperature(scores: ArrayLike, temperature: float, kind: ScoreKind = "probs") -> np.ndarray:
    """Probabilities ``softmax(logits / T)``; ``kind='probs'`` takes probabilities (their logs as logits).

    ``apply_temperature(apply_temperature(p, T), 1 / T)`` gives back ``p`` (up to clipping at 1e-12),
    so calibrated probabilities can be turned back into the uncalibrated ones.

    Args:
        scores: Probabilities or logits, shape (n, K).
        temperature: ``T > 0``.
        kind: ``probs`` or ``logits``.

    Returns:
        Probabilities (n, K), rows summing to 1.

    Raises:
        ConfigError: ``temperature`` not positive and finite.
        DataError: Malformed input.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    return special.softmax(_as_logits(scores, kind) / temperature, axis=1)


def negative_log_likelihood(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean negative log-likelihood (log loss) of class probabilities (clipped at 1e-12).

    Args:
        y_true: Class indices in ``0..K-1``.
        probs: Probabilities (n, K).

    Returns:
        ``-mean(log p[i, y_i])``.
    """
    p = as_probs(probs)
    y = as_labels(y_true, p.shape[1], p.shape[0])
    picked = p[np.arange(y.size), y] / p.sum(axis=1)
    return float(-np.mean(np.log(np.clip(picked, _MIN_PROB, None))))
