"""Tensors from pre-decoded uint8 images: train-only augmentation, then normalisation.

Images are decoded and resized once (``medtl.data.sources.load_images``) and held as uint8
``(N, S, S, C)``; these datasets only augment, replicate grayscale to the model's three
channels and normalise with the weights' mean/std.

Augmentation: the torchvision v2 ops of ``data.augment`` (flips, affine, colour jitter) first, then
the albumentations families (elastic, grid distortion, gamma, CLAHE, blur, noise, erasing), which
torchvision lacks in part (CLAHE, grid distortion, random gamma). albumentations draws from its own
generators; :class:`AlbumentationsFamilies` reseeds them from torch's RNG on every image, so every
path that seeds torch (DataLoader workers, offline copies, cached prefix views) reproduces its images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from medtl.config import AugmentConfig, AugmentFamily
from medtl.data.storage import take_one

if TYPE_CHECKING:
    import albumentations as A


def build_augment(cfg: AugmentConfig) -> v2.Compose | None:
    """The train-time augmentation pipeline on uint8 CHW tensors, or None when none is set.

    Without albumentations families the pipeline is exactly the torchvision one (same ops, same draws
    from torch's RNG); the families come after it as one :class:`AlbumentationsFamilies` step.
    """
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
    if cfg.families:
        ops.append(AlbumentationsFamilies(cfg.families))
    return v2.Compose(ops)


def albumentations_transform(name: str, fam: AugmentFamily) -> A.BasicTransform:
    """The albumentations transform of family ``name`` (a key of ``medtl.config.AUGMENT_FAMILIES``).

    albumentations and OpenCV are imported here, not at module level: together they add about 60 MB
    of resident memory and 100 modules to every process, and only configs with families need them.
    """
    import albumentations as A
    import cv2

    f: Any = fam
    if name == "elastic":
        return A.ElasticTransform(alpha=f.alpha, sigma=f.sigma, border_mode=cv2.BORDER_CONSTANT, fill=0, p=f.p)
    if name == "grid":
        return A.GridDistortion(num_steps=f.steps, distort_limit=(-f.limit, f.limit), border_mode=cv2.BORDER_CONSTANT,
                                fill=0, p=f.p)
    if name == "gamma":
        return A.RandomGamma(gamma_limit=(f.range[0] * 100, f.range[1] * 100), p=f.p)
    if name == "clahe":
        return A.CLAHE(clip_limit=(f.clip, f.clip), tile_grid_size=(f.tiles, f.tiles), p=f.p)
    if name == "blur":
        return A.GaussianBlur(blur_limit=0, sigma_limit=tuple(f.sigma), p=f.p)
    if name == "noise":
        return A.GaussNoise(std_range=tuple(f.std), per_channel=False, p=f.p)
    if name == "erasing":
        return A.Erasing(scale=tuple(f.area), fill=0, p=f.p)
    raise ValueError(f"augmentation family {name!r}: not one of medtl.config.AUGMENT_FAMILIES")


class AlbumentationsFamilies(torch.nn.Module):
    """albumentations families on a uint8 CHW tensor, their random draws seeded from torch's RNG.

    Each call draws one 63-bit seed with ``torch.randint`` and reseeds the albumentations pipeline with
    it, so the result depends only on torch's RNG state (seeded per DataLoader worker by Lightning, per
    copy or per cached view by medtl), never on albumentations' own global state.

    Args:
        families: ``{name: config}`` in application order (``AugmentConfig.families``).
    """

    def __init__(self, families: dict[str, AugmentFamily]) -> None:
        import albumentations as A

        super().__init__()
        self.names = list(families)
        self.pipeline = A.Compose([albumentations_transform(n, f) for n, f in families.items()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        self.pipeline.set_random_seed(seed)
        image = np.ascontiguousarray(x.permute(1, 2, 0).numpy())
        out = self.pipeline(image=image)["image"]
        if out.ndim == 2:  # one channel in, one channel out
            out = out[..., None]
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)

    def extra_repr(self) -> str:
        return ", ".join(self.names)


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
