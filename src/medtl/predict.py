"""Use a finished run: predict new images, or evaluate its model(s) on another dataset."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from medtl import artifact, rundir
from medtl.config import DataConfig, DicomConfig, EvaluateConfig
from medtl.data.images import IMAGE_EXTENSIONS, find_image_files, open_image, to_array
from medtl.data.sources import load_images, load_table
from medtl.data.transforms import TTA_VIEWS
from medtl.errors import DataError, MedtlError
from medtl.evaluate.metrics import predict_classes, summarize
from medtl.train.inference import predict_probs

log = logging.getLogger(__name__)

def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, plus the image files found (recursively) in folders, sorted.

    Folders are searched like the folder source searches class folders
    (:func:`~medtl.data.images.find_image_files`): hidden files such as ``.DS_Store`` or ``._x.jpg`` are skipped.

    Raises:
        DataError: A path does not exist, or no image file was found (naming the folders and what they hold).
    """
    from medtl.data.dicom import is_dicom_file

    out: list[Path] = []
    empty: list[str] = []
    for path in paths:
        if path.is_dir():
            images, others = find_image_files(path)
            dicoms = [p for p in others if is_dicom_file(p)]
            images = sorted([*images, *dicoms])
            others = [p for p in others if p not in set(dicoms)]
            out.extend(images)
            if not images:
                found = f"{len(others)} other files, e.g. {others[0].name}" if others else "no visible files"
                empty.append(f"{path} ({found})")
        elif path.exists():
            out.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not out:
        raise DataError(f"no image files to predict in {'; '.join(empty)}; images need one of the extensions "
                        f"{' '.join(sorted(IMAGE_EXTENSIONS))} or to be DICOM files (hidden files are skipped)")
    return out


def predict_files(run_dir: Path, paths: list[Path]) -> list[dict]:
    """Class probabilities for each image, averaged over the run's fold models.

    Unreadable files are not dropped: their row carries the error and empty probabilities.

    Raises:
        DataError: No image file was found, or none of the files could be decoded.
    """
    files = expand_paths(paths)
    models, meta = artifact.load_fold_models(rundir.require_complete(run_dir))
    pre = meta.preprocess
    rows, arrays, ok = [], [], []
    for path in files:
        try:
            for name, img in _decode_file(path, meta):
                arrays.append(to_array(img, pre.image_size, pre.color, pre.resize, pre.crop))
                ok.append(len(rows))
                rows.append({"path": name, "error": ""})
        except DataError as exc:
            log.warning("%s", exc)
            rows.append({"path": str(path), "error": str(exc)})
    if not arrays:
        raise DataError(f"none of the {len(rows)} image files could be decoded (first: {rows[0]['error']}); "
                        "nothing to predict")
    probs = _ensemble(list(models.values()), meta, np.stack(arrays))
    for row_index, p in zip(ok, probs, strict=True):
        rows[row_index].update({f"prob_{n}": float(v) for n, v in zip(meta.class_names, p, strict=True)})
        rows[row_index]["pred"] = meta.class_names[_decide(p, meta)]
    return rows


def _decode_file(path: Path, meta: artifact.ModelMeta) -> list[tuple[str, Image.Image]]:
    """The images of one file: a picture, or every frame of a DICOM file rendered with the run's DICOM policy
    (window, rescale and frame rules of ``data.dicom``; a multi-frame file gives ``path#frame=i`` rows).

    Raises:
        DataError: The file cannot be decoded (naming it and why).
    """
    from medtl.data.dicom import is_dicom_file, iter_frames

    if not is_dicom_file(path):
        return [(str(path), open_image(path))]
    cfg = DicomConfig(**(meta.config.get("data", {}).get("dicom") or {}))
    frames = [(f.index, f.image) for f in iter_frames(path, None, cfg)]
    if not frames:
        raise DataError(f"{path}: a DICOM file without frames; nothing to predict")
    if len(frames) == 1:
        return [(str(path), frames[0][1])]
    return [(f"{path}#frame={i}", img) for i, img in frames]


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
    return int(predict_classes(p[None, :], meta.positive_index, meta.threshold)[0])


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
    run_dir = rundir.require_complete(Path(run_dir))
    meta = artifact.load_meta(run_dir)
    if tta is not None:
        if tta not in TTA_VIEWS:
            raise MedtlError(f"--tta {tta!r}: use one of {', '.join(TTA_VIEWS)}")
        meta.tta = tta
    ev = evaluate or EvaluateConfig(**meta.config.get("evaluate", {}))
    if data is None and tta is not None:
        labels, probs, groups = repredict_own(run_dir, meta)
    elif data is None:
        table = rundir.read_predictions(run_dir / rundir.PREDICTIONS, (meta.class_names, meta.positive_index))
        labels, probs, groups = table.labels, table.probs, np.array(table.groups, dtype=object)
    else:
        labels, probs, groups = _predict_dataset(run_dir, meta, data)
    metrics = summarize(labels, probs, groups, meta.class_names, meta.positive_index, meta.threshold,
                        ev.bootstrap, 0)
    adaptation = rundir.read_metrics(run_dir).get("protocol", {}).get("adaptation")
    if adaptation:  # the models were adapted to unlabelled target images: every figure says so
        metrics["protocol"] = {"adaptation": adaptation}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, allow_nan=False))
    return metrics


def repredict_own(run_dir: Path, meta: artifact.ModelMeta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``predictions.csv`` predicted again by each row's fold model(s) with ``meta.tta``.

    The images are decoded as in training (the run's resolved data block); a row whose image is no
    longer in the data, or whose label changed, is an error naming it.
    """
    from medtl.config import ExperimentConfig

    path = run_dir / rundir.PREDICTIONS
    table = rundir.read_predictions(path, (meta.class_names, meta.positive_index))
    data = ExperimentConfig.model_validate(meta.config).data
    data = data.model_copy(update={"color": meta.preprocess.color})  # the colour the models were trained on
    loaded = load_images(load_table(data), data)
    where = {s.id: i for i, s in enumerate(loaded.table.samples)}
    ids, labels = table.ids, table.labels
    missing = [i for i in ids if i not in where]
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(ids)} predicted images are not in {data.location} "
                        f"any more (first: {missing[0]}); re-evaluate with the data the run was trained on")
    index = np.array([where[i] for i in ids])
    changed = [i for i, k, y in zip(ids, index, labels, strict=True) if loaded.table.samples[k].label != y]
    if changed:
        raise DataError(f"{path}: the label of {len(changed)} image(s) differs from {data.location} "
                        f"(first: {changed[0]})")
    models, _ = artifact.load_fold_models(run_dir)
    folds = table.folds
    probs = np.zeros((len(ids), len(meta.class_names)))
    for fold in np.unique(folds):
        if fold not in models:
            raise MedtlError(f"{run_dir}/{artifact.MODEL_DIR}: no model file for fold {fold}")
        rows_of = np.flatnonzero(folds == fold)
        probs[rows_of] = _ensemble([models[fold]], meta, loaded.images, index[rows_of])
    log.info("%d images predicted again with tta '%s' by their own fold's model", len(ids), meta.tta)
    return labels, probs, np.array(table.groups, dtype=object)


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
    probs = _ensemble(list(models.values()), meta, loaded.images, np.asarray(keep, dtype=np.int64))
    labels = np.array([samples[i].label for i in keep])
    groups = np.array([samples[i].patient or loaded.hashes[i] for i in keep], dtype=object)
    return labels, probs, groups
