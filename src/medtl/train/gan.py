"""Train the conditional DCGAN of :mod:`medtl.models.gan` on one fold's training images, and sample it.

Hinge loss, Adam (lr 2e-4, betas 0.5/0.999, the DCGAN setting) for both networks, one
discriminator step per generator step. **DiffAugment** (Zhao et al., 2020): the same differentiable
random translation (1/8 of the size, zero padded) and cutout (a square of half the size) is applied to
real and generated images before the discriminator, in both steps; on a few hundred images it keeps
the discriminator from memorising the training set.

Everything random comes from one ``torch.Generator`` seeded by the caller (noise, labels, batches,
augmentation) and the networks are initialised from the same seed, so on CPU a run is repeatable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medtl.models.gan import ConditionalGenerator, GanSpec, build_gan

log = logging.getLogger(__name__)

__all__ = ["GanTraining", "GanResult", "diff_augment", "sample_images", "to_unit", "train_gan"]


@dataclass(frozen=True)
class GanTraining:
    """Hyper-parameters of one GAN training (``medtl synth`` options)."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    translation: float = 0.125
    cutout: float = 0.5

    def as_dict(self) -> dict:
        return {"loss": "hinge", "optimizer": "adam", "diffaugment": "translation+cutout", **asdict(self)}


@dataclass
class GanResult:
    """A trained generator and its training record."""

    generator: ConditionalGenerator
    seconds: float
    losses: list[dict[str, float]] = field(default_factory=list)
    """Mean discriminator / generator loss per tenth of the steps."""


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, S, S, C)`` → float ``(N, C, S, S)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def diff_augment(x: torch.Tensor, rng: torch.Generator, translation: float = 0.125,
                 cutout: float = 0.5) -> torch.Tensor:
    """Random translation (zero padded) and cutout, differentiable in ``x``, one draw per image."""
    n, _, h, w = x.shape
    if translation > 0:
        sh, sw = max(1, int(h * translation)), max(1, int(w * translation))
        dy = torch.randint(-sh, sh + 1, (n, 1, 1), generator=rng)
        dx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=rng)
        yy = (torch.arange(h).view(1, h, 1) + dy).clamp(-1, h)  # -1 and h index the zero border
        xx = (torch.arange(w).view(1, 1, w) + dx).clamp(-1, w)
        padded = F.pad(x, (1, 1, 1, 1))
        idx = torch.arange(n).view(n, 1, 1)
        x = padded.permute(0, 2, 3, 1)[idx, yy + 1, xx + 1].permute(0, 3, 1, 2)
    if cutout > 0:  # a square of side ``cutout`` × size centred anywhere in the image (clipped at the edges)
        half = max(1, int(h * cutout) // 2)
        cy = torch.randint(0, h, (n, 1, 1), generator=rng)
        cx = torch.randint(0, w, (n, 1, 1), generator=rng)
        rows = (torch.arange(h).view(1, h, 1) - cy).abs() < half
        inside = rows & ((torch.arange(w).view(1, 1, w) - cx).abs() < half)
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x


def train_gan(images: np.ndarray, labels: np.ndarray, spec: GanSpec, hp: GanTraining, seed: int,
              progress: bool = False) -> GanResult:
    """Train a conditional DCGAN on ``images`` (uint8 ``(N, size, size, C)``) with class ``labels``.

    Args:
        images: The training images, already at ``spec.size`` and ``spec.channels``.
        labels: Their class indices.
        spec: The architecture.
        hp: Steps, batch size, learning rate, DiffAugment strengths.
        seed: Seeds the initialisation and every random draw.
        progress: Log the losses every tenth of the steps.
    """
    if images.shape[1:] != (spec.size, spec.size, spec.channels):
        raise ValueError(f"images of shape {images.shape[1:]}, the GAN makes {(spec.size, spec.size, spec.channels)}")
    started = time.perf_counter()
    rng = torch.Generator().manual_seed(seed)
    real, y_real = to_unit(images), torch.as_tensor(labels, dtype=torch.int64)
    gen, disc = build_gan(spec, seed)
    opt_g = torch.optim.Adam(gen.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
    aug = lambda x: diff_augment(x, rng, hp.translation, hp.cutout)  # noqa: E731
    batch = min(hp.batch_size, len(real))
    record, window = [], {"d": 0.0, "g": 0.0}
    every = max(1, hp.steps // 10)
    for step in range(hp.steps):
        pick = torch.randint(0, len(real), (batch,), generator=rng)
        x, y = real[pick], y_real[pick]
        z = torch.randn(batch, spec.z_dim, generator=rng)
        fake = gen(z, y)
        loss_d = F.relu(1 - disc(aug(x), y)).mean() + F.relu(1 + disc(aug(fake.detach()), y)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = -disc(aug(fake), y).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        window["d"] += float(loss_d.detach()) / every
        window["g"] += float(loss_g.detach()) / every
        if (step + 1) % every == 0:
            record.append({"step": step + 1, "loss_d": round(window["d"], 4), "loss_g": round(window["g"], 4)})
            if progress:
                log.info("GAN step %d/%d: loss D %.3f, G %.3f", step + 1, hp.steps, window["d"], window["g"])
            window = {"d": 0.0, "g": 0.0}
    return GanResult(gen.eval(), time.perf_counter() - started, record)


@torch.inference_mode()
def sample_images(generator: ConditionalGenerator, labels: np.ndarray, seed: int, batch_size: int = 64) -> np.ndarray:
    """uint8 ``(len(labels), size, size, C)`` images of the given classes, from noise seeded by ``seed``."""
    generator = generator.eval()
    rng = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(labels, dtype=torch.int64)
    z = torch.randn(len(y), generator.spec.z_dim, generator=rng)
    out = [generator(z[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    x = torch.cat(out) if out else torch.zeros(0, generator.spec.channels, generator.spec.size, generator.spec.size)
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
