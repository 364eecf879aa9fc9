"""Unsupervised domain adaptation with unlabelled target-domain images (``adapt:``).

Two kinds, both transductive (the target images are seen, never their labels):

- **Feature alignment while training** (``dann``, ``coral``): :class:`AlignmentModule` is the
  :class:`~medtl.train.engine.ClassifierModule` of the fit, with a domain loss added to every training
  step. Each step draws a batch of target images (or their cached prefix activations) — the draw depends
  only on the member's seed and the global step, so a resumed fit draws the same batches — and runs it
  through the backbone. DANN (Ganin & Lempitsky 2015): a small domain classifier on the pooled features
  behind a gradient-reversal layer, λ_p = weight · (2 / (1 + exp(-10 p)) - 1) with p the fraction of
  training done. Deep CORAL (Sun & Saenko 2016): weight · ‖C_s - C_t‖²_F / 4d² of the pooled features.
- **Test-time adaptation** (``tent``, Wang et al. 2021): :func:`tent` after training. Only the affine
  parameters of the BatchNorm layers of the trained part move, by minimising the entropy of the
  predictions on the target images, with BatchNorm normalising by the batch's statistics; the test
  images are then predicted with the layers normalising by the target images' statistics (the limit of
  the paper's batch mode over the whole target set, so a prediction does not depend on its batch).

The gradient reversal and the CORAL loss are a few lines each and written here: the PyPI libraries that
have them (``pytorch-adapt`` 0.0.83, last release January 2023; ``dalib`` 0.2, 2020; ``adapt`` is
TensorFlow) are unmaintained or bring their own training loops, which a Lightning module cannot use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medtl.config import AdaptConfig, DataConfig, TentConfig
from medtl.data.samples import LoadedImages
from medtl.data.sources import load_images, load_table, load_unlabelled_table
from medtl.data.sources.loading import UNLABELLED_SOURCES
from medtl.data.splits import Fold
from medtl.data.storage import take
from medtl.errors import ConfigError, DataError, TrainingError
from medtl.train.engine import ClassifierModule

log = logging.getLogger(__name__)

__all__ = ["TRANSDUCTIVE", "AdaptTarget", "AlignmentModule", "GradientReversal", "TargetRows", "adaptation_protocol",
           "classifier_module", "coral_loss", "dann_lambda", "load_target", "tent", "trained_batchnorms"]

TRANSDUCTIVE = "transductive: unlabelled target images used for adaptation"
"""The protocol statement every figure of an adapted run carries."""
_DRAW_SALT = 0xADA
"""Keeps the target draw apart from other seeded draws of the same member seed."""


# ---------------------------------------------------------------- the target images


@dataclass
class TargetRows:
    """A fold's unlabelled target images as rows of one array: decoded uint8 images ``(N, S, S, C)``
    (``images=True``) or cached prefix activations."""

    array: np.ndarray
    rows: np.ndarray
    images: bool = True

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, positions: np.ndarray) -> torch.Tensor:
        """The raw batch of the rows at ``positions`` (uint8 NCHW images, or activations as stored)."""
        chunk = take(self.array, self.rows[np.asarray(positions, dtype=np.int64)])
        x = torch.from_numpy(np.ascontiguousarray(chunk))
        return x.permute(0, 3, 1, 2) if self.images else x

    def draw(self, seed: int, step: int, size: int) -> torch.Tensor:
        """The target batch of training step ``step``: ``size`` rows without replacement, from ``(seed, step)``."""
        rng = np.random.default_rng([seed, step, _DRAW_SALT])
        return self.batch(rng.choice(len(self.rows), size=min(size, len(self.rows)), replace=False))


@dataclass
class AdaptTarget:
    """The run's target images: its own test images (``own``: each fold adapts to its test part) or the
    images of ``adapt.target``'s data block (every fold adapts to all of them)."""

    own: bool
    images: np.ndarray
    ids: list[str]
    paths: list[str]

    def rows(self, fold: Fold, array: np.ndarray | None = None, images: bool = True) -> TargetRows:
        """``fold``'s target rows of ``array`` (default the decoded images; an activation block has the same rows)."""
        rows = np.asarray(fold.test if self.own else np.arange(len(self.ids)), dtype=np.int64)
        return TargetRows(self.images if array is None else array, rows, images)

    def listing(self, folds: list[Fold]) -> list[tuple[int, str, str]]:
        """``(fold, id, path)`` of every target image of every fold (``adapt_targets.csv``)."""
        return [(f.index, self.ids[i], self.paths[i]) for f in folds for i in self.rows(f).rows]


