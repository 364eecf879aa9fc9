"""Average the held-out probabilities of several finished runs on the same images; print pooled metrics.

Used for docs/results.md (brain MRI seed ensemble): runs that differ only in ``train.seed`` by
multiples of 1000 are the members of ``train.ensemble``, so their mean is what that setting gives.

    .venv/bin/python docs/scripts/average_runs.py --tta hflip_zoom runs/brain-mri-lite0-v2 \
        runs/brain-seed1000 runs/brain-seed2000

Each run's own test (out-of-fold) images are predicted again by their fold's saved model with the
given test-time augmentation (as ``medtl evaluate RUN --tta``); the runs must cover the same images.
``--label-issues FILE`` also runs the label audit (as every new run does) on the averaged probabilities.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from medtl import artifact
from medtl.errors import MedtlError
from medtl.evaluate.label_issues import audit_labels
from medtl.evaluate.metrics import summarize
from medtl.predict import repredict_own

KEYS = ("accuracy", "sensitivity", "specificity", "auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tta", default="hflip", help="none, hflip or hflip_zoom")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--label-issues", type=Path, help="write the label audit of the averaged probabilities here")
    args = parser.parse_args()
    probs, result, reference = [], {}, None
    for run in args.runs:
        meta = artifact.load_meta(run)
        meta.tta = args.tta
        labels, p, groups = repredict_own(run, meta)
        if reference is not None and not np.array_equal(reference, labels):
            raise MedtlError(f"{run}: its predictions cover other images or labels than {args.runs[0]}")
        reference = labels
        probs.append(p)
        one = summarize(labels, p, groups, meta.class_names, meta.positive_index, meta.threshold, 0, 0)
        result[str(run)] = {k: round(one[k]["value"], 4) for k in KEYS}
    mean = summarize(reference, np.mean(probs, axis=0), groups, meta.class_names, meta.positive_index,
                     meta.threshold, args.bootstrap, 0)
    result["mean"] = {k: {"value": round(mean[k]["value"], 4),
                          "ci95": [None if x is None else round(x, 4) for x in mean[k]["ci95"]]} for k in KEYS}
    if args.label_issues:
        with open(args.runs[0] / "predictions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        result["label_issues"] = audit_labels(args.label_issues, [r["id"] for r in rows], [r["path"] for r in rows],
                                              [int(r["fold"]) for r in rows], reference, np.mean(probs, axis=0),
                                              meta.class_names)
    print(json.dumps({"tta": args.tta, **result}, indent=1))


if __name__ == "__main__":
    main()
