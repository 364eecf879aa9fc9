"""Tests of medtl.models.network: output shape, head layout, zero-initialised output layer, and
frozen BatchNorm layers that stay in eval mode while the rest trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medtl.config import HeadConfig, TransferConfig
from medtl.models.network import TransferNet, build_head, create_model, frozen_modules
from medtl.transfer.freeze import apply_strategy

ARCH = "tf_efficientnet_lite0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lite0() -> TransferNet:
    torch.manual_seed(0)
    model, _ = create_model(ARCH, "none", 3)
    return model


@pytest.mark.parametrize("num_classes", [2, 5])
def test_output_shape(num_classes: int) -> None:
    model, spec = create_model(ARCH, "none", num_classes)
    assert spec.source == "none"
    with torch.no_grad():
        out = model.eval()(torch.randn(4, 3, 64, 64))
    assert out.shape == (4, num_classes)


def test_packaged_backbone_gives_pooled_features() -> None:
    model, spec = create_model(ARCH, "packaged:efficientnet_lite0", 2)
    assert spec.name == "packaged:efficientnet_lite0"
    assert model.backbone.num_features == 1280
    with torch.no_grad():
        features = model.eval().backbone(torch.zeros(1, 3, 32, 32))
    assert features.shape == (1, 1280) and torch.isfinite(features).all()


def test_mlp_head_layout() -> None:
    head = build_head(20, 3, HeadConfig(hidden=[32, 16], dropout=0.3, batchnorm=True))
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
                     nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 32), (32, 16), (16, 3)]
    assert [m.num_features for m in head if isinstance(m, nn.BatchNorm1d)] == [32, 16]
    assert all(m.p == 0.3 for m in head if isinstance(m, nn.Dropout))
    assert head(torch.randn(5, 20)).shape == (5, 3)


def test_mlp_head_without_batchnorm_or_dropout() -> None:
    head = build_head(20, 2, HeadConfig(hidden=[8]))
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize(("cfg", "kinds"), [
    (HeadConfig(), [nn.Linear]),
    (HeadConfig(dropout=0.2), [nn.Dropout, nn.Linear]),
])
def test_linear_head_layout(cfg: HeadConfig, kinds: list[type]) -> None:
    head = build_head(10, 4, cfg)
    assert [type(m) for m in head] == kinds
    assert (head[-1].in_features, head[-1].out_features) == (10, 4)


def test_create_model_uses_the_head_config() -> None:
    model, _ = create_model(ARCH, "none", 2, HeadConfig(hidden=[32, 16], dropout=0.1, batchnorm=True))
    assert model.head[0].in_features == model.backbone.num_features
    assert model.head[-1].out_features == 2
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.head) == 2


@pytest.mark.parametrize("cfg", [HeadConfig(), HeadConfig(hidden=[32, 16], dropout=0.2, batchnorm=True)])
def test_final_layer_is_zero_so_initial_probabilities_are_uniform(cfg: HeadConfig) -> None:
    torch.manual_seed(1)
    model, _ = create_model(ARCH, "none", 4, cfg)
    final = model.head[-1]
    assert not final.weight.any() and not final.bias.any()
    with torch.no_grad():
        probs = model.eval()(torch.randn(3, 3, 64, 64)).softmax(1)
    assert torch.allclose(probs, torch.full((3, 4), 0.25))


def test_everything_trains_when_nothing_is_frozen(lite0: TransferNet) -> None:
    apply_strategy(lite0, TransferConfig(strategy="fine_tune", bn="train"))
    assert frozen_modules(lite0.backbone) == []
    lite0.train()
    assert all(m.training for m in lite0.modules())
    apply_strategy(lite0, TransferConfig(strategy="fine_tune", bn="frozen"))
    lite0.train()
    batchnorms = [m for m in lite0.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and not any(m.training for m in batchnorms)
    assert all(p.requires_grad for p in lite0.parameters())
    lite0.eval()
    assert not any(m.training for m in lite0.modules())


def test_frozen_batchnorm_stays_in_eval_mode(lite0: TransferNet) -> None:
    apply_strategy(lite0, TransferConfig(strategy="fine_tune", unfreeze_from="blocks.5", bn="train"))
    lite0.train()
    bb = lite0.backbone
    frozen_bn = [bb.bn1] + [m for m in bb.blocks[:5].modules() if isinstance(m, nn.BatchNorm2d)]
    trainable_bn = [bb.bn2] + [m for m in bb.blocks[5:].modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(frozen_bn) > 10 and len(trainable_bn) > 5
    assert not any(m.training for m in frozen_bn)
    assert all(m.training for m in trainable_bn)
    assert lite0.training and lite0.head.training

    before = {id(m): m.running_mean.clone() for m in frozen_bn + trainable_bn}
    lite0(torch.randn(4, 3, 64, 64))
    for m in frozen_bn:
        assert torch.equal(m.running_mean, before[id(m)])
    assert not torch.equal(bb.bn2.running_mean, before[id(bb.bn2)])  # trainable BN does update

    lite0.train(False)
    assert not any(m.training for m in lite0.modules())
    lite0.train()  # and switching back keeps the frozen ones in eval
    assert not any(m.training for m in frozen_bn)


def test_nested_train_call_keeps_frozen_batchnorm_in_eval(lite0: TransferNet) -> None:
    """A wrapper (e.g. the Lightning module) calling .train() recursively reaches TransferNet.train."""
    apply_strategy(lite0, TransferConfig(strategy="feature_extraction"))
    wrapper = nn.ModuleDict({"model": lite0})
    wrapper.train()
    assert not any(m.training for m in lite0.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert lite0.head.training


def test_frozen_blocks_run_without_stochastic_depth_while_trainable_blocks_keep_it() -> None:
    """A frozen block is wholly in eval mode under ``model.train()``: its DropPath is off, so the frozen
    part gives the same features on every call (as the prefix cache computes them), while the trainable
    blocks above the cut keep their stochastic depth."""
    torch.manual_seed(0)
    model, _ = create_model(ARCH, "none", 2, drop_path_rate=0.5)
    apply_strategy(model, TransferConfig(strategy="fine_tune", unfreeze_from="blocks.4", bn="train"))
    model.train()
    bb = model.backbone
    drop_paths = lambda blocks: [m for m in blocks.modules() if type(m).__name__ == "DropPath"]  # noqa: E731
    frozen_dp, trainable_dp = drop_paths(bb.blocks[:4]), drop_paths(bb.blocks[4:])
    assert frozen_dp and trainable_dp
    assert not any(m.training for m in frozen_dp)
    assert all(m.training for m in trainable_dp)
    assert not any(m.training for i in range(4) for m in bb.blocks[i].modules()) and not bb.conv_stem.training

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        prefix = lambda: bb.blocks[:4](bb.bn1(bb.conv_stem(x)))  # noqa: E731
        assert torch.equal(prefix(), prefix())  # frozen part: deterministic in train mode
        top = lambda: bb.blocks[4:](prefix())  # noqa: E731
        assert not torch.equal(top(), top())  # trainable part: stochastic depth still acts
    assert frozen_modules(bb)[0] is bb.conv_stem and bb.blocks[3] in frozen_modules(bb)
