"""Transfer strategies: which parameters train (cut points: :mod:`medtl.models.cuts`)."""

from __future__ import annotations

import logging

from torch import nn

from medtl.config import TransferConfig, UnfreezeStep
from medtl.errors import ConfigError
from medtl.models.cuts import check_cut_point, cut_points
from medtl.models.network import TransferNet

log = logging.getLogger(__name__)


def set_trainable(model: TransferNet, unfreeze_from: str | None) -> None:
    """Freeze backbone cut points before ``unfreeze_from``; ``None`` trains all, ``'head'`` none."""
    points = cut_points(model.backbone)
    if unfreeze_from is None:
        start = 0
    elif unfreeze_from == "head":
        start = len(points)
    else:
        check_cut_point(model.backbone, unfreeze_from, "transfer.unfreeze_from")
        start = points.index(unfreeze_from)
    for p in model.backbone.parameters():
        p.requires_grad = start == 0
    for name in points[start:]:
        for p in model.backbone.get_submodule(name).parameters():
            p.requires_grad = True
    for p in model.head.parameters():
        p.requires_grad = True
    log.info("trainable: %s of %s parameters (unfreeze_from=%s)", f"{count(model, True):,}",
             f"{count(model):,}", unfreeze_from or "all")


def apply_strategy(model: TransferNet, cfg: TransferConfig) -> None:
    """Set ``requires_grad`` (and BatchNorm statistics policy) for the configured strategy."""
    # From scratch there are no pretrained statistics to keep: BatchNorm must learn them.
    model.freeze_bn_stats = cfg.bn == "frozen" and cfg.strategy != "scratch"
    if cfg.strategy == "feature_extraction":
        if cfg.unfreeze_from not in (None, "head"):
            raise ConfigError("transfer.unfreeze_from is only for strategy fine_tune; "
                              "feature_extraction trains the head alone")
        set_trainable(model, "head")
    elif cfg.strategy == "gradual":
        check_schedule(model, cfg.schedule)
        set_trainable(model, cfg.schedule[0].unfreeze_from)
    elif cfg.strategy == "scratch":
        set_trainable(model, None)
    else:  # fine_tune, truncated
        set_trainable(model, cfg.unfreeze_from)


def check_schedule(model: TransferNet, schedule: list[UnfreezeStep]) -> None:
    """Every step names a cut point (or ``head``) and unfreezes at least as much as the step before.

    Raises:
        ConfigError: A step names no cut point, or would freeze layers that an earlier step unfroze.
    """
    points = cut_points(model.backbone)
    previous = len(points) + 1
    for i, step in enumerate(schedule):
        if step.unfreeze_from != "head":
            check_cut_point(model.backbone, step.unfreeze_from, f"transfer.schedule[{i}].unfreeze_from")
        start = len(points) if step.unfreeze_from == "head" else points.index(step.unfreeze_from)
        if start > previous:
            raise ConfigError(f"transfer.schedule[{i}]: unfreeze_from '{step.unfreeze_from}' would freeze layers "
                              "again; each step must unfreeze from the same or a lower cut point")
        previous = start


def count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only trainable ones when asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