def load_target(adapt: AdaptConfig, data: DataConfig, loaded: LoadedImages, folds: list[Fold],
                progress: bool = True) -> AdaptTarget:
    """The target images of ``adapt.target``, decoded like the training images; labels are never read.

    ``test``: the run's own images (each fold's test part). A data block: listed without labels for
    ``csv`` / ``folder`` sources (:func:`~medtl.data.sources.load_unlabelled_table`), decoded with the
    run's ``image_size``, colour, ``resize`` and ``crop``.

    Raises:
        ConfigError: A fold has fewer than two target images (a batch statistic needs two).
    """
    if adapt.target == "test":
        samples = loaded.table.samples
        target = AdaptTarget(True, loaded.images, [s.id for s in samples], [s.path for s in samples])
        for fold in folds:
            _enough(len(fold.test), f"fold {fold.index}'s test part")
        return target
    block = adapt.target.model_copy(update={"image_size": data.image_size, "color": loaded.color,
                                            "resize": data.resize, "crop": data.crop})
    log.info("adapt.target: %s %s, decoded like the training images (%d px, %s)", block.source, block.location,
             data.image_size, loaded.color)
    try:
        table = load_unlabelled_table(block) if block.source in UNLABELLED_SOURCES else load_table(block)
        decoded = load_images(table, block, progress=progress)
    except DataError as exc:
        raise ConfigError(f"adapt.target: {exc}") from None
    _enough(len(decoded.images), str(block.location))
    samples = decoded.table.samples
    return AdaptTarget(False, decoded.images, [s.id for s in samples], [s.path for s in samples])


def _enough(n: int, where: str) -> None:
    if n < 2:
        raise ConfigError(f"adapt.target: {where} has {n} image(s); adaptation needs at least two target images "
                          "(point adapt.target at a data block with images, or use a split with test images)")


def adaptation_protocol(adapt: AdaptConfig, target: AdaptTarget) -> dict[str, Any]:
    """What ``metrics.json`` records under ``protocol.adaptation``."""
    where = "test" if adapt.target == "test" else str(adapt.target.location)
    out: dict[str, Any] = {"statement": TRANSDUCTIVE, "method": adapt.method, "target": where,
                           "target_images": len(target.ids) if not target.own else "each fold's test images",
                           "weight": adapt.weight if adapt.method != "tent" else None}
    if adapt.method == "tent":
        out["tent"] = adapt.tent.model_dump()
        out["validation"] = "validation predictions (threshold choice) are of the model before test-time adaptation"
    return out


