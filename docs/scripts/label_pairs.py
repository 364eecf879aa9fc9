"""How much of a run's AUC shortfall comes from named images: mis-ordered (negative, positive) pairs.

Used for docs/results.md (brain MRI, "Where the remaining errors are"): the mean positive-class
probability over several runs' ``predictions.csv`` (same images), the pairs each named negative image
ranks above, and the AUC with those images counted as positive or left out.

    .venv/bin/python docs/scripts/label_pairs.py runs/brain-mixup02-dp02 runs/brain-mixup02-dp02-s1000 \
        runs/brain-mixup02-dp02-s2000 --ids no/N1.JPG no/N6.jpg no/N16.jpg no/N17.jpg no/N22.JPG
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medtl.errors import MedtlError


def read_probs(run: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image ids (sorted), labels and positive-class probabilities from ``run/predictions.csv``."""
    with open(run / "predictions.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    prob_cols = [c for c in rows[0] if c.startswith("prob_")]
    return ([r["id"] for r in rows], np.array([int(r["label"]) for r in rows]),
            np.array([float(r[prob_cols[-1]]) for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--ids", nargs="+", required=True, help="negative images to examine (predictions.csv id)")
    args = parser.parse_args()
    ids, labels, probs = None, None, []
    for run in args.runs:
        run_ids, run_labels, p = read_probs(run)
        if ids is not None and (run_ids != ids or not np.array_equal(run_labels, labels)):
            raise MedtlError(f"{run}: its predictions cover other images or labels than {args.runs[0]}")
        ids, labels = run_ids, run_labels
        probs.append(p)
    p = np.mean(probs, axis=0)
    missing = [i for i in args.ids if i not in ids]
    if missing:
        raise MedtlError(f"--ids {missing}: not in {args.runs[0] / 'predictions.csv'} (use its 'id' column)")
    neg, pos = p[labels == 0], p[labels == 1]
    pairs = (neg[:, None] > pos[None, :]).sum() + 0.5 * (neg[:, None] == pos[None, :]).sum()
    named = {i: int((pos < p[ids.index(i)]).sum()) for i in args.ids}
    keep = np.array([i not in args.ids for i in ids])
    relabelled = labels.copy()
    relabelled[~keep] = 1
    print(json.dumps({
        "auc": round(roc_auc_score(labels, p), 4), "accuracy": round(float(((p >= 0.5) == labels).mean()), 4),
        "misordered_pairs": float(pairs), "pairs": int(len(neg) * len(pos)),
        "positives_ranked_below": named, "from_named": sum(named.values()),
        "auc_named_as_positive": round(roc_auc_score(relabelled, p), 4),
        "auc_without_named": round(roc_auc_score(labels[keep], p[keep]), 4)}, indent=1))


if __name__ == "__main__":
    main()
