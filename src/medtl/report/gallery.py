"""The report's Grad-CAM gallery: the most confident true/false positives/negatives of a run.

Each image is explained by the fold model that predicted it (its out-of-fold model), for the
class it was predicted as, and checked against a copy of that model with randomised top layers
(:func:`medtl.evaluate.cam.cam_sanity_check`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from medtl import artifact
from medtl.config import parse_config
from medtl.data.images import to_array
from medtl.data.samples import Sample
from medtl.data.sources import get_source
from medtl.errors import ConfigError, DataError, MedtlError
from medtl.evaluate.cam import (
    SANITY_MAX_RHO,
    SanityCheck,
    cam_sanity_check,
    find_target_layer,
    grad_cam,
    overlay,
    select_cases,
)
from medtl.evaluate.metrics import predict_classes
from medtl.report.figures import array_to_data_uri
from medtl.report.load import RunData

log = logging.getLogger(__name__)

_KIND_TITLES = {"TP": "true positive", "FP": "false positive", "FN": "false negative", "TN": "true negative",
                "correct": "correct", "wrong": "wrong"}


@dataclass
class GalleryItem:
    """One explained image."""

    kind: str
    title: str
    id: str
    label: str
    pred: str
    score: float
    fold: int
    image: str
    overlay: str


@dataclass
class Gallery:
    """The gallery and what could not be shown."""

    items: list[GalleryItem] = field(default_factory=list)
    layer: str | None = None
    sanity: SanityCheck | None = None
    notes: list[str] = field(default_factory=list)


def load_image(run: RunData, path: str) -> Image.Image:
    """The full-resolution image at ``path`` (a predictions.csv path), decoded by the run's data source.

    Raises:
        DataError: The run's config cannot be read, or the image is missing or cannot be decoded.
    """
    try:
        data = parse_config(run.config).data
    except ConfigError as exc:
        raise DataError(f"{run.path}/config.yaml: cannot tell the data source ({exc})") from None
    sample = Sample(id=path, path=path, label=0, patient=None, split=None)
    try:
        return get_source(data.source).decode(sample, data)[0]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None


def _fold_models(run: RunData) -> tuple[dict[int, torch.nn.Module], artifact.ModelMeta]:
    """The run's fold models by fold index (the first member of an ensemble)."""
    by_fold, meta = artifact.load_fold_models(run.path)
    return {fold: members[0] for fold, members in by_fold.items()}, meta


def _predicted(run: RunData) -> np.ndarray:
    """Predicted class per row of predictions.csv at the run's operating point."""
    return predict_classes(run.predictions.probs, run.positive_index, run.threshold)


def _combine(checks: list[SanityCheck]) -> SanityCheck | None:
    """One sanity check over all folds' images."""
    if not checks:
        return None
    rho = [r for c in checks for r in c.spearman]
    defined = [r for r in rho if math.isfinite(r)]
    mean = float(np.mean(defined)) if defined else math.nan
    return SanityCheck(rho, mean, bool(defined) and mean > SANITY_MAX_RHO, checks[0].randomized, SANITY_MAX_RHO)


def _load_cases(run: RunData, meta: artifact.ModelMeta, chosen: dict[str, list[int]],
                notes: list[str]) -> list[tuple[str, int, np.ndarray]]:
    """(kind, row, uint8 array) of the chosen rows whose image can be read."""
    pre = meta.preprocess
    cases = []
    for kind, rows in chosen.items():
        for row in rows:
            try:
                img = load_image(run, run.predictions.paths[row])
            except DataError as exc:
                notes.append(f"{run.predictions.ids[row]}: not shown ({exc})")
                continue
            cases.append((kind, row, to_array(img, pre.image_size, pre.color, pre.resize, pre.crop)))
    return cases


def _explain_fold(model: torch.nn.Module, meta: artifact.ModelMeta, arrays: list[np.ndarray], targets: list[int],
                  layer: str, device: str) -> tuple[np.ndarray, SanityCheck]:
    """Grad-CAM maps of one fold's images and their randomisation check."""
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)
    x = meta.normalizer()(batch)
    model = model.to(device)
    maps = grad_cam(model, x, targets, layer)
    return maps, cam_sanity_check(model, x, targets, layer, maps=maps)


def build_gallery(run: RunData, per_kind: int = 2, device: str = "cpu") -> Gallery:
    """Grad-CAM overlays of the most confident TP/FP/FN/TN (or correct/wrong) test images.

    Args:
        run: The loaded run directory.
        per_kind: Images per kind.
        device: Torch device for the models.

    Returns:
        The :class:`Gallery`; what could not be shown (no model, missing image files) is in ``notes``.
    """
    gallery = Gallery()
    if run.predictions is None or not len(run.predictions):
        gallery.notes.append("no predictions.csv: nothing to explain")
        return gallery
    try:
        models, meta = _fold_models(run)
    except (MedtlError, RuntimeError, OSError) as exc:
        gallery.notes.append(f"the model could not be loaded ({exc})")
        return gallery
    pred = _predicted(run)
    chosen = select_cases(run.predictions.labels, run.predictions.probs, pred, run.positive_index, per_kind)
    cases = _load_cases(run, meta, chosen, gallery.notes)
    if not cases:
        gallery.notes.append("none of the selected images could be read")
        return gallery
    gallery.layer = find_target_layer(next(iter(models.values())), meta.preprocess.image_size)
    _fill(gallery, run, models, meta, cases, pred, device)
    return gallery


def _fill(gallery: Gallery, run: RunData, models: dict[int, torch.nn.Module], meta: artifact.ModelMeta,
          cases: list[tuple[str, int, np.ndarray]], pred: np.ndarray, device: str) -> None:
    """Explain the cases fold by fold and append the gallery items in selection order."""
    table, names = run.predictions, run.class_names
    checks, overlays = [], {}
    for fold in sorted({int(table.folds[row]) for _, row, _ in cases}):
        mine = [(row, arr) for _, row, arr in cases if int(table.folds[row]) == fold]
        if fold not in models:
            gallery.notes.append(f"fold {fold}: no model file; its images are not explained")
            continue
        maps, check = _explain_fold(models[fold], meta, [a for _, a in mine], [int(pred[r]) for r, _ in mine],
                                    gallery.layer, device)
        checks.append(check)
        overlays.update({row: overlay(arr, cam) for (row, arr), cam in zip(mine, maps, strict=True)})
    gallery.sanity = _combine(checks)
    score_col = run.positive_index if run.positive_index is not None else None
    for kind, row, arr in cases:
        if row not in overlays:
            continue
        score = table.probs[row, score_col] if score_col is not None else table.probs[row].max()
        gallery.items.append(GalleryItem(kind, _KIND_TITLES.get(kind, kind), table.ids[row],
                                         names[table.labels[row]], names[pred[row]], float(score),
                                         int(table.folds[row]), array_to_data_uri(arr),
                                         array_to_data_uri(overlays[row])))
