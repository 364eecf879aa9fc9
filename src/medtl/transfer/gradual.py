"""Gradual unfreezing (ULMFiT-style): the trainable part grows from the top at scheduled epochs.

The optimizer's parameter groups are created once, up front, over every parameter the schedule
will ever train (frozen ones simply have no gradient yet), so the learning-rate schedule and a
resumed run continue exactly; only ``requires_grad`` changes at the scheduled epochs.
"""

from __future__ import annotations

import logging

import lightning as L

from medtl.config import UnfreezeStep
from medtl.models.cuts import cut_points
from medtl.models.network import TransferNet
from medtl.transfer.freeze import count, set_trainable

log = logging.getLogger(__name__)


def step_lr_mults(model: TransferNet, schedule: list[UnfreezeStep], lr: float) -> dict[str, float]:
    """Per cut point, ``step.lr / lr`` for the layers each step with its own ``lr`` unfreezes."""
    points = cut_points(model.backbone)
    mults: dict[str, float] = {}
    end = len(points)
    for step in schedule:
        start = len(points) if step.unfreeze_from == "head" else points.index(step.unfreeze_from)
        if step.lr is not None:
            mults.update({name: step.lr / lr for name in points[start:end]})
        end = min(end, start)
    return mults


def active_step(schedule: list[UnfreezeStep], epoch: int) -> UnfreezeStep:
    """The schedule step in force at ``epoch``."""
    return [step for step in schedule if step.epoch <= epoch][-1]


class GradualUnfreeze(L.Callback):
    """Apply the schedule at the start of every training epoch (and record what was trainable)."""

    def __init__(self, schedule: list[UnfreezeStep]) -> None:
        self.schedule = schedule
        self.current: str | None = None
        self.trainable_per_epoch: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = active_step(self.schedule, trainer.current_epoch)
        model = pl_module.model
        if step.unfreeze_from != self.current:
            set_trainable(model, step.unfreeze_from)
            model.train()  # newly trainable modules leave eval mode; frozen ones stay in it
            log.info("epoch %d: unfreeze from %s (%s trainable parameters)", trainer.current_epoch,
                     step.unfreeze_from, f"{count(model, True):,}")
            self.current = step.unfreeze_from
        self.trainable_per_epoch.append(count(model, True))
