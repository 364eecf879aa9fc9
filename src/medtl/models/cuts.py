"""Named cut points of any timm backbone, and truncation at one of them (TruncatedTL).

Cut points are the backbone's top-level children in forward order, with the block containers
(``blocks``, ``layers``, ``stages``, ``features``, ``layerN``) expanded one level, so
``unfreeze_from: blocks.5`` means "``blocks.5`` and everything after it train". This is the same
walk timm's ``FeatureListNet`` makes to cut a model for ``features_only``; the points where timm's
``feature_info`` says a stage ends are marked as stage boundaries.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from medtl.errors import ConfigError

_CONTAINERS = ("blocks", "layers", "stages", "features", "layer1", "layer2", "layer3", "layer4",
               "dense_blocks")


def walk(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module of the forward path in order, containers expanded (parameter-free ones included)."""
    out = []
    for name, child in backbone.named_children():
        if name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            out += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            out.append((name, child))
    return out


def cut_points(backbone: nn.Module) -> list[str]:
    """Names of the backbone's cut points in forward order (modules that hold parameters)."""
    return [name for name, module in walk(backbone) if any(True for _ in module.parameters())]


def check_cut_point(backbone: nn.Module, name: str, key: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` when ``name`` is not a cut point."""
    points = cut_points(backbone)
    if name not in points:
        hint = difflib.get_close_matches(name, points, n=1)
        raise ConfigError(f"{key} '{name}' is not a cut point of this backbone."
                          + (f" Did you mean '{hint[0]}'?" if hint else "")
                          + f" Valid: {', '.join(points)} (see `medtl layers`)")


class TruncatedBackbone(nn.Module):
    """The backbone's forward path up to and including a cut point, then global average pooling.

    The kept modules are registered under their original names (``conv_stem``, ``blocks.3``, ...),
    so cut points, state-dict keys and ``unfreeze_from`` mean the same as in the full backbone.
    """

    def __init__(self, backbone: nn.Module, truncate_at: str) -> None:
        super().__init__()
        check_cut_point(backbone, truncate_at, "transfer.truncate_at")
        order = walk(backbone)
        kept = order[: [name for name, _ in order].index(truncate_at) + 1]
        for name, module in kept:
            parent, _, sub = name.rpartition(".")
            if parent:
                if not hasattr(self, parent):
                    self.add_module(parent, nn.Sequential())
                getattr(self, parent).add_module(sub, module)
            else:
                self.add_module(name, module)
        self.order = [name for name, _ in kept]
        self.truncate_at = truncate_at
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.num_features = _out_channels(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = self.get_submodule(name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pool(self.forward_features(x))


def _out_channels(trunk: TruncatedBackbone) -> int:
    training = [m.training for m in trunk.modules()]
    trunk.eval()
    with torch.no_grad():
        channels = int(trunk.forward_features(torch.zeros(1, 3, 224, 224)).shape[1])
    for module, mode in zip(trunk.modules(), training, strict=True):
        module.train(mode)
    return channels


def truncate(backbone: nn.Module, truncate_at: str) -> TruncatedBackbone:
    """TruncatedTL: keep ``backbone`` up to ``truncate_at``; the layers above are dropped."""
    return TruncatedBackbone(backbone, truncate_at)


@dataclass
class CutPoint:
    """One row of ``medtl layers``."""

    name: str
    shape: tuple[int, ...]
    params: int
    params_below: int
    params_from_here: int
    stage: str


def describe(backbone: nn.Module, image_size: int = 224) -> list[CutPoint]:
    """Cut points with output shape at ``image_size``, parameters frozen below / trained from here on.

    Raises:
        ConfigError: ``image_size`` is too small for the backbone's forward pass.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(walk(backbone))
    points = cut_points(backbone)
    hooks = [modules[name].register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[1:])))
             for name in points]
    mode = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, image_size, image_size))
    except RuntimeError as exc:  # torch reports shapes that shrink to nothing as RuntimeError
        raise ConfigError(f"a {image_size} px image does not pass through this backbone ({exc}); use a larger "
                          "image size (medtl layers --image-size)") from None
    finally:
        for hook in hooks:
            hook.remove()
        backbone.train(mode)
    stages = {info.get("module"): f"{i} (/{info.get('reduction')})"
              for i, info in enumerate(getattr(backbone, "feature_info", []) or [])}
    sizes = [sum(p.numel() for p in modules[name].parameters()) for name in points]
    total = sum(p.numel() for p in backbone.parameters())
    rows, below = [], 0
    for name, size in zip(points, sizes, strict=True):
        rows.append(CutPoint(name, shapes.get(name, ()), size, below, total - below, stages.get(name, "")))
        below += size
    return rows


def inference_ms(module: nn.Module, image_size: int, batch: int = 8, repeats: int = 3) -> float:
    """Median milliseconds per image of ``module`` on CPU (for the truncation report, not a benchmark)."""
    x = torch.zeros(batch, 3, image_size, image_size)
    mode = module.training
    module.eval()
    times = []
    with torch.inference_mode():
        module(x)
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    module.train(mode)
    return 1000 * sorted(times)[len(times) // 2] / batch
