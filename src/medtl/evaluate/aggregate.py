"""Patient-level evaluation: one score per patient from the scores of its images or slices.

A tomosynthesis patient contributes hundreds of slices, so image-level metrics weigh patients by
their slice count and describe a task no radiologist performs. Aggregating the slice scores per
patient (mean, max, or the mean of the top k) gives one prediction per patient, evaluated with the
same metrics and the same bootstrap as the image level (:func:`patient_level_metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtl.errors import ConfigError, DataError
from medtl.evaluate.metrics import summarize

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("mean", "max", "topk_mean")
"""Names accepted by :func:`aggregate_scores`."""


def aggregate_scores(scores: np.ndarray, method: str = "mean", k: int = 3) -> np.ndarray:
    """Aggregate the rows of ``scores`` (n, ...) into one row: mean, max, or mean of the top ``k`` per column.

    Args:
        scores: At least one row of scores.
        method: ``mean``, ``max`` or ``topk_mean`` (``k`` larger than n uses all rows).
        k: Number of highest scores averaged by ``topk_mean``.

    Returns:
        The aggregate, shaped like one row.

    Raises:
        ConfigError: Unknown method or ``k < 1``.
        DataError: No rows.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if method not in METHODS:
        raise ConfigError(f"unknown aggregation '{method}'; choose one of {', '.join(METHODS)}")
    if k < 1:
        raise ConfigError(f"top-k aggregation needs k >= 1, got {k}")
    if scores.shape[0] == 0:
        raise DataError("aggregate_scores: no scores to aggregate")
    if method == "mean":
        return scores.mean(axis=0)
    if method == "max":
        return scores.max(axis=0)
    top = -np.sort(-scores, axis=0)[: min(k, scores.shape[0])]
    return top.mean(axis=0)


@dataclass
class GroupPredictions:
    """Aggregated predictions, one row per group (patient).

    Attributes:
        groups: Group ids, in order of first appearance.
        labels: Group labels.
        probs: Aggregated scores (n_groups, K); rows sum to 1.
        sizes: Number of images per group.
    """

    groups: list[Hashable]
    labels: np.ndarray
    probs: np.ndarray
    sizes: np.ndarray


def aggregate_by_group(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[Hashable],
    method: str = "mean",
    k: int = 3,
    positive_index: int | None = None,
) -> GroupPredictions:
    """One prediction per group from its images' class probabilities.

    Binary tasks aggregate the positive class's probability (the other is 1 minus it); a group is
    positive when any of its images is (a patient with one tumour slice has a tumour). Multiclass
    tasks aggregate every column, renormalise, and label a group by its most frequent image label.

    Args:
        labels: Image labels (n,).
        probs: Image probabilities (n, K).
        groups: Group (patient) id per image.
        method: ``mean``, ``max`` or ``topk_mean``.
        k: ``k`` of ``topk_mean``.
        positive_index: Positive class of a binary task (default 1 when K == 2).

    Returns:
        The per-group predictions.

    Raises:
        DataError: Lengths differ.
    """
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if not len(labels) == len(probs) == len(groups):
        raise DataError(f"aggregate_by_group: {len(labels)} labels, {len(probs)} score rows and {len(groups)} "
                        "groups; pass one of each per image")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    pos = positive_index if positive_index is not None else (1 if probs.shape[1] == 2 else None)
    rows = [_group_row(labels[idx], probs[idx], method, k, pos) for idx in members.values()]
    _warn_mixed(members, labels)
    return GroupPredictions(list(members), np.array([r[0] for r in rows], dtype=np.int64),
                            np.stack([r[1] for r in rows]), np.array([len(v) for v in members.values()]))


def _group_row(labels: np.ndarray, probs: np.ndarray, method: str, k: int, pos: int | None) -> tuple[int, np.ndarray]:
    if pos is not None and probs.shape[1] == 2:
        p = float(aggregate_scores(probs[:, pos], method, k))
        row = np.empty(2)
        row[pos], row[1 - pos] = p, 1.0 - p
        return (pos if (labels == pos).any() else 1 - pos), row
    row = aggregate_scores(probs, method, k)
    return int(np.bincount(labels).argmax()), row / row.sum()


def _warn_mixed(members: dict[Hashable, list[int]], labels: np.ndarray) -> None:
    mixed = [g for g, idx in members.items() if len(set(labels[idx].tolist())) > 1]
    if mixed:
        logger.warning("%d groups have images with different labels (e.g. %s); binary tasks call such a group "
                       "positive, multiclass tasks use its most frequent label", len(mixed), mixed[:5])


def patient_level_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[Hashable],
    class_names: list[str],
    positive_index: int | None,
    method: str = "mean",
    k: int = 3,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of the per-patient aggregate, in the same shape as the image-level ``metrics.json`` body.

    Args:
        labels: Image labels.
        probs: Image probabilities (n, K).
        groups: Patient (group) id per image.
        class_names: Class names.
        positive_index: Positive class (binary).
        method: ``mean``, ``max`` or ``topk_mean``.
        k: ``k`` of ``topk_mean``.
        threshold: Decision threshold.
        n_boot: Bootstrap resamples (patients).
        seed: Bootstrap seed.

    Returns:
        :func:`~medtl.evaluate.metrics.summarize` of the aggregate plus an ``aggregation`` block.
    """
    agg = aggregate_by_group(labels, probs, groups, method, k, positive_index)
    out = summarize(agg.labels, agg.probs, [str(g) for g in agg.groups], class_names, positive_index,
                    threshold, n_boot, seed)
    out["aggregation"] = {"method": method, "k": k if method == "topk_mean" else None,
                          "n_patients": len(agg.groups), "n_images": int(len(labels)),
                          "images_per_patient": {"min": int(agg.sizes.min()), "max": int(agg.sizes.max())}}
    return out
