"""Pooled AUC/accuracy of k-fold binary runs after per-fold recalibration on each fold's validation set.

The measurement behind docs/results.md's "Per-fold recalibration does not help": a temperature and a
Platt scaling are fitted per fold on ``val_predictions.csv`` and applied to that fold's test
predictions; prints one JSON line per run.

    .venv/bin/python docs/scripts/perfold_calibration.py runs/brain-mri-lite0-v2 runs/brain-snap
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from medtl.evaluate.calibration import apply_temperature, fit_temperature


def read(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold, label and positive-class probability of every row of a predictions CSV."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (np.array([int(r["fold"]) for r in rows]), np.array([int(r["label"]) for r in rows]),
            np.array([float(r["prob_yes"]) for r in rows]))


def logit(q: np.ndarray) -> np.ndarray:
    q = np.clip(q, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def main(runs: list[str]) -> None:
    for run in runs:
        fold, y, p = read(f"{run}/predictions.csv")
        vfold, vy, vp = read(f"{run}/val_predictions.csv")
        temp, platt = np.zeros(len(y)), np.zeros(len(y))
        for k in np.unique(fold):
            test, val = fold == k, vfold == k
            t = fit_temperature(np.c_[1 - vp[val], vp[val]], vy[val], kind="probs")
            temp[test] = apply_temperature(np.c_[1 - p[test], p[test]], t)[:, 1]
            lr = LogisticRegression(C=1.0).fit(logit(vp[val])[:, None], vy[val])
            platt[test] = lr.predict_proba(logit(p[test])[:, None])[:, 1]
        res = {"auc_raw": roc_auc_score(y, p),
               "auc_per_fold_mean": np.mean([roc_auc_score(y[fold == k], p[fold == k]) for k in np.unique(fold)]),
               "auc_temperature": roc_auc_score(y, temp), "auc_platt": roc_auc_score(y, platt),
               "acc_raw": ((p >= .5) == y).mean(), "acc_temperature": ((temp >= .5) == y).mean(),
               "acc_platt": ((platt >= .5) == y).mean()}
        print(json.dumps({"run": run, **{k: round(float(v), 4) for k, v in res.items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
