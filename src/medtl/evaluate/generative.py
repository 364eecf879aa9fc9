"""Quality of a generated image set, on feature vectors: Fréchet distance and precision/recall.

Both are pure functions of two feature matrices ``(N, D)``; ``medtl synth`` feeds them pooled
EfficientNet-Lite0 ImageNet features (the offline ``packaged:efficientnet_lite0`` weights) and names
the distance "FD (Lite0 features)". It is *not* FID: FID is defined on Inception-v3 features, whose
weights are not available offline, so the numbers are not comparable with published FIDs — only
with each other (synthetic vs training, and the real train-vs-validation reference).

* :func:`frechet_distance` — ``|μ₁−μ₂|² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)`` between Gaussians fitted to the
  two sets (Heusel et al., 2017), with ``scipy.linalg.sqrtm`` as in the reference ``pytorch-fid``.
* :func:`precision_recall` — improved precision and recall (Kynkäänniemi et al., 2019): each set's
  manifold is the union of balls around its points with radius the distance to the k-th nearest
  neighbour (k = 3); precision is the share of generated points inside the real manifold, recall the
  share of real points inside the generated one.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import linalg

log = logging.getLogger(__name__)

__all__ = ["frechet_distance", "knn_radii", "precision_recall"]


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows are samples).

    A tiny ``eps`` is added to the diagonals when the product of covariances is singular (fewer
    samples than dimensions), as ``pytorch-fid`` does.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 samples per set (got {len(a)} and {len(b)})")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 0 distance to itself is the first


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` (k-NN radii; Kynkäänniemi et al., 2019).

    Returns:
        ``(precision, recall)``, each in [0, 1].
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set (got {len(r)}, {len(f)})")
    r_rad, f_rad = knn_radii(r, k), knn_radii(f, k)
    cross = torch.cdist(f, r)  # (fake, real)
    precision = (cross <= r_rad[None, :]).any(dim=1).double().mean()
    recall = (cross <= f_rad[:, None]).any(dim=0).double().mean()
    return float(precision), float(recall)
