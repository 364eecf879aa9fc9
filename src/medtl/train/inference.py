"""Batched inference on pre-decoded uint8 images: class probabilities and backbone embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from rich.progress import track
from torch import nn

from medtl.data.storage import take
from medtl.data.transforms import TTA_VIEWS, Normalizer, tta_view
from medtl.models.fast import FastForward


def _batches(images: np.ndarray, indices: np.ndarray, batch_size: int, label: str | None = None):
    """uint8 NCHW batches; a rich progress bar when ``label`` is given."""
    starts = range(0, len(indices), batch_size)
    if label is not None and len(starts) > 1:
        starts = track(starts, description=label, transient=True)
    for start in starts:
        chunk = take(images, indices[start:start + batch_size])  # a memmap's pages are released after the copy
        yield torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)


@torch.inference_mode()
def predict_probs(model: nn.Module, normalizer: Normalizer, images: np.ndarray, indices: np.ndarray,
                  batch_size: int = 64, tta: str = "none", device: str = "cpu",
                  progress: bool = False, fast: bool = True) -> np.ndarray:
    """Softmax probabilities ``(len(indices), K)``, averaged over the views of ``tta`` (``TTA_VIEWS``).

    ``fast``: run the model traced and frozen on CPU (:mod:`medtl.models.fast`).
    """
    model = model.to(device).eval()
    views = TTA_VIEWS[tta]
    run = FastForward(model, len(indices) * len(views), fast)
    out = []
    for batch in _batches(images, np.asarray(indices), batch_size, "predicting" if progress else None):
        batch = batch.to(device)
        probs = sum(run(normalizer(tta_view(batch, v))).float().softmax(1) for v in views) / len(views)
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@torch.inference_mode()
def embed(backbone: nn.Module, normalizer: Normalizer, images: np.ndarray, indices: np.ndarray,
          batch_size: int = 64, view: str = "image", device: str = "cpu", progress: bool = False,
          fast: bool = True) -> torch.Tensor:
    """Pooled backbone features ``(len(indices), D)`` of one test-time ``view`` of the images (``tta_view``).

    ``fast``: run the backbone traced and frozen on CPU (:mod:`medtl.models.fast`).
    """
    backbone = backbone.to(device).eval()
    run = FastForward(backbone, len(indices), fast)
    out = []
    label = (f"embedding ({view})" if view != "image" else "embedding") if progress else None
    for batch in _batches(images, np.asarray(indices), batch_size, label):
        out.append(run(normalizer(tta_view(batch.to(device), view))).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def head_probs(head: nn.Module, views: Sequence[torch.Tensor]) -> np.ndarray:
    """Softmax of a head on precomputed features, averaged over the test-time views' features."""
    head = head.eval()
    return (sum(head(f).softmax(1) for f in views) / len(views)).numpy()
