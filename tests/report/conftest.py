"""Run and study directories for report tests.

``make_run`` fabricates a complete run directory in seconds: synthetic PNG images, a real (randomly
initialised, small-input) EfficientNet-Lite0 per fold saved through :mod:`medtl.artifact`, and
predictions, metrics, splits, history and log written in the formats ``medtl train`` writes.
The slow fixture ``real_run`` trains a tiny real run on brain MRI images instead.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtl import artifact, rundir
from medtl.config import HeadConfig, dump_config, parse_config
from medtl.evaluate.label_issues import audit_labels
from medtl.evaluate.metrics import compute_metrics, per_fold_summary, summarize
from medtl.models.network import create_model, preprocessing_for

RUN_HEADINGS = ("Protocol", "Data", "Learning curves", "ROC and precision-recall curves", "Operating point",
                "Calibration", "Patient-level results", "Grad-CAM", "Per-fold results")
STUDY_HEADINGS = ("Study", "Comparison", "Data-size learning curves")
IMAGE_SIZE = 64
N_IMAGES = 24
BACKBONE = "tf_efficientnet_lite0"


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 64x64 grey image: noise, plus a bright disc (class 1) or bar (class 2)."""
    arr = rng.normal(60, 15, (IMAGE_SIZE, IMAGE_SIZE))
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    cy, cx = rng.integers(16, 48, 2)
    if label == 1:
        arr[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 150
    elif label == 2:
        arr[cy - 3:cy + 3, 8:56] += 150
    return np.clip(arr, 0, 255).astype(np.uint8)


def _probs(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Informative but imperfect class probabilities."""
    logits = 1.6 * np.eye(k)[labels] + rng.normal(0, 0.9, (labels.size, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _config(root: Path, k: int, name: str) -> dict:
    tree = {"name": name,
            "data": {"source": "folder", "root": str(root / "images"), "image_size": IMAGE_SIZE,
                     "positive_class": "yes" if k == 2 else None, "split": {"method": "kfold", "folds": 2}},
            "model": {"backbone": BACKBONE, "weights": "none"},
            "transfer": {"strategy": "feature_extraction"},
            "train": {"epochs": 3, "progress": False}, "evaluate": {"bootstrap": 200}}
    return parse_config(tree).model_dump(mode="json")


def _save_models(run: Path, k: int) -> tuple[list[str], dict]:
    names, spec = [], None
    for fold in range(2):
        torch.manual_seed(fold)
        model, spec = create_model(BACKBONE, "none", k, HeadConfig())
        torch.nn.init.normal_(model.head[-1].weight, 0.0, 0.05)  # the builder zero-initialises the head
        names.append(artifact.save_fold(run, fold, model))
    pre = preprocessing_for(spec, IMAGE_SIZE, "grayscale", "squash")
    return names, pre.__dict__ | {"mean": list(pre.mean), "std": list(pre.std)}


def make_run(root: Path, *, k: int = 2, patients: bool = False, val: bool = False, model: bool = True,
             threshold: float = 0.5, extra_model_fields: dict | None = None, name: str = "fabricated",
             seed: int = 0) -> Path:
    """Write a complete run directory under ``root/run`` and return it."""
    rng = np.random.default_rng(seed)
    run, images = root / "run", root / "images"
    run.mkdir(parents=True)
    names = ["no", "yes"] if k == 2 else ["glioma", "meningioma", "pituitary"][:k]
    ids, paths, labels = [], [], []
    for i in range(N_IMAGES):
        label = (i // 3 if patients else i) % k
        path = images / names[label] / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(label, rng)).save(path)
        ids.append(f"{names[label]}/img{i:02d}.png")
        paths.append(str(path))
        labels.append(label)
    labels_arr = np.array(labels)
    patient = [f"P{i // 3:02d}" if patients else "" for i in range(N_IMAGES)]
    groups = [f"patient:{p}" if p else (f"dup:{i // 2:04x}" if i < 8 else f"img:{ids[i]}")
              for i, p in enumerate(patient)]
    unit = np.arange(N_IMAGES) // 3 if patients else np.arange(N_IMAGES)  # what the split keeps together
    test_fold = (unit // 2) % 2
    late = unit >= (unit.max() + 1) * 2 // 3  # validation: the late units of the training part
    probs = _probs(labels_arr, k, rng)
    pos = 1 if k == 2 else None

    def pred(p: np.ndarray) -> str:
        return names[(1 if p[1] >= threshold else 0) if pos is not None else int(np.argmax(p))]

    split_rows, pred_rows, val_rows = [], [], []
    for fold in range(2):
        for i in range(N_IMAGES):
            role = "test" if test_fold[i] == fold else ("val" if late[i] else "train")
            split_rows.append([fold, role, ids[i], paths[i], labels[i], names[labels[i]], patient[i], groups[i], ""])
            row = [ids[i], paths[i], fold, labels[i], names[labels[i]], groups[i], *[f"{v:.9g}" for v in probs[i]],
                   pred(probs[i])]
            if role == "test":
                pred_rows.append(row)
            elif role == "val":
                val_rows.append(row)
    header = ["id", "path", "fold", "label", "class_name", "group", *[f"prob_{n}" for n in names], "pred"]
    _write_csv(run / "splits.csv", ["fold", "role", "id", "path", "label", "class_name", "patient", "group", "meta"],
               split_rows)
    _write_csv(run / "predictions.csv", header, pred_rows)
    if val:
        _write_csv(run / "val_predictions.csv", header, val_rows)
    _write_history(run / "history.csv", rng)
    config = _config(root, k, name)
    (run / "config.yaml").write_text(dump_config(parse_config(config)))
    _write_metrics(run, pred_rows, names, pos, threshold, config)
    _write_log(run / "run.log")
    if model:
        folds, pre = _save_models(run, k)
        meta = artifact.ModelMeta(backbone=BACKBONE, head=HeadConfig().model_dump(), class_names=names,
                                  positive_index=pos, preprocessing=pre, threshold=threshold, tta="none", folds=folds,
                                  lineage=[{"stage": name, "weights": "none", "weights_sha256": None,
                                            "data": str(images), "strategy": "feature_extraction"}],
                                  config=config)
        path = artifact.save_meta(run, meta)
        if extra_model_fields:
            path.write_text(json.dumps(json.loads(path.read_text()) | extra_model_fields, indent=2))
    rundir.mark_complete(run)
    return run


def _write_history(path: Path, rng: np.random.Generator) -> None:
    rows = []
    for fold in range(2):
        for epoch in range(3):
            rows.append([fold, epoch, 0.7 - 0.15 * epoch, 0.6 + 0.1 * epoch, 0.72 - 0.1 * epoch,
                         0.55 + 0.08 * epoch + rng.normal(0, 0.02), 0.6 + 0.1 * epoch, 0.001])
    _write_csv(path, ["fold", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr"],
               rows)


def _write_metrics(run: Path, rows: list[list], names: list[str], pos: int | None, threshold: float,
                   config: dict) -> None:
    k = len(names)
    labels = np.array([int(r[3]) for r in rows])
    probs = np.array([[float(v) for v in r[6:6 + k]] for r in rows])
    folds = np.array([int(r[2]) for r in rows])
    metrics = summarize(labels, probs, [r[5] for r in rows], names, pos, threshold, 200, 0)
    metrics["per_fold"] = per_fold_summary([compute_metrics(labels[folds == f], probs[folds == f], pos, threshold)
                                            for f in range(2)])
    metrics["protocol"] = {"split": "kfold", "folds": 2, "seed": 0, "val_fraction": 0.15, "train_seed": 0,
                           "grouping": "duplicate image content (no patient ids)",
                           "n_groups": len({r[5] for r in rows}),
                           "evaluated_on": "pooled out-of-fold test predictions", "tta": "none",
                           "threshold": threshold}
    metrics["data"] = {"source": "folder", "location": config["data"]["root"], "n_images": N_IMAGES, "n_bad": 0,
                       "bad": []}
    metrics["model"] = {"backbone": BACKBONE, "weights": "none", "weights_sha256": None,
                        "strategy": "feature_extraction", "unfreeze_from": None}
    metrics |= {"epochs_trained": [3, 3], "seconds": 12.5, "name": config["name"]}
    metrics["label_issues"] = audit_labels(run / "label_issues.csv", [r[0] for r in rows], [r[1] for r in rows],
                                           list(folds), labels, probs, names)
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _write_log(path: Path) -> None:
    path.write_text(
        "2026-01-01 10:00:00,000 INFO medtl.data.sources: folder images: 24 samples, classes {'no': 12, 'yes': 12}\n"
        "2026-01-01 10:00:00,100 INFO medtl.data.splits: 4 sets of identical images (4 redundant)\n"
        "2026-01-01 10:00:00,200 WARNING medtl.data.splits: no patient ids: grouping by duplicate image content only\n"
        "2026-01-01 10:00:01,000 INFO medtl.train.engine: epoch 0: train_loss=0.7\n")


def make_study(root: Path, with_curve_csv: bool = True, fraction_axis: bool = True) -> Path:
    """A study directory: study.json, comparison.csv and (optionally) learning_curve.csv."""
    study = root / "study"
    study.mkdir(parents=True)
    axes = ["strategy", "train_fraction"] if fraction_axis else ["strategy", "seed"]
    levels = ["0.25", "0.5", "1"] if fraction_axis else ["0", "1", "2"]
    cells, rows, curve = [], [], []
    for s_i, strategy in enumerate(("fe", "ft")):
        for f_i, level in enumerate(levels):
            name = f"{strategy}-{level}"
            cells.append({"name": name, "axes": {axes[0]: strategy, axes[1]: level}, "run_dir": f"cells/{name}",
                          "status": "done"})
            auc = 0.7 + 0.05 * f_i + 0.05 * s_i
            acc = auc - 0.08
            metrics = {k: (v, v - 0.05, min(1.0, v + 0.05)) for k, v in
                       {"accuracy": acc, "sensitivity": acc, "specificity": acc, "precision": acc, "f1": acc,
                        "auc": auc}.items()}
            rows.append([name, strategy, level, 100, *[x for k in metrics for x in metrics[k]],
                         "" if name == "fe-" + levels[0] else 0.01 * (f_i + 1), "", "fe-" + levels[0], ""])
            curve.append([strategy, level, auc, auc - 0.05, auc + 0.05, acc, acc - 0.05, acc + 0.05, name])
    cells.append({"name": "broken", "axes": {axes[0]: "ft", axes[1]: "x"}, "run_dir": "cells/broken",
                  "status": "failed", "error": "TrainingError: loss is NaN"})
    (study / "study.json").write_text(json.dumps({"name": "toy-study", "baseline": "fe-" + levels[0], "axes": axes,
                                                  "cells": cells}))
    metric_cols = [f"{k}{s}" for k in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
                   for s in ("", "_lo", "_hi")]
    _write_csv(study / "comparison.csv", ["cell", *axes, "n", *metric_cols, "p_auc_delong", "p_acc_mcnemar",
                                          "paired_with", "reason"], rows)
    if with_curve_csv and fraction_axis:
        _write_csv(study / "learning_curve.csv", ["series", "train_fraction", "auc", "auc_lo", "auc_hi", "accuracy",
                                                  "accuracy_lo", "accuracy_hi", "cell"], curve)
    return study


@pytest.fixture(scope="session")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary run with models, no validation predictions (the format before issue 5)."""
    return make_run(tmp_path_factory.mktemp("binary"))


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary run with val_predictions.csv, a validation-chosen threshold and a temperature."""
    rule = {"rule": "sensitivity", "target": 0.9, "threshold": 0.42, "sensitivity": 0.91, "specificity": 0.7,
            "n_positive": 4, "n_negative": 4}
    return make_run(tmp_path_factory.mktemp("calibrated"), val=True, patients=True, threshold=0.42,
                    extra_model_fields={"threshold_rule": rule, "temperature": 1.7}, name="calibrated")


@pytest.fixture(scope="session")
def multiclass_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-class run whose model files are missing."""
    return make_run(tmp_path_factory.mktemp("multi"), k=3, model=False, name="three-class")


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
