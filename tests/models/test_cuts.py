"""Tests of medtl.models.cuts: truncation at a cut point, and the per-cut-point description."""

from __future__ import annotations

import pytest
import torch

from medtl.models.cuts import cut_points, describe, truncate
from medtl.models.network import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "vgg11", "mobilenetv2_100", "xception41",
                                  "convnext_atto", "inception_v3", "small_cnn"])
def test_truncation_at_the_last_cut_point_is_the_full_backbone(name: str) -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=0).eval()
    points = cut_points(net)
    last = points[-1] if points[-1] != "head" else points[-2]  # ConvNeXt's 'head' holds its final norm
    x = torch.randn(1, 3, 96 if name != "inception_v3" else 107, 96 if name != "inception_v3" else 107)
    trunk = truncate(net, last).eval()
    with torch.no_grad():
        got = trunk(x)
        want = net(x) if last == points[-1] else net.forward_head(net.forward_features(x), pre_logits=True)
    if last == points[-1]:
        torch.testing.assert_close(got, want)
    assert got.shape[1] == trunk.num_features


def test_describe_lists_shapes_and_parameter_split() -> None:
    model, _ = create_model("tf_efficientnet_lite0", "packaged:efficientnet_lite0", 2)
    rows = describe(model.backbone, 224)
    names = [r.name for r in rows]
    assert names == cut_points(model.backbone)
    block5 = rows[names.index("blocks.5")]
    assert block5.shape == (192, 7, 7)
    assert block5.params_below + block5.params_from_here == sum(p.numel() for p in model.backbone.parameters())
    assert any(r.stage for r in rows)


def test_describe_at_an_image_size_too_small_for_the_backbone_is_a_config_error() -> None:
    import timm

    from medtl.errors import ConfigError

    net = timm.create_model("inception_v3", pretrained=False, num_classes=0)
    with pytest.raises(ConfigError, match="8 px image does not pass through this backbone"):
        describe(net, 8)
