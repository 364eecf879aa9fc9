"""Test-time augmentation views and the three inference paths that average over them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medtl.data.transforms import TTA_VIEWS, Normalizer, tta_view
from medtl.models.network import TransferNet
from medtl.train.inference import embed, head_probs, predict_probs

HALF = Normalizer((0.5,) * 3, (0.5,) * 3)


def ringed(n: int = 3, size: int = 20) -> torch.Tensor:
    """uint8 images: random interior, a one-pixel ring of 255 around it."""
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 200, size=(n, 3, size, size), dtype=np.uint8))
    x[..., 0, :] = x[..., -1, :] = x[..., :, 0] = x[..., :, -1] = 255
    return x


def test_zoom_views_show_only_the_centre_and_keep_the_size() -> None:
    x = ringed()
    for view in ("zoom", "zoom_hflip"):
        z = tta_view(x, view)
        assert z.shape == x.shape and z.dtype == torch.float32
        assert z.max() < 200  # the 0.9 centre crop of 20 px (1 px off each side) leaves the ring out
    torch.testing.assert_close(tta_view(x, "zoom_hflip"), torch.flip(tta_view(x, "zoom"), dims=[3]))
    flat = torch.full((1, 3, 16, 16), 77, dtype=torch.uint8)
    torch.testing.assert_close(tta_view(flat, "zoom"), flat.float())
    assert torch.equal(tta_view(x, "hflip"), torch.flip(x, dims=[3]))
    assert tta_view(x, "image") is x
    with pytest.raises(ValueError, match="zoom_hflip"):
        tta_view(x, "vflip")


def small_net() -> TransferNet:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TransferNet(backbone, nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("tta", sorted(TTA_VIEWS))
def test_predict_probs_averages_the_softmax_over_the_views(tta: str) -> None:
    net = small_net()
    images = ringed(5).permute(0, 2, 3, 1).numpy()
    idx = np.array([4, 0, 2])
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.stack([net(HALF(tta_view(x, v))).softmax(1) for v in TTA_VIEWS[tta]]).mean(0).numpy()
    got = predict_probs(net, HALF, images, idx, batch_size=2, tta=tta, fast=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if tta != "none":  # the views matter: the plain image alone gives something else
        assert not np.allclose(got, predict_probs(net, HALF, images, idx, tta="none", fast=False), atol=1e-4)


def test_feature_bank_views_give_the_same_probabilities_as_the_full_model() -> None:
    net = small_net()
    images = ringed(4).permute(0, 2, 3, 1).numpy()
    idx = np.arange(4)
    bank = [embed(net.backbone, HALF, images, idx, view=v, fast=False) for v in TTA_VIEWS["hflip_zoom"]]
    np.testing.assert_allclose(head_probs(net.head, bank),
                               predict_probs(net, HALF, images, idx, tta="hflip_zoom", fast=False),
                               rtol=1e-5, atol=1e-6)
