"""Labels that the held-out predictions confidently contradict (confident learning, via cleanlab).

Small medical datasets carry label noise (the brain MRI set has "no" images with visible lesions).
Every run lists the images whose out-of-fold (or test) prediction contradicts the given label, ranked
by cleanlab's label-quality score, so a person can look at them. The metrics keep the labels as given:
this is an audit, never a filter.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METHOD = "cleanlab confident learning (find_label_issues, prune_by_noise_rate; ranked by self-confidence)"


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of suspected label errors (worst first) and every sample's label-quality score.

    Args:
        labels: Given class indices ``(N,)``.
        probs: Held-out class probabilities ``(N, K)`` (out-of-fold or test predictions).

    Raises:
        ValueError: The inputs cannot be audited (e.g. a class has no sample); the message says why.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(labels)} labels")
    missing = sorted(set(range(probs.shape[1])) - set(labels.tolist()))
    if missing:
        raise ValueError(f"class index(es) {missing} have no sample among the predictions")
    probs = probs / probs.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about tiny classes; the caller logs the outcome
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
        quality = get_label_quality_scores(labels, probs)
    return np.asarray(ranked, dtype=np.int64), np.asarray(quality, dtype=np.float64)


def audit_labels(path: Path, ids: Sequence[str], files: Sequence[str], folds: Sequence[int], labels: np.ndarray,
                 probs: np.ndarray, class_names: Sequence[str], name: str | None = None) -> dict:
    """Write ``path`` (one row per suspected label error, worst first) and return a summary for metrics.json.

    ``name`` is the file's name in messages and in the summary (default ``path.name``; a caller writing
    through a temporary file gives the final name).

    A failure of the audit is logged and returned as ``{"error": ...}``; it never fails the run.
    """
    try:
        ranked, quality = label_issues(labels, probs)
    except Exception as exc:  # an audit that cannot run must not cost the run its results
        log.warning("label audit skipped: %s", exc)
        return {"error": str(exc), "method": METHOD}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "id", "path", "fold", "given", "predicted", "prob_given", "label_quality"])
        for rank, i in enumerate(ranked, 1):
            writer.writerow([rank, ids[i], files[i], folds[i], class_names[labels[i]],
                             class_names[int(np.argmax(probs[i]))], f"{probs[i, labels[i]]:.6g}", f"{quality[i]:.6g}"])
    if len(ranked):
        worst = ", ".join(f"{ids[i]} ({class_names[labels[i]]}, p={probs[i, labels[i]]:.3f})" for i in ranked[:5])
        log.warning("label audit: the held-out predictions contradict %d of %d labels (%s); worst: %s. "
                    "Look at these images: metrics count the labels as given", len(ranked), len(labels),
                    name or path.name, worst)
    else:
        log.info("label audit: no label contradicted by the held-out predictions (%d images)", len(labels))
    return {"n": int(len(ranked)), "of": int(len(labels)), "file": name or path.name, "method": METHOD}
