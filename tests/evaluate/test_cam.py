"""Tests of medtl.evaluate.cam: automatic target layer for every backbone family, Grad-CAM, sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from medtl.config import HeadConfig
from medtl.errors import ConfigError, DataError
from medtl.evaluate.cam import (
    cam_sanity_check,
    feature_map_shapes,
    find_target_layer,
    grad_cam,
    overlay,
    randomized_copy,
    select_cases,
    spearman_maps,
)
from medtl.models.network import TransferNet, build_head
from medtl.transfer.freeze import cut_points

# (timm name, input size, expected layer). Inception-v3 needs a larger input for a spatial Mixed_7c.
FAMILIES = [
    ("tf_efficientnet_lite0", 96, "bn2"),
    ("efficientnet_b0", 96, "bn2"),
    ("mobilenetv2_050", 96, "bn2"),
    ("mobilenetv3_small_050", 96, "blocks.5"),  # conv_head runs after global pooling: 1x1, skipped
    ("resnet18", 96, "layer4.1"),
    ("densenet121", 96, "features.norm5"),
    ("vgg11", 96, "features.18"),  # pre_logits (ConvMlp) gives a 1x1 map
    ("inception_v3", 160, "Mixed_7c"),
    ("legacy_xception", 96, "bn4"),
    ("xception41", 96, "blocks.12"),
    ("convnext_atto", 96, "stages.3"),
]


def _model(name: str, size: int, frozen: bool = True) -> TransferNet:
    """A TransferNet around an untrained timm backbone, with a random (non-zero) two-class head."""
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        width = backbone(torch.zeros(1, 3, size, size)).shape[1]
    model = TransferNet(backbone, build_head(width, 2, HeadConfig()))
    nn.init.normal_(model.head[-1].weight, 0.0, 0.1)
    if frozen:
        for p in model.backbone.parameters():
            p.requires_grad = False
    return model


@pytest.fixture
def small_model(one_torch_thread: None) -> TransferNet:
    return _model("resnet18", 64)


@pytest.mark.parametrize(("name", "size", "expected"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_target_layer_found_for_every_family(name: str, size: int, expected: str, one_torch_thread: None) -> None:
    model = _model(name, size)
    layer = find_target_layer(model, size)
    assert layer == expected
    shapes = feature_map_shapes(model, size)
    names = [n for n, _ in shapes]
    assert len(dict(shapes)[layer]) == 4
    later = shapes[names.index(layer) + 1:]
    assert not any(len(s) == 4 and s[2] * s[3] > 1 for _, s in later), "a later cut point has a spatial map"
    assert layer in cut_points(model.backbone)
    maps = grad_cam(model, torch.randn(2, 3, size, size), [0, 1], layer)
    assert maps.shape == (2, size, size) and maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert not any(p.requires_grad for p in model.backbone.parameters()), "frozen flags restored"


def test_grad_cam_on_a_frozen_model_has_signal(small_model: TransferNet) -> None:
    x = torch.randn(3, 3, 64, 64)
    maps = np.concatenate([grad_cam(small_model, x, 0), grad_cam(small_model, x, 1)])
    assert maps.max() > 0.5, "gradients flow through frozen layers"
    small_model.train()
    grad_cam(small_model, x, 0)
    assert small_model.training and small_model.head.training, "modes restored"


def test_grad_cam_checks_its_input(small_model: TransferNet) -> None:
    with pytest.raises(DataError):
        grad_cam(small_model, torch.randn(3, 64, 64), 0)
    with pytest.raises(DataError):
        grad_cam(small_model, torch.randn(2, 3, 64, 64), [0, 1, 1])


def test_truncated_backbone(one_torch_thread: None) -> None:
    cuts = pytest.importorskip("medtl.models.cuts")
    if not hasattr(cuts, "truncate"):
        pytest.skip("medtl.models.cuts.truncate not available")
    trunk = cuts.truncate(timm.create_model("resnet18", pretrained=False, num_classes=0), "layer3.1")
    model = TransferNet(trunk, build_head(trunk.num_features, 2, HeadConfig()))
    nn.init.normal_(model.head[-1].weight, 0.0, 0.1)
    assert find_target_layer(model, 64) == "layer3.1"
    assert grad_cam(model, torch.randn(1, 3, 64, 64), 1).shape == (1, 64, 64)


def test_no_feature_map_raises() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ConfigError, match="4-D"):
        find_target_layer(mlp, 8)


def test_randomized_copy_changes_only_the_top(small_model: TransferNet) -> None:
    layer = find_target_layer(small_model, 64)
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    clone, parts = randomized_copy(small_model, layer, n_cut_points=2, seed=1)
    assert parts == ["head", "backbone.layer4.0", "backbone.layer4.1"]
    for key, value in small_model.state_dict().items():
        assert torch.equal(value, before[key]), "the trained model is untouched"
    after = clone.state_dict()
    changed = {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}
    assert any(k.startswith("head.") for k in changed)
    assert any(k.startswith("backbone.layer4.1.") for k in changed)
    assert not any(k.startswith(("backbone.layer3", "backbone.conv1")) for k in changed)
    again, _ = randomized_copy(small_model, layer, 2, seed=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items()), "seeded"


def test_sanity_check_flags_maps_that_ignore_the_weights(small_model: TransferNet) -> None:
    x = torch.randn(4, 3, 64, 64)
    targets = [0, 1, 0, 1]
    layer = find_target_layer(small_model, 64)
    random_model, _ = randomized_copy(small_model, layer, 2, seed=0)
    same = cam_sanity_check(small_model, x, targets, layer, maps=grad_cam(random_model, x, targets, layer), seed=0)
    assert same.flagged and same.mean_spearman == pytest.approx(1.0)
    real = cam_sanity_check(small_model, x, targets, layer, seed=0)
    assert len(real.spearman) == 4 and real.randomized[0] == "head"
    assert -1.0 <= real.mean_spearman <= 1.0 or np.isnan(real.mean_spearman)
    assert real.flagged == (real.mean_spearman > real.max_rho)


def test_spearman_of_constant_maps() -> None:
    ramp = np.arange(16, dtype=float).reshape(1, 4, 4)
    assert spearman_maps(ramp, ramp) == [pytest.approx(1.0)]
    assert spearman_maps(ramp, -ramp) == [pytest.approx(-1.0)]
    assert spearman_maps(ramp, np.zeros_like(ramp)) == [0.0]
    assert np.isnan(spearman_maps(np.zeros_like(ramp), ramp)[0])


def test_overlay_shapes() -> None:
    grey = np.full((32, 32, 1), 128, dtype=np.uint8)
    out = overlay(grey, np.linspace(0, 1, 64).reshape(8, 8))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() != out[-1, -1].tolist(), "the heat map shows"


def test_select_cases_binary_and_multiclass() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    p1 = np.array([0.9, 0.2, 0.8, 0.1, 0.6, 0.3])
    probs = np.column_stack([1 - p1, p1])
    pred = (p1 >= 0.5).astype(int)
    got = select_cases(labels, probs, pred, positive_index=1, per_kind=2)
    assert got == {"TP": [0, 4], "FP": [2], "FN": [1], "TN": [3, 5]}
    multi = select_cases(np.array([0, 1, 2]), np.eye(3)[[0, 2, 2]] * 0.8 + 0.0666, np.array([0, 2, 2]), None, 1)
    assert multi == {"correct": [0], "wrong": [1]}
