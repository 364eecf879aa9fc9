"""The conditional DCGAN of medtl synth: shapes, DiffAugment, and seeded, repeatable training on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.models.gan import GanSpec, build_gan
from medtl.train.gan import GanTraining, diff_augment, sample_images, train_gan


@pytest.mark.parametrize(("size", "channels"), [(32, 1), (64, 3), (128, 1)])
def test_generator_and_discriminator_shapes(size: int, channels: int) -> None:
    spec = GanSpec(size=size, channels=channels, num_classes=3, width=8)
    gen, disc = build_gan(spec, seed=0)
    y = torch.tensor([0, 2])
    x = gen(torch.randn(2, spec.z_dim), y)
    assert x.shape == (2, channels, size, size) and x.abs().max() <= 1.0
    assert disc(x, y).shape == (2,)


def test_diff_augment_translates_and_cuts_out_and_keeps_gradients() -> None:
    x = torch.ones(8, 1, 16, 16, requires_grad=True)
    out = diff_augment(x, torch.Generator().manual_seed(0), translation=0.125, cutout=0.5)
    assert out.shape == x.shape
    zeros = (out == 0).flatten(1).sum(1)
    assert (zeros >= 16).all() and (zeros < 16 * 16).all()  # a cut-out square (clipped at edges) at least
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(out, diff_augment(x, torch.Generator().manual_seed(0)))


def test_training_is_seeded_and_conditional_sampling_has_the_asked_classes(one_torch_thread: None) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 32, 32, 1), dtype=np.uint8)
    labels = np.array([0, 1] * 6)
    spec, hp = GanSpec(size=32, channels=1, num_classes=2, width=8), GanTraining(steps=3, batch_size=4)
    first, again, other = (train_gan(images, labels, spec, hp, seed) for seed in (5, 5, 6))
    a, b, c = (r.generator.state_dict() for r in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    out = sample_images(first.generator, np.array([1, 0, 1]), seed=1)
    assert out.shape == (3, 32, 32, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, sample_images(first.generator, np.array([1, 0, 1]), seed=1))
    with pytest.raises(ValueError, match="the GAN makes"):
        train_gan(images[..., :0], labels, spec, hp, 0)
