"""Comparisons that count what varies: seeds, patients, and many cells.

* :func:`paired_seed_test` — two configurations trained with the same seeds: a paired t-test and a
  Wilcoxon signed-rank test on the per-seed AUC differences. This is the test of "configuration A
  beats B", where the variation between trainings counts; a DeLong p-value of one pair of trained
  models is *conditional on the trained models* (it counts only the test images).
* :func:`clustered_auc_test` — two correlated AUCs when patients (groups) contribute several images:
  Obuchowski's (1997) clustered AUC variance applied to the difference of the structural components,
  so a patient counts once, not once per image. With one image per group it equals DeLong's test.
* :func:`holm` — Holm's step-down adjustment of the p-values of many cells against one baseline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from medtl.errors import DataError
from medtl.evaluate.metrics import structural_components

log = logging.getLogger(__name__)

CONDITIONAL = "conditional on the trained models"
"""How a per-model DeLong p-value is labelled: it ignores the variation between trainings (seeds)."""


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the input order; None (or NaN) entries stay None and do not count.

    Args:
        pvalues: Raw p-values of the tests of one family (e.g. every cell against the baseline).
    """
    present = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None and math.isfinite(float(p))]
    out: list[float | None] = [None] * len(pvalues)
    m, running = len(present), 0.0
    for rank, (i, p) in enumerate(sorted(present, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def paired_seed_test(auc_a: Sequence[float], auc_b: Sequence[float]) -> dict[str, float | int | None]:
    """Paired tests of two configurations over seeds (position k of each list = the same seed).

    Returns:
        ``n`` pairs, ``mean_diff`` and ``sd_diff`` of ``a − b``, ``p_ttest`` (paired t-test) and
        ``p_wilcoxon`` (signed-rank, exact for small n); p-values are None with fewer than two pairs,
        1.0 when every difference is zero.

    Raises:
        DataError: The lists differ in length (seeds must be paired).
    """
    a, b = np.asarray(auc_a, dtype=float), np.asarray(auc_b, dtype=float)
    if a.shape != b.shape:
        raise DataError(f"paired seed test: {a.size} runs against {b.size}; give both configurations the same "
                        "seeds, in the same order")
    diff = a - b
    out: dict[str, float | int | None] = {"n": int(diff.size), "mean_diff": float(diff.mean()) if diff.size else None,
                                          "sd_diff": float(diff.std(ddof=1)) if diff.size > 1 else None,
                                          "p_ttest": None, "p_wilcoxon": None}
    if diff.size < 2:
        return out
    if np.allclose(diff, 0.0):
        return out | {"p_ttest": 1.0, "p_wilcoxon": 1.0}
    if np.allclose(diff, diff[0]):  # constant non-zero differences: no spread to test against
        out["p_ttest"] = 0.0
    else:
        out["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
    out["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return (float(v.mean()) if v.size else None, float(v.std(ddof=1)) if v.size > 1 else None)


def clustered_auc_variance(y: np.ndarray, v10: np.ndarray, v01: np.ndarray, theta: float,
                           codes: np.ndarray) -> float:
    """Obuchowski's variance of an AUC (or of an AUC difference) from per-image structural components.

    Args:
        y: Binary label per image.
        v10: Structural component per positive image (order of ``y == 1``).
        v01: Structural component per negative image (order of ``y == 0``).
        theta: The AUC (or the AUC difference) the components average to.
        codes: Cluster (patient) index per image, 0..I-1.
    """
    n_clusters = int(codes.max()) + 1
    pos, neg = y == 1, y == 0
    m_i = np.bincount(codes[pos], minlength=n_clusters).astype(float)
    n_i = np.bincount(codes[neg], minlength=n_clusters).astype(float)
    s10_i = np.bincount(codes[pos], weights=v10, minlength=n_clusters) - m_i * theta
    s01_i = np.bincount(codes[neg], weights=v01, minlength=n_clusters) - n_i * theta
    n1, n0 = m_i.sum(), n_i.sum()
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    s10 = i10 / ((i10 - 1) * n1) * np.sum(s10_i ** 2)
    s01 = i01 / ((i01 - 1) * n0) * np.sum(s01_i ** 2)
    s11 = n_clusters / (n_clusters - 1) * np.sum(s10_i * s01_i)
    return float(s10 / n1 + s01 / n0 + 2 * s11 / (n1 * n0))


def clustered_auc_test(y_true: Sequence[int], score_a: Sequence[float], score_b: Sequence[float],
                       groups: Sequence[str]) -> tuple[float, float, float]:
    """Two correlated AUCs on the same images, clustered by patient (Obuchowski 1997).

    Args:
        y_true: Binary labels (0/1) per image.
        score_a: Scores of model A per image.
        score_b: Scores of model B per image.
        groups: Patient / group id per image.

    Returns:
        (auc_a, auc_b, two-sided p); p is NaN (logged) with fewer than two groups holding each class.

    Raises:
        DataError: Inputs of different lengths.
    """
    y = np.asarray(y_true).astype(int)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    if not (y.size == a.size == b.size == len(groups)):
        raise DataError(f"clustered AUC test: {y.size} labels, {a.size} and {b.size} scores, {len(groups)} groups; "
                        "give one of each per image")
    codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].reshape(-1)
    pos, neg = y == 1, y == 0
    if len(np.unique(codes[pos])) < 2 or len(np.unique(codes[neg])) < 2:
        log.warning("clustered AUC test needs >= 2 groups with each class; p-value is nan")
        return math.nan, math.nan, math.nan
    auc_a, v10_a, v01_a = structural_components(a[pos], a[neg])
    auc_b, v10_b, v01_b = structural_components(b[pos], b[neg])
    delta = auc_a - auc_b
    var = clustered_auc_variance(y, v10_a - v10_b, v01_a - v01_b, delta, codes)
    if var <= 1e-15:
        return auc_a, auc_b, 1.0 if abs(delta) <= 1e-12 else math.nan
    return auc_a, auc_b, float(2.0 * stats.norm.sf(abs(delta) / math.sqrt(var)))


def has_clusters(groups: Sequence[str]) -> bool:
    """Whether some group (patient) contributes several images (and the groups are known)."""
    known = [g for g in groups if g]
    return len(known) == len(groups) and len(set(known)) < len(known)
