"""The single model builder: a timm backbone (pooled features) plus a new classification head."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import timm
import torch
from torch import nn

from medtl.config import HeadConfig
from medtl.errors import WeightsError
from medtl.models import scratch  # noqa: F401  (registers small_cnn with timm)
from medtl.models.cuts import truncate
from medtl.models.registry import WeightsSpec, load_pretrained, resolve_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects as input; derived from the weights spec and the data config."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str
    resize: str
    crop: str = "none"


def build_head(in_features: int, num_classes: int, cfg: HeadConfig) -> nn.Sequential:
    """A linear head, or an MLP ``in → hidden... → num_classes`` with ReLU, dropout, optional BN."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in cfg.hidden:
        layers.append(nn.Linear(width, hidden))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    if cfg.dropout and not cfg.hidden:
        layers.append(nn.Dropout(cfg.dropout))
    final = nn.Linear(width, num_classes)
    # A zero-initialised output layer starts every class at equal probability, so the first
    # steps do not push large random gradients into pretrained features (see docs/results.md).
    nn.init.zeros_(final.weight)
    nn.init.zeros_(final.bias)
    layers.append(final)
    return nn.Sequential(*layers)


class TransferNet(nn.Module):
    """``backbone`` (timm, ``num_classes=0`` → pooled features) followed by ``head``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_bn_stats = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> TransferNet:
        """Like ``nn.Module.train`` but frozen modules (parameters, none of them trainable) stay in eval
        mode with everything inside them: the BatchNorm statistics of frozen layers are never updated,
        and a frozen block's stochastic depth or dropout is off, so the frozen part computes the same
        features as the prefix cache and feature extraction do."""
        super().train(mode)
        if mode:
            for module in frozen_modules(self.backbone):
                module.eval()
            if self.freeze_bn_stats:  # transfer.bn: frozen — keep ImageNet statistics, train affine
                for module in self.backbone.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self


def frozen_modules(root: nn.Module) -> list[nn.Module]:
    """The largest frozen submodules of ``root``: modules that hold parameters, none of them trainable,
    whose parent is not frozen as a whole (``root`` itself when all of it is frozen). A frozen block is
    listed once, not its layers, so that ``eval()`` on it reaches its parameter-free parts (DropPath,
    Dropout) too."""
    def frozen(module: nn.Module) -> bool:
        params = list(module.parameters())
        return bool(params) and not any(p.requires_grad for p in params)

    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if frozen(module):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    visit(root)
    return out


def create_model(backbone: str, weights: str, num_classes: int, head: HeadConfig | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 truncate_at: str | None = None) -> tuple[TransferNet, WeightsSpec]:
    """Build ``backbone`` with ``weights`` loaded and a fresh head for ``num_classes``.

    Args:
        backbone: a timm architecture name, e.g. ``tf_efficientnet_lite0``.
        weights: a weights name (see :func:`medtl.models.registry.resolve_weights`).
        num_classes: classes of the new head.
        head: head layout; linear when omitted.
        drop_rate: dropout before the backbone's pooled output (timm ``drop_rate``).
        drop_path_rate: stochastic depth of the backbone's residual blocks (timm ``drop_path_rate``).
        truncate_at: keep the backbone only up to this cut point (TruncatedTL); the head is sized to it.

    Returns:
        The model and the weights spec it was built from.
    """
    spec = resolve_weights(weights, backbone)
    # Only pass the regularisers that are switched on: not every timm family accepts drop_path_rate.
    extra = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
    try:
        net = timm.create_model(backbone, pretrained=False,
                                num_classes=spec.num_classes if spec.source == "packaged" else 1000, **extra)
    except (RuntimeError, TypeError) as exc:
        raise WeightsError(f"model.backbone '{backbone}': {exc}") from None
    load_pretrained(net, spec)
    net.reset_classifier(0)
    if truncate_at is not None:
        full = sum(p.numel() for p in net.parameters())
        net = truncate(net, truncate_at)
        log.info("truncated at %s: backbone %.2fM → %.2fM parameters", truncate_at, full / 1e6,
                 sum(p.numel() for p in net.parameters()) / 1e6)
    # Pooled width: MobileNetV3-style models put a conv head after the last stage (head_hidden_size).
    width = getattr(net, "head_hidden_size", None) or net.num_features
    model = TransferNet(net, build_head(width, num_classes, head or HeadConfig()))
    log.info("model %s (%s) → %d classes, %.2fM parameters", backbone, spec.name, num_classes,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, spec


def preprocessing_for(spec: WeightsSpec, image_size: int, color: str, resize: str,
                      crop: str = "none") -> Preprocessing:
    """Preprocessing derived from the weights (mean/std) and the data config (size, colour, crop)."""
    return Preprocessing(image_size=image_size, mean=tuple(spec.mean), std=tuple(spec.std),
                         color=color, resize=resize, crop=crop)
