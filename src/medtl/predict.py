"""Use a finished run: predict new images, or evaluate its model(s) on another dataset."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from medtl import artifact
from medtl.config import DataConfig, EvaluateConfig
from medtl.data.images import open_image, to_array
from medtl.data.sources import load_images, load_table
from medtl.data.transforms import TTA_VIEWS
from medtl.errors import DataError, MedtlError
from medtl.evaluate.metrics import summarize
from medtl.train.inference import predict_probs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, plus the image files found (recursively) in folders, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            out.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return out


def predict_files(run_dir: Path, paths: list[Path]) -> list[dict]:
    """Class probabilities for each image, averaged over the run's fold models.

    Unreadable files are not dropped: their row carries the error and empty probabilities.
    """
    models, meta = artifact.load_fold_models(run_dir)
    pre = meta.preprocess
    rows, arrays, ok = [], [], []
    for path in expand_paths(paths):
        try:
            arrays.append(to_array(open_image(path), pre.image_size, pre.color, pre.resize, pre.crop))
            ok.append(len(rows))
            rows.append({"path": str(path), "error": ""})
        except DataError as exc:
            log.warning("%s", exc)
            rows.append({"path": str(path), "error": str(exc)})
    if arrays:
        probs = _ensemble(list(models.values()), meta, np.stack(arrays))
        for row_index, p in zip(ok, probs, strict=True):
            rows[row_index].update({f"prob_{n}": float(v) for n, v in zip(meta.class_names, p, strict=True)})
            rows[row_index]["pred"] = meta.class_names[_decide(p, meta)]
    return rows


def _ensemble(folds: list[list], meta: artifact.ModelMeta, images: np.ndarray,
              idx: np.ndarray | None = None) -> np.ndarray:
    """Mean probabilities over fold models; a fold's ensemble members (``train.ensemble``) are averaged first,
    then the run's temperature is applied per fold — as the run itself did for its out-of-fold predictions."""
    idx = np.arange(len(images)) if idx is None else idx
    runs = [np.mean([predict_probs(m, meta.normalizer(), images, idx, tta=meta.tta) for m in members], axis=0)
            for members in folds]
    if meta.temperature:  # the run's validation-fitted temperature, applied per fold model as in training
        from medtl.evaluate.calibration import apply_temperature

        runs = [apply_temperature(r, meta.temperature) for r in runs]
    return np.mean(runs, axis=0)


def _decide(p: np.ndarray, meta: artifact.ModelMeta) -> int:
    if len(p) == 2 and meta.positive_index is not None:
        pos = meta.positive_index
        return pos if p[pos] >= meta.threshold else 1 - pos
    return int(np.argmax(p))


def rows_to_csv(rows: list[dict], class_names: list[str]) -> str:
    """CSV text with a fixed column order."""
    buf = io.StringIO()
    fields = ["path", *[f"prob_{n}" for n in class_names], "pred", "error"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def evaluate_run(run_dir: Path, data: DataConfig | None = None, out: Path | None = None,
                 evaluate: EvaluateConfig | None = None, tta: str | None = None) -> dict:
    """Metrics of a run: recomputed from its predictions, or on ``data`` with its saved models.

    On new data, the samples of the source's ``test`` split are used when it defines one, else all.
    ``tta`` (a key of ``TTA_VIEWS``) replaces the run's test-time augmentation: without ``data`` the
    run's own test images (out-of-fold for k-fold) are predicted again, each by its own fold's model,
    at the run's threshold and temperature — nothing in the run directory changes.
    """
    run_dir = Path(run_dir)
    meta = artifact.load_meta(run_dir)
    if tta is not None:
        if tta not in TTA_VIEWS:
            raise MedtlError(f"--tta {tta!r}: use one of {', '.join(TTA_VIEWS)}")
        meta.tta = tta
    ev = evaluate or EvaluateConfig(**meta.config.get("evaluate", {}))
    if data is None and tta is not None:
        labels, probs, groups = repredict_own(run_dir, meta)
    elif data is None:
        labels, probs, groups = _read_predictions(run_dir / "predictions.csv", meta.class_names)
    else:
        labels, probs, groups = _predict_dataset(run_dir, meta, data)
    metrics = summarize(labels, probs, groups, meta.class_names, meta.positive_index, meta.threshold,
                        ev.bootstrap, 0)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, allow_nan=False))
    return metrics


def _read_predictions(path: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise MedtlError(f"{path} not found; is the run finished?")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([[float(r[f"prob_{n}"]) for n in class_names] for r in rows])
    return labels, probs, np.array([r["group"] for r in rows], dtype=object)


def repredict_own(run_dir: Path, meta: artifact.ModelMeta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``predictions.csv`` predicted again by each row's fold model(s) with ``meta.tta``.

    The images are decoded as in training (the run's resolved data block); a row whose image is no
    longer in the data, or whose label changed, is an error naming it.
    """
    from medtl.config import ExperimentConfig

    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise MedtlError(f"{path} not found; is the run finished?")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    data = ExperimentConfig.model_validate(meta.config).data
    data = data.model_copy(update={"color": meta.preprocess.color})  # the colour the models were trained on
    loaded = load_images(load_table(data), data)
    where = {s.id: i for i, s in enumerate(loaded.table.samples)}
    missing = [r["id"] for r in rows if r["id"] not in where]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(rows)} predicted images are not in {data.location} "
                        f"any more (first: {missing[0]}); re-evaluate with the data the run was trained on")
    index = np.array([where[r["id"]] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    changed = [r["id"] for r, i in zip(rows, index, strict=True) if loaded.table.samples[i].label != int(r["label"])]
    if changed:
        raise DataError(f"{path}: the label of {len(changed)} image(s) differs from {data.location} "
                        f"(first: {changed[0]})")
    models, _ = artifact.load_fold_models(run_dir)
    folds = np.array([int(r["fold"]) for r in rows])
    probs = np.zeros((len(rows), len(meta.class_names)))
    for fold in np.unique(folds):
        if fold not in models:
            raise MedtlError(f"{run_dir}/{artifact.MODEL_DIR}: no model file for fold {fold}")
        rows_of = np.flatnonzero(folds == fold)
        probs[rows_of] = _ensemble([models[fold]], meta, loaded.images, index[rows_of])
    log.info("%d images predicted again with tta '%s' by their own fold's model", len(rows), meta.tta)
    return labels, probs, np.array([r["group"] for r in rows], dtype=object)


def _predict_dataset(run_dir: Path, meta: artifact.ModelMeta, data: DataConfig):
    pre = meta.preprocess
    data = data.model_copy(update={"classes": data.classes or list(meta.class_names),
                                   "image_size": pre.image_size, "color": pre.color, "resize": pre.resize,
                                   "crop": pre.crop})
    table = load_table(data)
    if table.class_names != meta.class_names:
        raise DataError(f"{data.location}: classes {table.class_names} differ from the model's {meta.class_names}")
    loaded = load_images(table, data)
    samples = loaded.table.samples
    keep = [i for i, s in enumerate(samples) if s.split == "test"] or list(range(len(samples)))
    models, _ = artifact.load_fold_models(run_dir)
    probs = _ensemble(list(models.values()), meta, loaded.images[keep])
    labels = np.array([samples[i].label for i in keep])
    groups = np.array([samples[i].patient or loaded.hashes[i] for i in keep], dtype=object)
    return labels, probs, groups
