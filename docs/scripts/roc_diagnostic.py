"""Diagnostic only: what each run's *test* ROC curve allows at the best threshold, and where its scores sit.

Used for docs/results.md (chest X-ray) to tell a threshold problem from a ranking problem. Nothing
printed here may choose a setting: the thresholds in the tables come from validation data.

    .venv/bin/python docs/scripts/roc_diagnostic.py runs/chest-ftcut-lite0 runs/chest-ftfull-e8

For each run (and the mean of their probabilities, when several are given): the highest test
specificity at sensitivity >= 0.95, the highest sensitivity at specificity >= 0.90, the best accuracy
at any threshold, and the median positive-class score of negative images on validation and on test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from medtl import artifact
from medtl.evaluate.compare import Predictions
from medtl.rundir import read_predictions


def _best(labels: np.ndarray, score: np.ndarray, positive_index: int) -> dict[str, float]:
    y = (labels == positive_index).astype(int)
    fpr, tpr, _ = roc_curve(y, score)
    spec = 1 - fpr
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    return {"max_spec_at_sens_0.95": round(float(spec[tpr >= 0.95].max()), 4),
            "max_sens_at_spec_0.90": round(float(tpr[spec >= 0.90].max()), 4),
            "max_accuracy": round(float(((tpr * n_pos + spec * n_neg) / y.size).max()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    meta = artifact.load_meta(args.runs[0])
    positive_index = 1 if meta.positive_index is None else meta.positive_index
    info = (meta.class_names, positive_index)

    def negative_median(p: Predictions) -> float:
        return round(float(np.median(p.probs[p.labels != positive_index, positive_index])), 4)

    result, tests = {}, []
    for run in args.runs:
        test = read_predictions(run / "predictions.csv", info)
        if tests and test.ids != tests[0].ids:
            raise SystemExit(f"{run}: other test images than {args.runs[0]}")
        tests.append(test)
        row = _best(test.labels, test.probs[:, positive_index], positive_index)
        if (run / "val_predictions.csv").is_file():
            row["median_negative_score_val"] = negative_median(read_predictions(run / "val_predictions.csv", info))
        row["median_negative_score_test"] = negative_median(test)
        result[str(run)] = row
    if len(tests) > 1:
        mean = np.mean([t.probs[:, positive_index] for t in tests], axis=0)
        result["mean"] = _best(tests[0].labels, mean, positive_index)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
