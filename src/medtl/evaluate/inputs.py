"""Validation of metric inputs: probabilities, scores, class labels, the positive class and groups.

Every evaluation module (metrics, calibration, curves, threshold) checks its arrays here, so a
malformed input raises the same :class:`~medtl.errors.DataError` (wrong shape, labels outside
``0..K-1``, non-finite scores) or :class:`~medtl.errors.ConfigError` (an invalid option) everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medtl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def as_probs(probs: ArrayLike) -> np.ndarray:
    """Return ``probs`` as a finite float (n, K) array with n >= 1 and K >= 2."""
    arr = np.asarray(probs, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise DataError(
            f"probs must be a 2-D array of shape (n_samples >= 1, n_classes >= 2), got shape "
            f"{arr.shape}; pass one column of scores per class."
        )
    if not np.all(np.isfinite(arr)):
        raise DataError("probs contains NaN or infinite values; check the model outputs.")
    return arr


def as_scores(scores: ArrayLike, n: int, name: str) -> np.ndarray:
    """Return ``scores`` as a finite 1-D float array of length ``n``."""
    arr = np.asarray(scores, dtype=float)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(
            f"{name} must be a 1-D array of length {n} (one score per label), got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or infinite values; check the model outputs.")
    return arr


def as_labels(y_true: ArrayLike, n_classes: int, n: int | None = None, name: str = "y_true") -> np.ndarray:
    """Return ``y_true`` as a 1-D int array with values in ``0..n_classes-1``."""
    arr = np.asarray(y_true)
    if arr.ndim != 1 or arr.shape[0] == 0 or (n is not None and arr.shape[0] != n):
        expected = "non-empty" if n is None else f"length {n}"
        raise DataError(f"{name} must be a {expected} 1-D array of class indices, got shape {arr.shape}.")
    if arr.dtype == bool:
        arr = arr.astype(int)
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")
    labels = arr.astype(int)
    if np.any(labels != arr) or labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(
            f"{name} must hold integer class indices in 0..{n_classes - 1}, got values "
            f"{np.unique(arr)[:10].tolist()}; map labels to class indices first."
        )
    return labels


def resolve_positive(positive_index: int | None, n_classes: int) -> int | None:
    """Return the positive class index for binary problems (default 1), None otherwise."""
    if n_classes != 2:
        if positive_index is not None:
            logger.debug("positive_index=%s ignored: %d classes is not binary.", positive_index, n_classes)
        return None
    pos = 1 if positive_index is None else positive_index
    if pos not in (0, 1):
        raise ConfigError(f"positive_index must be 0 or 1 for a binary problem, got {positive_index!r}.")
    return int(pos)


def factorize(groups: ArrayLike | Sequence[Hashable], n: int) -> tuple[np.ndarray, int]:
    """Map group ids to codes ``0..G-1`` (first-appearance order); return codes and G."""
    ids: Any = groups
    items = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    if len(items) != n:
        raise DataError(f"groups must have one id per sample ({n}), got {len(items)}.")
    codes: dict[Hashable, int] = {}
    inv = np.fromiter((codes.setdefault(g, len(codes)) for g in items), dtype=np.int64, count=n)
    return inv, len(codes)
