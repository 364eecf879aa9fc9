"""Tests of medtl.transfer.freeze: cut points, strategies, did-you-mean errors, and a real
optimisation check that frozen parameters and frozen BatchNorm statistics never move."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medtl.config import TrainConfig, TransferConfig
from medtl.errors import ConfigError
from medtl.models.network import TransferNet, create_model
from medtl.train.engine import make_optimizer
from medtl.transfer.freeze import apply_strategy, count, cut_points, set_trainable

# The stem and the first five stages of EfficientNet-Lite0, i.e. everything before 'blocks.5'.
BEFORE_BLOCK5 = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2.", "blocks.3.", "blocks.4.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def lite0() -> TransferNet:
    torch.manual_seed(0)
    model, _ = create_model("tf_efficientnet_lite0", "none", 2)
    return model


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_cut_points_of_lite0(lite0: TransferNet) -> None:
    points = cut_points(lite0.backbone)
    assert points[0] == "conv_stem"
    assert "blocks.5" in points
    assert [p for p in points if p.startswith("blocks.")] == [f"blocks.{i}" for i in range(7)]
    assert points.index("blocks.4") < points.index("blocks.5") < points.index("conv_head")
    # every parameter of the backbone lives under exactly one cut point
    for name, _ in lite0.backbone.named_parameters():
        assert sum(name.startswith(p + ".") for p in points) == 1, name


def test_feature_extraction_trains_only_the_head(lite0: TransferNet) -> None:
    apply_strategy(lite0, TransferConfig(strategy="feature_extraction"))
    assert trainable(lite0) == {f"head.{n}" for n, _ in lite0.head.named_parameters()}
    assert count(lite0, trainable_only=True) == sum(p.numel() for p in lite0.head.parameters())


def test_feature_extraction_rejects_unfreeze_from() -> None:
    with pytest.raises(ValueError, match="not used by strategy 'feature_extraction'"):
        TransferConfig(strategy="feature_extraction", unfreeze_from="blocks.5")


def test_fine_tune_from_blocks5(lite0: TransferNet) -> None:
    apply_strategy(lite0, TransferConfig(strategy="fine_tune", unfreeze_from="blocks.5"))
    for name, p in lite0.backbone.named_parameters():
        assert p.requires_grad == (not name.startswith(BEFORE_BLOCK5)), name
    assert all(p.requires_grad for p in lite0.head.parameters())
    names = trainable(lite0)
    assert any(n.startswith("backbone.blocks.5.") for n in names)
    assert any(n.startswith("backbone.blocks.6.") for n in names)
    assert any(n.startswith("backbone.conv_head.") for n in names)


def test_fine_tune_without_cut_point_trains_everything(lite0: TransferNet) -> None:
    apply_strategy(lite0, TransferConfig(strategy="feature_extraction"))  # freeze first
    apply_strategy(lite0, TransferConfig(strategy="fine_tune", unfreeze_from=None))
    assert all(p.requires_grad for p in lite0.parameters())


def test_unfreeze_from_head_freezes_the_backbone(lite0: TransferNet) -> None:
    set_trainable(lite0, "head")
    assert not any(p.requires_grad for p in lite0.backbone.parameters())
    assert all(p.requires_grad for p in lite0.head.parameters())


@pytest.mark.parametrize("typo", ["blocks.55", "block.5"])
def test_typo_in_cut_point_suggests_the_right_one(lite0: TransferNet, typo: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_strategy(lite0, TransferConfig(strategy="fine_tune", unfreeze_from=typo))
    message = str(info.value)
    assert f"'{typo}'" in message
    assert "Did you mean 'blocks.5'" in message
    assert "conv_stem" in message and "head" in message  # the valid cut points are listed


def test_sgd_steps_move_exactly_the_trainable_parameters(lite0: TransferNet) -> None:
    apply_strategy(lite0, TransferConfig(strategy="fine_tune", unfreeze_from="blocks.5", bn="train"))
    params_before = {n: p.detach().clone() for n, p in lite0.named_parameters()}
    buffers_before = {n: b.clone() for n, b in lite0.named_buffers()}
    optimizer = make_optimizer(lite0, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3))
    n_in_optimizer = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_in_optimizer == count(lite0, trainable_only=True) < count(lite0)

    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1])
    lite0.train()
    for _ in range(3):  # step 1 only moves the zero-initialised head; later steps reach the backbone
        optimizer.zero_grad()
        nn.functional.cross_entropy(lite0(x), y).backward()
        optimizer.step()

    for name, p in lite0.named_parameters():
        changed = not torch.equal(p.detach(), params_before[name])
        assert changed == p.requires_grad, name
    frozen_bn_buffers = [n for n in buffers_before if n.removeprefix("backbone.").startswith(BEFORE_BLOCK5)]
    assert len(frozen_bn_buffers) > 30
    for name, b in lite0.named_buffers():
        if name in frozen_bn_buffers:
            assert torch.equal(b, buffers_before[name]), name
    assert not torch.equal(lite0.backbone.bn2.running_mean, buffers_before["backbone.bn2.running_mean"])
