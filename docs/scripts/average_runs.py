"""Average the held-out probabilities of several finished runs on the same images; print pooled metrics.

Used for docs/results.md (brain MRI seed ensemble): runs that differ only in ``train.seed`` by
multiples of 1000 are the members of ``train.ensemble``, so their mean is what that setting gives.

    .venv/bin/python docs/scripts/average_runs.py --tta hflip_zoom runs/brain-mri-lite0-v2 \
        runs/brain-seed1000 runs/brain-seed2000

Each run's own test (out-of-fold) images are predicted again by their fold's saved model with the
given test-time augmentation (as ``medtl evaluate RUN --tta``); the runs must cover the same images.
``--label-issues FILE`` also runs the label audit (as every new run does) on the averaged probabilities.

``--saved`` averages the probabilities the runs saved (``predictions.csv``, with each run's own TTA) instead
of predicting again; where every run also saved ``val_predictions.csv`` for the same validation images (a
predefined test set, e.g. the chest X-rays), the threshold is chosen on the averaged validation
probabilities by the first run's ``evaluate.threshold_rule`` -- never on the test images:

    .venv/bin/python docs/scripts/average_runs.py --saved runs/chest-ftfull-e8 runs/chest-ftcut-lite1
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from medtl import artifact, rundir
from medtl.errors import MedtlError
from medtl.evaluate.label_issues import audit_labels
from medtl.evaluate.metrics import summarize
from medtl.evaluate.threshold import choose_threshold
from medtl.predict import repredict_own

KEYS = ("accuracy", "sensitivity", "specificity", "auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tta", default="hflip", help="none, hflip or hflip_zoom")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--saved", action="store_true",
                        help="average the saved predictions (and choose the threshold on saved validation ones)")
    parser.add_argument("--label-issues", type=Path, help="write the label audit of the averaged probabilities here")
    args = parser.parse_args()
    probs, result, reference = [], {}, None
    for run in args.runs:
        meta = artifact.load_meta(run)
        meta.tta = args.tta
        if args.saved:
            saved = rundir.read_predictions(run / rundir.PREDICTIONS, (meta.class_names, meta.positive_index))
            labels, p, groups = saved.labels, saved.probs, np.array(saved.groups, dtype=object)
        else:
            labels, p, groups = repredict_own(run, meta)
        if reference is not None and not np.array_equal(reference, labels):
            raise MedtlError(f"{run}: its predictions cover other images or labels than {args.runs[0]}")
        reference = labels
        probs.append(p)
        one = summarize(labels, p, groups, meta.class_names, meta.positive_index, meta.threshold, 0, 0)
        result[str(run)] = {k: round(one[k]["value"], 4) for k in KEYS}
    first = artifact.load_meta(args.runs[0])
    threshold = _val_threshold(args.runs, first) if args.saved else None
    if threshold is None:
        threshold = first.threshold
    result["threshold"] = round(threshold, 6)
    mean = summarize(reference, np.mean(probs, axis=0), groups, meta.class_names, meta.positive_index,
                     threshold, args.bootstrap, 0)
    result["mean"] = {k: {"value": round(mean[k]["value"], 4),
                          "ci95": [None if x is None else round(x, 4) for x in mean[k]["ci95"]]} for k in KEYS}
    if args.label_issues:
        with open(args.runs[0] / "predictions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        result["label_issues"] = audit_labels(args.label_issues, [r["id"] for r in rows], [r["path"] for r in rows],
                                              [int(r["fold"]) for r in rows], reference, np.mean(probs, axis=0),
                                              meta.class_names)
    print(json.dumps({"tta": "as saved by each run" if args.saved else args.tta, **result}, indent=1))


def _val_threshold(runs: list[Path], first: artifact.ModelMeta) -> float | None:
    """The first run's threshold rule applied to the runs' averaged validation probabilities, if all have them."""
    paths = [run / rundir.VAL_PREDICTIONS for run in runs]
    if first.positive_index is None or not all(p.is_file() for p in paths):
        return None
    parts = [rundir.read_predictions(p, (first.class_names, first.positive_index)) for p in paths]
    for path, part in zip(paths[1:], parts[1:], strict=True):
        if part.ids != parts[0].ids:
            raise MedtlError(f"{path}: other validation images than {paths[0]}; the runs used different splits")
    evaluate = first.config.get("evaluate", {})
    y = (parts[0].labels == first.positive_index).astype(int)
    return choose_threshold(y, np.mean([p.probs[:, first.positive_index] for p in parts], axis=0),
                            evaluate.get("threshold_rule", "fixed"), evaluate.get("threshold_target"))


if __name__ == "__main__":
    main()
