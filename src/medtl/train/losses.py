"""Training losses of the engine (``train.loss``): cross-entropy, or the softmax focal loss of Lin et al. (2017).

The focal loss multiplies each image's cross-entropy by ``(1 - p_t)^gamma``, where ``p_t`` is the
probability the model gives the image's true class: well classified (easy) images contribute little,
so the many easy majority-class images stop dominating the gradient. ``train.class_weights: balanced``
supplies the per-class ``alpha``, giving the alpha-balanced focal loss of the paper.

torchvision's ``sigmoid_focal_loss`` is the binary, per-logit sigmoid form (detection); medtl's heads
are a softmax over K classes, so the loss is built on ``torch.nn.functional.cross_entropy`` with
``reduction='none'``: label smoothing, class weights and soft (Mixup / CutMix) targets keep torch's own
semantics, and ``gamma = 0`` is exactly :class:`torch.nn.CrossEntropyLoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtl.config import TrainConfig


class FocalLoss(nn.Module):
    """Softmax focal loss ``(1 - p_t)^gamma · CE``, reduced like :class:`torch.nn.CrossEntropyLoss`.

    Hard targets (class indices): ``CE`` is torch's per-image cross-entropy with ``weight`` (alpha) and
    ``label_smoothing``; ``p_t`` is the softmax probability of the labelled class; the mean divides by the
    summed weights of the batch's labels, as torch does. Soft targets (class probabilities, e.g. Mixup):
    ``p_t = Σ_k t_k p_k``, the probability the model puts on the target distribution, and the mean is over
    images (torch's rule for soft targets).

    Args:
        gamma: Focusing parameter (0: plain cross-entropy; 2: the paper's default).
        weight: Per-class weights (alpha), or None.
        label_smoothing: As in :class:`torch.nn.CrossEntropyLoss` (hard targets only; soft targets carry theirs).
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target.is_floating_point()
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none",
                             label_smoothing=0.0 if soft else self.label_smoothing)
        probs = logits.softmax(1)
        p_t = (probs * target).sum(1) if soft else probs.gather(1, target[:, None]).squeeze(1)
        loss = (1.0 - p_t).clamp(min=0.0).pow(self.gamma) * ce
        if soft or self.weight is None:
            return loss.mean()
        return loss.sum() / self.weight[target].sum()


def make_losses(cfg: TrainConfig, class_weights: torch.Tensor | None) -> tuple[nn.Module, nn.Module]:
    """The loss of plain batches (class indices, ``train.label_smoothing``) and of mixed batches (soft
    targets that already include the smoothing), for ``train.loss``."""
    if cfg.loss == "focal":
        return (FocalLoss(cfg.focal_gamma, class_weights, cfg.label_smoothing),
                FocalLoss(cfg.focal_gamma, class_weights))
    # With class weights, torch averages a soft-target loss over images, not over the weights (a constant rescaling).
    return (nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing),
            nn.CrossEntropyLoss(weight=class_weights))
