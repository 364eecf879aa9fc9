"""The classic from-scratch baseline: a small 2D CNN, registered with timm as ``small_cnn``.

Three convolution blocks (conv 3×3 → batch-norm → ReLU → max-pool → dropout), as in the brain MRI
study's from-scratch model, then global average pooling. The first convolution has stride 2 so that a
224 px input costs less than EfficientNet-Lite0 (about 0.13 vs 0.4 GMACs); at stride 1 the full-size
first maps made it the slowest model of a study on CPU. Registering it with timm keeps
:func:`medtl.models.network.create_model` the single builder, so cut points, heads and
``transfer.strategy: scratch`` work for it exactly as for any timm backbone.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn


class SmallCNN(nn.Module):
    """``blocks`` of conv-BN-ReLU-pool-dropout, global average pooling, then ``classifier``."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128),
                 drop_rate: float = 0.25, **_: object) -> None:
        super().__init__()
        blocks = []
        width_in = in_chans
        for i, width in enumerate(widths):
            blocks.append(nn.Sequential(
                nn.Conv2d(width_in, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2), nn.Dropout2d(drop_rate)))
            width_in = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width_in
        self.classifier: nn.Module = nn.Linear(width_in, num_classes) if num_classes else nn.Identity()
        # No pretrained weights: inputs are simply scaled to [-1, 1].
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 224, 224),
                               "classifier": "classifier"}
        self.feature_info = [{"num_chs": w, "reduction": 2 ** (i + 2), "module": f"blocks.{i}"}
                             for i, w in enumerate(widths)]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def reset_classifier(self, num_classes: int, *_: object) -> None:
        """Replace the classifier (``0`` → pooled features), as timm models do."""
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.forward_features(x)).flatten(1))


@register_model
def small_cnn(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    """The from-scratch baseline CNN (no pretrained weights exist)."""
    if pretrained:
        raise ValueError("small_cnn has no pretrained weights; use model.weights: none")
    # timm passes the head dropout as drop_rate; the blocks keep their own 0.25 dropout.
    kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "in_chans")}
    return SmallCNN(**kwargs)  # type: ignore[arg-type]