# ---------------------------------------------------------------- feature alignment


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``-lam`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lam * grad, None


def dann_lambda(progress: float) -> float:
    """Ganin's schedule 2 / (1 + exp(-10 p)) - 1: 0 at the start, close to 1 at the end of training."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ‖C_s - C_t‖²_F / (4 d²) of two feature batches ``(n, d)`` (float32)."""
    d = source.shape[1]
    diff = torch.cov(source.float().T) - torch.cov(target.float().T)
    return (diff * diff).sum() / (4.0 * d * d)


def _feature_dim(model: nn.Module) -> int:
    """Width of the pooled features: the input of the head's first linear layer."""
    linear = next((m for m in model.head.modules() if isinstance(m, nn.Linear)), None)
    if linear is None:
        raise TrainingError("adapt.method 'dann' needs a head with a linear layer to size its domain classifier")
    return linear.in_features


class AlignmentModule(ClassifierModule):
    """The classifier's fit plus a domain loss on every step (``adapt.method`` ``dann`` or ``coral``).

    The training batch's pooled features (``model.backbone``) and those of a target batch of the same size
    enter the domain loss; the target batch is drawn from ``(seed, global step)``, so a resumed fit draws
    what the uninterrupted one would. The DANN domain classifier is part of this module (trained and
    checkpointed with it), not of the model that is kept.
    """

    def __init__(self, *args: Any, adapt: AdaptConfig, target: TargetRows, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapt = adapt
        self.target = target
        self.target_seed = seed
        self.domain = (nn.Sequential(nn.Linear(_feature_dim(self.model), adapt.domain_hidden), nn.ReLU(),
                                     nn.Linear(adapt.domain_hidden, 1)) if adapt.method == "dann" else None)
        self._source: torch.Tensor | None = None
        self._domain_losses: list[float] = []

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        self._source = self.model.backbone(x)
        return self.model.head(self._source)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        source, self._source = self._source, None
        assert source is not None
        raw = self.target.draw(self.target_seed, self.global_step, len(source))
        domain = self.domain_loss(source, self.model.backbone(self.prepare(raw.to(self.device))))
        if not torch.isfinite(domain):
            raise TrainingError(f"the {self.adapt.method} domain loss became {domain.item()} at epoch "
                                f"{self.current_epoch}, batch {batch_idx}; lower adapt.weight or train.lr")
        self._domain_losses.append(float(domain.detach()))
        return loss + domain

    def domain_loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted CORAL loss, or the DANN domain classifier's loss behind the gradient reversal."""
        if self.domain is None:
            return self.adapt.weight * coral_loss(source, target)
        progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)
        feats = GradientReversal.apply(torch.cat([source, target]).float(), self.adapt.weight * dann_lambda(progress))
        truth = torch.cat([source.new_zeros(len(source)), target.new_ones(len(target))]).float()
        return F.binary_cross_entropy_with_logits(self.domain(feats).squeeze(1).float(), truth)

    def extra_param_groups(self) -> list[dict[str, Any]]:
        if self.domain is None:
            return []
        return [{"params": list(self.domain.parameters()), "lr": self.cfg.lr, "weight_decay": self.cfg.weight_decay}]

    def epoch_extras(self) -> dict[str, float]:
        losses, self._domain_losses = self._domain_losses, []
        return {"domain_loss": float(np.mean(losses))} if losses else {}


def classifier_module(adapt: AdaptConfig | None, target: TargetRows | None, seed: int, *args: Any,
                      **kwargs: Any) -> ClassifierModule:
    """The fit's Lightning module: :class:`AlignmentModule` for ``dann`` / ``coral``, else the plain
    :class:`ClassifierModule` (``args`` / ``kwargs`` are its arguments)."""
    if adapt is None or adapt.method == "tent":
        return ClassifierModule(*args, **kwargs)
    assert target is not None
    return AlignmentModule(*args, adapt=adapt, target=target, seed=seed, **kwargs)


# ---------------------------------------------------------------- test-time adaptation


def trained_batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers with trainable affine parameters (the layers the fit trained)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            and m.weight.requires_grad]


def tent(net: nn.Module, target: TargetRows, prepare: Any, cfg: TentConfig, batch_size: int, seed: int,
         device: str = "cpu") -> nn.Module:
    """TENT in place: the BatchNorm affine parameters of the trained layers minimise the mean entropy of the
    predictions on ``target`` (Adam, ``cfg.epochs`` passes in a seeded order, BatchNorm in batch-statistics
    mode); then those layers' running statistics become the target images' statistics. Returns ``net``
    (CPU, eval mode; the other parameters unchanged, ``requires_grad`` as before).

    Raises:
        ConfigError: The trained part of ``net`` has no BatchNorm layer.
    """
    norms = trained_batchnorms(net)
    if not norms:
        raise ConfigError("adapt.method 'tent' adapts the BatchNorm layers of the trained part of the model, and it "
                          "has none: use adapt.method dann or coral, or train layers with BatchNorm "
                          "(transfer.unfreeze_from)")
    if getattr(net, "freeze_bn_stats", False):
        log.warning("adapt.method 'tent' after training with transfer.bn 'frozen': the trained layers only ever saw "
                    "ImageNet BatchNorm statistics, and TENT replaces them with the target's. On chest X-ray this "
                    "lowered the test AUC from 0.974 to 0.756 (docs/results.md, 'Domain adaptation'); train with "
                    "transfer.bn: train when TENT is to follow, and check the AUC")
    flags = [(p, p.requires_grad) for p in net.parameters()]
    params = [p for m in norms for p in (m.weight, m.bias)]
    net.to(device).eval().requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    for m in norms:
        m.train()
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    rng = np.random.default_rng([seed, _DRAW_SALT, 1])
    try:
        for _ in range(cfg.epochs):
            for positions in _batches(rng.permutation(len(target)), batch_size):
                logits = net(prepare(target.batch(positions).to(device))).float()
                loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        _target_statistics(net, norms, target, prepare, batch_size, device)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    log.info("tent: %d BatchNorm layers adapted to %d target images (%d pass(es))", len(norms), len(target),
             cfg.epochs)
    return net.to("cpu").eval()


def _batches(order: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order``; a last batch of one image is dropped (it has no batch statistics)."""
    return [order[i:i + size] for i in range(0, len(order), size) if len(order[i:i + size]) > 1]


@torch.no_grad()
def _target_statistics(net: nn.Module, norms: list[nn.modules.batchnorm._BatchNorm], target: TargetRows,
                       prepare: Any, batch_size: int, device: str) -> None:
    """Running statistics of ``norms`` = the cumulative average of the target batches' statistics."""
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
        m.train()
    for positions in _batches(np.arange(len(target)), batch_size):
        net(prepare(target.batch(positions).to(device)))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()
