"""Transfer strategies: which parameters train.

Cut points are the backbone's top-level children in forward order, with the block containers
(``blocks``, ``layers``, ``stages``, ``features``, ``layerN``) expanded one level, so
``unfreeze_from: blocks.5`` means "``blocks.5`` and everything after it train".
"""

from __future__ import annotations

import difflib
import logging

from torch import nn

from medtl.config import TransferConfig
from medtl.errors import ConfigError
from medtl.models.network import TransferNet

log = logging.getLogger(__name__)

_CONTAINERS = ("blocks", "layers", "stages", "features", "layer1", "layer2", "layer3", "layer4",
               "dense_blocks")


def cut_points(backbone: nn.Module) -> list[str]:
    """Names of the backbone's cut points in forward order (modules that hold parameters)."""
    names: list[str] = []
    for name, child in backbone.named_children():
        expandable = name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList))
        children = list(child.named_children()) if expandable else [("", child)]
        for sub, module in children:
            if any(True for _ in module.parameters()):
                names.append(f"{name}.{sub}" if sub else name)
    return names


def set_trainable(model: TransferNet, unfreeze_from: str | None) -> None:
    """Freeze backbone cut points before ``unfreeze_from``; ``None`` trains all, ``'head'`` none."""
    points = cut_points(model.backbone)
    if unfreeze_from is None:
        start = 0
    elif unfreeze_from == "head":
        start = len(points)
    elif unfreeze_from in points:
        start = points.index(unfreeze_from)
    else:
        hint = difflib.get_close_matches(unfreeze_from, points, n=1)
        raise ConfigError(
            f"transfer.unfreeze_from '{unfreeze_from}' is not a cut point of this backbone."
            + (f" Did you mean '{hint[0]}'?" if hint else "")
            + f" Valid: head, {', '.join(points)}")
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
    model.freeze_bn_stats = cfg.bn == "frozen"
    if cfg.strategy == "feature_extraction":
        if cfg.unfreeze_from not in (None, "head"):
            raise ConfigError("transfer.unfreeze_from is only for strategy fine_tune; "
                              "feature_extraction trains the head alone")
        set_trainable(model, "head")
    else:
        set_trainable(model, cfg.unfreeze_from)


def count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only trainable ones when asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
