"""Batched inference on pre-decoded uint8 images: class probabilities and backbone embeddings."""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import track
from torch import nn

from medtl.data.transforms import Normalizer
from medtl.train.fast import FastForward


def _batches(images: np.ndarray, indices: np.ndarray, batch_size: int, label: str | None = None):
    """uint8 NCHW batches; a rich progress bar when ``label`` is given."""
    starts = range(0, len(indices), batch_size)
    if label is not None and len(starts) > 1:
        starts = track(starts, description=label, transient=True)
    for start in starts:
        chunk = images[indices[start:start + batch_size]]
        yield torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)


@torch.inference_mode()
def predict_probs(model: nn.Module, normalizer: Normalizer, images: np.ndarray, indices: np.ndarray,
                  batch_size: int = 64, tta: str = "none", device: str = "cpu",
                  progress: bool = False, fast: bool = True) -> np.ndarray:
    """Softmax probabilities ``(len(indices), K)``; ``tta='hflip'`` averages with the mirrored image.

    ``fast``: run the model traced and frozen on CPU (:mod:`medtl.train.fast`).
    """
    model = model.to(device).eval()
    run = FastForward(model, len(indices) * (2 if tta == "hflip" else 1), fast)
    out = []
    for batch in _batches(images, np.asarray(indices), batch_size, "predicting" if progress else None):
        x = normalizer(batch.to(device))
        probs = run(x).float().softmax(1)
        if tta == "hflip":
            probs = 0.5 * (probs + run(torch.flip(x, dims=[3])).float().softmax(1))
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@torch.inference_mode()
def embed(backbone: nn.Module, normalizer: Normalizer, images: np.ndarray, indices: np.ndarray,
          batch_size: int = 64, flip: bool = False, device: str = "cpu", progress: bool = False,
          fast: bool = True) -> torch.Tensor:
    """Pooled backbone features ``(len(indices), D)`` of the (optionally mirrored) images.

    ``fast``: run the backbone traced and frozen on CPU (:mod:`medtl.train.fast`).
    """
    backbone = backbone.to(device).eval()
    run = FastForward(backbone, len(indices), fast)
    out = []
    label = ("embedding (mirrored)" if flip else "embedding") if progress else None
    for batch in _batches(images, np.asarray(indices), batch_size, label):
        x = normalizer(batch.to(device))
        if flip:
            x = torch.flip(x, dims=[3])
        out.append(run(x).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def head_probs(head: nn.Module, features: torch.Tensor, flipped: torch.Tensor | None = None) -> np.ndarray:
    """Softmax of a head on precomputed features, averaged with the mirrored features when given."""
    head = head.eval()
    probs = head(features).softmax(1)
    if flipped is not None:
        probs = 0.5 * (probs + head(flipped).softmax(1))
    return probs.numpy()
