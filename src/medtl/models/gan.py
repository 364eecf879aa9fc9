"""A small class-conditional DCGAN for ``medtl synth`` (64 or 128 px, 1 or 3 channels).

DCGAN (Radford et al., 2016): the generator maps noise through transposed 4×4 convolutions with
batch norm and ReLU to a ``tanh`` image; the discriminator mirrors it with strided convolutions and
leaky ReLU. Two additions that make it train on ~200 images:

* **Spectral normalisation** of every discriminator layer (Miyato et al., 2018; ``torch.nn.utils.
  parametrizations.spectral_norm``) keeps the discriminator Lipschitz, so it does not overpower the
  generator on a tiny set.
* **Class conditioning**: the generator adds a learned class embedding to the noise; the
  discriminator is a *projection* discriminator (Miyato & Koyama, 2018): ``D(x, y) = w·φ(x) +
  embed(y)·φ(x)``.

Both networks double (generator) or halve (discriminator) the resolution per block, starting from
4×4, so 64 px has four blocks and 128 px five.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["GanSpec", "ConditionalGenerator", "ProjectionDiscriminator", "build_gan"]


@dataclass(frozen=True)
class GanSpec:
    """The architecture of a conditional DCGAN.

    Attributes:
        size: Image size (64 or 128).
        channels: 1 (grayscale) or 3 (RGB).
        num_classes: Conditioning classes.
        z_dim: Noise dimension.
        width: Channels of the widest generator block / the narrowest discriminator block; the other
            blocks double (discriminator) or halve (generator) it.
    """

    size: int = 64
    channels: int = 1
    num_classes: int = 2
    z_dim: int = 64
    width: int = 32

    @property
    def blocks(self) -> int:
        """Up/down-sampling blocks between 4×4 and ``size``."""
        return int(math.log2(self.size)) - 2

    def as_dict(self) -> dict:
        return {"name": "conditional DCGAN (projection discriminator, spectral norm)", **asdict(self)}


class ConditionalGenerator(nn.Module):
    """Noise + class → image in [-1, 1], ``(B, channels, size, size)``."""

    def __init__(self, spec: GanSpec) -> None:
        super().__init__()
        top = spec.width * 2 ** (spec.blocks - 1)
        self.spec = spec
        self.embed = nn.Embedding(spec.num_classes, spec.z_dim)
        self.stem = nn.Sequential(nn.ConvTranspose2d(spec.z_dim, top, 4, 1, 0, bias=False), nn.BatchNorm2d(top),
                                  nn.ReLU(True))
        layers: list[nn.Module] = []
        width = top
        for _ in range(spec.blocks - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2),
                       nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, spec.channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = (z + self.embed(y))[:, :, None, None]
        return self.body(self.stem(h))


class ProjectionDiscriminator(nn.Module):
    """Image + class → realness score ``(B,)`` (hinge loss)."""

    def __init__(self, spec: GanSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in, width = spec.channels, spec.width
        for _ in range(spec.blocks):
            layers += [spectral_norm(nn.Conv2d(width_in, width, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            width_in, width = width, width * 2
        self.body = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(width_in, 1))
        self.embed = spectral_norm(nn.Embedding(spec.num_classes, width_in))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.body(x).sum(dim=(2, 3))
        return self.linear(phi).squeeze(1) + (self.embed(y) * phi).sum(1)


def _init(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = getattr(module, "parametrizations", None)
        target = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(target, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_gan(spec: GanSpec, seed: int) -> tuple[ConditionalGenerator, ProjectionDiscriminator]:
    """Generator and discriminator initialised from ``seed`` (the global RNG is left as it was)."""
    if spec.size not in (32, 64, 128):
        raise ValueError(f"GAN size {spec.size}: use 32, 64 or 128")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, discriminator = ConditionalGenerator(spec), ProjectionDiscriminator(spec)
        generator.apply(_init)
        discriminator.apply(_init)
    return generator, discriminator
