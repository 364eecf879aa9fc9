"""Tensors from pre-decoded uint8 images: train-only augmentation, then normalisation.

Images are decoded and resized once (``medtl.data.sources.load_images``) and held as uint8
``(N, S, S, C)``; these datasets only augment, replicate grayscale to the model's three
channels and normalise with the weights' mean/std.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from medtl.config import AugmentConfig
from medtl.data.storage import take_one


def build_augment(cfg: AugmentConfig) -> v2.Compose | None:
    """The train-time augmentation pipeline on uint8 CHW tensors, or None when none is set."""
    if not cfg.active:
        return None
    ops: list[torch.nn.Module] = []
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.vflip:
        ops.append(v2.RandomVerticalFlip())
    if cfg.rotate or cfg.zoom or cfg.shift:
        shift = (cfg.shift, cfg.shift) if cfg.shift else None
        scale = (1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom else None
        ops.append(v2.RandomAffine(degrees=cfg.rotate, translate=shift, scale=scale,
                                   interpolation=v2.InterpolationMode.BILINEAR))
    if cfg.brightness or cfg.contrast:
        ops.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
    return v2.Compose(ops)


TTA_VIEWS: dict[str, tuple[str, ...]] = {
    "none": ("image",),
    "hflip": ("image", "hflip"),
    "hflip_zoom": ("image", "hflip", "zoom", "zoom_hflip"),
}
"""The views each ``evaluate.tta`` setting averages the softmax over."""
TTA_ZOOM = 0.9
"""The centre crop (fraction of the side) of the ``zoom`` views, resized back to the full size."""


def tta_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One test-time view of pixel images ``(B, C, H, W)`` (uint8 or float in 0–255), before normalising.

    ``image``: as is; ``hflip``: mirrored left-right; ``zoom``: the central ``TTA_ZOOM`` crop resized
    back to ``H × W`` (bilinear, float); ``zoom_hflip``: its mirror.
    """
    if view == "image":
        return x
    if view == "hflip":
        return torch.flip(x, dims=[3])
    if view in ("zoom", "zoom_hflip"):
        h, w = x.shape[-2:]
        ch, cw = round(h * TTA_ZOOM), round(w * TTA_ZOOM)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = x[..., top:top + ch, left:left + cw].float()
        z = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        return torch.flip(z, dims=[3]) if view == "zoom_hflip" else z
    raise ValueError(f"test-time view {view!r}: use one of image, hflip, zoom, zoom_hflip")


class Normalizer:
    """uint8 ``(B, C, H, W)`` → float, 1 channel replicated to 3, normalised by mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=torch.channels_last)


class ImageArrayDataset(Dataset):
    """Items ``(uint8 CHW tensor, label)`` from a uint8 array (in RAM or a memmap), augmented when asked."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 augment: v2.Compose | None = None) -> None:
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def targets(self) -> np.ndarray:
        """The label of every item, in item order (no image is read; ``train.sampler: balanced``)."""
        return np.asarray(self.labels)[self.indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        idx = self.indices[i]
        x = torch.from_numpy(np.ascontiguousarray(take_one(self.images, idx))).permute(2, 0, 1)
        if self.augment is not None:
            x = self.augment(x)
        return x, int(self.labels[idx])
