"""Grad-CAM heat maps (via ``pytorch_grad_cam``) with an automatically chosen target layer.

The target layer is the last cut point of ``model.backbone`` (see
:func:`medtl.transfer.freeze.cut_points`) whose output is a spatial feature map (4-D, more than one
pixel), found with forward hooks on a dummy input. Asking the model rather than a table of names
makes it work for every timm family, for frozen and truncated backbones, and for heads stacked
on any of them.

Grad-CAM maps can look plausible while saying nothing about the model (Adebayo et al., 2018,
"Sanity checks for saliency maps"). :func:`cam_sanity_check` re-initialises the head and the
top cut points of a copy of the model and measures the Spearman rank correlation between the
maps of the trained and the randomised model; a high correlation means the maps mostly reflect
the input image, not what the model learnt.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from medtl.errors import ConfigError, DataError
from medtl.transfer.freeze import cut_points

logger = logging.getLogger(__name__)

SANITY_MAX_RHO = 0.5
"""Mean Spearman correlation above which :func:`cam_sanity_check` flags the maps."""


def _backbone(model: nn.Module) -> nn.Module:
    """``model.backbone`` of a :class:`~medtl.models.network.TransferNet`, else the model itself."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block; each module's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def _gradients_on(model: nn.Module) -> Iterator[None]:
    """All parameters require gradients inside the block (frozen layers too), restored after.

    Grad-CAM needs the gradient of the class score with respect to the target layer's output,
    which autograd only tracks when something below it requires a gradient.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def feature_map_shapes(model: nn.Module, image_size: int, in_chans: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape of each backbone cut point, in the order they run on a dummy input.

    Args:
        model: A :class:`~medtl.models.network.TransferNet` or a bare backbone.
        image_size: Side of the square dummy input.
        in_chans: Channels of the dummy input.

    Returns:
        ``[(cut_point, output_shape)]``; cut points that return no tensor are left out.
    """
    backbone = _backbone(model)
    seen: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                seen.append((name, tuple(output.shape)))
        return hook

    hooks = [backbone.get_submodule(n).register_forward_hook(record(n)) for n in cut_points(backbone)]
    device = next(backbone.parameters()).device
    try:
        with _eval_mode(backbone), torch.no_grad():
            backbone(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return seen


def find_target_layer(model: nn.Module, image_size: int = 224, in_chans: int = 3) -> str:
    """Name (in ``model.backbone``) of the last cut point that outputs a spatial feature map.

    A 4-D output larger than 1x1 is preferred; a backbone whose maps are all 1x1 at this input
    size (e.g. a tiny input) falls back to the last 4-D output.

    Args:
        model: A :class:`~medtl.models.network.TransferNet` or a bare backbone.
        image_size: Input side the model is used at (the map size depends on it).
        in_chans: Input channels.

    Returns:
        The cut point's name, e.g. ``bn2``, ``layer4.1``, ``stages.3``.

    Raises:
        ConfigError: When no cut point outputs a 4-D tensor.
    """
    shapes = feature_map_shapes(model, image_size, in_chans)
    maps = [(n, s) for n, s in shapes if len(s) == 4]
    spatial = [n for n, s in maps if s[2] * s[3] > 1]
    if spatial:
        return spatial[-1]
    if maps:
        logger.warning("every feature map is 1x1 at input size %d; Grad-CAM will be uniform", image_size)
        return maps[-1][0]
    raise ConfigError(f"no cut point of this backbone outputs a 4-D feature map at input size {image_size} "
                      f"(cut points: {', '.join(cut_points(_backbone(model)))}); Grad-CAM needs one")


def grad_cam(model: nn.Module, images: torch.Tensor, targets: int | Sequence[int],
             layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps of ``images`` for the given class indices.

    Args:
        model: The classifier (logits out). Its modes and ``requires_grad`` flags are restored after.
        images: Normalised input batch ``(B, C, H, W)`` on the model's device.
        targets: Class index per image (one int for all).
        layer: Cut point of ``model.backbone`` to explain; found by :func:`find_target_layer` when None.

    Returns:
        ``(B, H, W)`` float maps in [0, 1] (each scaled to its own maximum; all zero when the class
        score has no positive gradient-weighted evidence).

    Raises:
        DataError: ``images`` is not a 4-D batch or ``targets`` has the wrong length.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.ndim != 4:
        raise DataError(f"grad_cam needs a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    classes = [int(targets)] * images.shape[0] if isinstance(targets, int) else [int(t) for t in targets]
    if len(classes) != images.shape[0]:
        raise DataError(f"grad_cam: {len(classes)} targets for {images.shape[0]} images")
    layer = layer or find_target_layer(model, images.shape[-1], images.shape[1])
    module = _backbone(model).get_submodule(layer)
    with _eval_mode(model), _gradients_on(model), GradCAM(model=model, target_layers=[module]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    return np.asarray(maps, dtype=np.float32)


def randomized_copy(model: nn.Module, layer: str | None = None, n_cut_points: int = 2,
                    seed: int = 0, image_size: int = 224) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with its top layers re-initialised (cascading model randomisation).

    Re-initialised: the head (when the model has one), every cut point above ``layer``, and the
    ``n_cut_points`` cut points ending at ``layer`` (the Grad-CAM target layer by default).

    Args:
        model: The trained model (left untouched).
        layer: Cut point the randomisation reaches down to; :func:`find_target_layer` when None.
        n_cut_points: How many cut points at and below ``layer`` are randomised (>= 1).
        seed: Seed of the new weights.
        image_size: Input size used to find ``layer``.

    Returns:
        The copy and the names of the randomised parts: ``head`` (the classifier head) first, then
        ``backbone.<cut point>`` in forward order.
    """
    if n_cut_points < 1:
        raise ConfigError(f"randomized_copy needs n_cut_points >= 1, got {n_cut_points}")
    clone = copy.deepcopy(model)
    backbone = _backbone(clone)
    points = cut_points(backbone)
    stop = points.index(layer or find_target_layer(clone, image_size))
    names = points[max(0, stop - n_cut_points + 1):]
    parts = [(f"backbone.{n}", backbone.get_submodule(n)) for n in names]
    if backbone is not clone and isinstance(getattr(clone, "head", None), nn.Module):
        parts.insert(0, ("head", clone.head))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _, part in parts:
            for module in part.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return clone, [n for n, _ in parts]


@dataclass(frozen=True)
class SanityCheck:
    """Model-randomisation test of Grad-CAM maps (Adebayo et al., 2018).

    Attributes:
        spearman: Rank correlation per image between the trained and randomised model's maps
            (see :func:`spearman_maps`; nan where the trained model's map is constant).
        mean_spearman: Mean of the defined correlations (nan when none is).
        flagged: True when ``mean_spearman`` exceeds ``max_rho``: the maps barely depend on the
            learnt weights.
        randomized: The parts re-initialised.
        max_rho: The flagging threshold.
    """

    spearman: list[float]
    mean_spearman: float
    flagged: bool
    randomized: list[str]
    max_rho: float


def spearman_maps(reference: np.ndarray, other: np.ndarray) -> list[float]:
    """Spearman correlation of each pair of maps ``reference[i]``, ``other[i]``.

    A constant ``other`` map (e.g. all zero: no positive evidence left after randomisation) shares
    no spatial ranking with the reference and counts as 0; a constant reference gives nan.
    """
    out = []
    for x, y in zip(reference, other, strict=True):
        x, y = np.ravel(x), np.ravel(y)
        if np.ptp(x) == 0:
            out.append(math.nan)
        elif np.ptp(y) == 0:
            out.append(0.0)
        else:
            out.append(float(stats.spearmanr(x, y).statistic))
    return out


def cam_sanity_check(model: nn.Module, images: torch.Tensor, targets: int | Sequence[int],
                     layer: str | None = None, maps: np.ndarray | None = None, n_cut_points: int = 2,
                     seed: int = 0, max_rho: float = SANITY_MAX_RHO) -> SanityCheck:
    """Compare Grad-CAM maps of ``model`` with those of a copy whose top layers are randomised.

    Args:
        model: The trained classifier.
        images: Normalised batch ``(B, C, H, W)``.
        targets: Class index per image.
        layer: Grad-CAM target layer (found automatically when None).
        maps: The trained model's maps when already computed (saves a pass).
        n_cut_points: Cut points randomised at and below ``layer`` (see :func:`randomized_copy`).
        seed: Seed of the random weights.
        max_rho: Flag when the mean Spearman correlation is above this.

    Returns:
        The :class:`SanityCheck`.
    """
    layer = layer or find_target_layer(model, images.shape[-1], images.shape[1])
    trained = maps if maps is not None else grad_cam(model, images, targets, layer)
    random_model, parts = randomized_copy(model, layer, n_cut_points, seed, images.shape[-1])
    rho = spearman_maps(trained, grad_cam(random_model, images, targets, layer))
    defined = [r for r in rho if math.isfinite(r)]
    mean = float(np.mean(defined)) if defined else math.nan
    flagged = bool(defined) and mean > max_rho
    if flagged:
        logger.warning("Grad-CAM sanity check: maps of the randomised model correlate with the trained model's "
                       "(mean Spearman %.2f > %.2f); the maps may reflect the image more than the model", mean,
                       max_rho)
    return SanityCheck(rho, mean, flagged, parts, max_rho)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heat map ``cam`` blended over a uint8 image (grey or RGB); returns uint8 RGB ``(H, W, 3)``.

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8.
        cam: Map in [0, 1]; resized to the image when its size differs.
        alpha: Weight of the heat map.
    """
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    rgb = img.astype(np.float32) / 255.0
    mask = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if mask.shape != rgb.shape[:2]:
        mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb, mask, use_rgb=True, image_weight=1.0 - alpha)


def select_cases(labels: np.ndarray, probs: np.ndarray, pred: np.ndarray, positive_index: int | None,
                 per_kind: int = 2) -> dict[str, list[int]]:
    """Indices of the most confident true/false positives/negatives (binary) or right/wrong cases.

    Binary: TP and FP with the highest positive score, FN and TN with the lowest. Multiclass:
    ``correct`` and ``wrong`` with the highest top probability.

    Args:
        labels: True class per case.
        probs: Probabilities (n, K).
        pred: Predicted class per case (at the operating point).
        positive_index: Positive class of a binary problem (None for multiclass).
        per_kind: Cases per kind.

    Returns:
        ``{kind: [indices]}`` in display order; a kind with no case has an empty list.
    """
    labels, probs, pred = np.asarray(labels), np.asarray(probs, dtype=float), np.asarray(pred)
    if positive_index is None or probs.shape[1] != 2:
        conf = probs.max(axis=1)
        kinds = {"correct": (labels == pred, -conf), "wrong": (labels != pred, -conf)}
    else:
        score, pos = probs[:, positive_index], positive_index
        is_pos, said_pos = labels == pos, pred == pos
        kinds = {"TP": (is_pos & said_pos, -score), "FP": (~is_pos & said_pos, -score),
                 "FN": (is_pos & ~said_pos, score), "TN": (~is_pos & ~said_pos, score)}
    out = {}
    for kind, (mask, key) in kinds.items():
        idx = np.flatnonzero(mask)
        out[kind] = idx[np.argsort(key[idx], kind="stable")][:per_kind].tolist()
    return out
