"""Tests of medtl.train.losses: the softmax focal loss against cross-entropy and torchvision's sigmoid focal loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from medtl.config import TrainConfig
from medtl.train.losses import FocalLoss, make_losses


def batch(n: int = 12, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, k, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    soft = torch.softmax(torch.randn(n, k, generator=g), 1)
    return logits, labels, soft


@pytest.mark.parametrize("weight", [None, torch.tensor([0.5, 2.0, 1.25])])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gamma_zero_is_cross_entropy_with_weights_and_smoothing(weight: torch.Tensor | None, smoothing: float) -> None:
    logits, labels, soft = batch()
    focal = FocalLoss(0.0, weight, smoothing)
    ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
    torch.testing.assert_close(focal(logits, labels), ce(logits, labels))
    # soft (Mixup / CutMix) targets: torch's soft-target cross-entropy
    torch.testing.assert_close(FocalLoss(0.0, weight)(logits, soft), nn.CrossEntropyLoss(weight=weight)(logits, soft))


def test_focal_down_weights_easy_images_by_one_minus_p_to_the_gamma() -> None:
    # two classes, logits (0, z): p(true class 1) = sigmoid(z)
    z = torch.tensor([3.0, -1.0])  # an easy image (p = 0.95) and a hard one (p = 0.27)
    logits, labels = torch.stack([torch.zeros(2), z], 1), torch.ones(2, dtype=torch.long)
    p = torch.sigmoid(z)
    ce = -torch.log(p)
    per_image = torch.stack([FocalLoss(2.0)(logits[i:i + 1], labels[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(per_image, (1 - p) ** 2 * ce)
    ratio = per_image / ce
    assert ratio[0] < 0.003 and ratio[1] > 0.5  # the easy image keeps (0.047)^2 of its loss, the hard one 0.53
    assert FocalLoss(2.0)(logits, labels) < nn.CrossEntropyLoss()(logits, labels)
    # the easy image's share of the batch loss falls as gamma grows
    shares = [float(per[0] / per.sum()) for per in
              (torch.stack([FocalLoss(g)(logits[i:i + 1], labels[i:i + 1]) for i in range(2)]) for g in (0, 1, 2, 5))]
    assert shares == sorted(shares, reverse=True) and shares[-1] < 1e-4 < shares[0]


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_two_class_softmax_focal_equals_torchvision_sigmoid_focal(gamma: float) -> None:
    """With logits (0, z) a softmax over two classes is a sigmoid of z, so both focal losses agree."""
    g = torch.Generator().manual_seed(1)
    z, y = 3 * torch.randn(20, generator=g), torch.randint(0, 2, (20,), generator=g)
    logits = torch.stack([torch.zeros(20), z], 1)
    expected = sigmoid_focal_loss(z, y.float(), alpha=-1, gamma=gamma, reduction="mean")
    torch.testing.assert_close(FocalLoss(gamma)(logits, y), expected)
    # alpha-balanced: torchvision's alpha for class 1 and 1 - alpha for class 0; medtl averages over the weights
    alpha = 0.7
    weight = torch.tensor([1 - alpha, alpha])
    summed = sigmoid_focal_loss(z, y.float(), alpha=alpha, gamma=gamma, reduction="sum")
    torch.testing.assert_close(FocalLoss(gamma, weight)(logits, y) * weight[y].sum(), summed)


def test_soft_targets_use_the_probability_of_the_target_distribution() -> None:
    logits, labels, soft = batch(n=6, k=2, seed=3)
    p_t = (logits.softmax(1) * soft).sum(1)
    ce = -(soft * logits.log_softmax(1)).sum(1)
    torch.testing.assert_close(FocalLoss(2.0)(logits, soft), ((1 - p_t) ** 2 * ce).mean())
    # one-hot soft targets are the hard labels
    onehot = nn.functional.one_hot(labels, 2).float()
    torch.testing.assert_close(FocalLoss(2.0)(logits, onehot), FocalLoss(2.0)(logits, labels))


def test_focal_loss_has_gradients_and_negative_gamma_is_refused() -> None:
    logits, labels, _ = batch()
    logits.requires_grad_(True)
    FocalLoss(2.0)(logits, labels).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(-1.0)


def test_make_losses_follows_the_config() -> None:
    weight = torch.tensor([1.0, 3.0])
    hard, soft = make_losses(TrainConfig(loss="focal", focal_gamma=1.5, label_smoothing=0.1), weight)
    assert isinstance(hard, FocalLoss) and hard.gamma == 1.5 and hard.label_smoothing == 0.1
    assert isinstance(soft, FocalLoss) and soft.label_smoothing == 0.0 and torch.equal(soft.weight, weight)
    hard, soft = make_losses(TrainConfig(), None)
    assert isinstance(hard, nn.CrossEntropyLoss) and isinstance(soft, nn.CrossEntropyLoss)
    assert TrainConfig().loss == "cross_entropy" and TrainConfig().focal_gamma == 2.0  # the paper's gamma
    with pytest.raises(ValueError, match="focal_gamma"):
        TrainConfig(focal_gamma=-1)
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="focall")
