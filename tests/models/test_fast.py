"""The traced-and-frozen fast path for frozen work gives the eager outputs, or falls back to eager."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from torch import nn

from medtl.models.fast import MIN_IMAGES, FastForward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "resnet18"])
def test_traced_forward_equals_eager(arch: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics to fold
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    run = FastForward(model, MIN_IMAGES)
    x = _images(9)
    with torch.inference_mode():
        expected = model(x)
        first, last = run(x[:6]), run(x[6:])  # a smaller last batch
    assert run.traced is not None
    torch.testing.assert_close(torch.cat([first, last]), expected, rtol=1e-4, atol=1e-4)


def test_small_jobs_and_disabled_runs_stay_eager() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    for run in (FastForward(model, MIN_IMAGES - 1), FastForward(model, 10_000, enabled=False)):
        with torch.inference_mode():
            run(_images(4))
        assert run.traced is None and not run.active


class _DataDependent(nn.Module):
    """Returns a dict: not traceable as a tensor module."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x.mean((2, 3))}


def test_untraceable_module_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    run = FastForward(_DataDependent(), MIN_IMAGES)
    with caplog.at_level(logging.INFO, logger="medtl.models.fast"), torch.inference_mode():
        out = run(_images(3))
    assert isinstance(out, dict) and run.traced is None
    assert "running eagerly" in caplog.text


class _BatchBaked(nn.Module):
    """Bakes the traced batch size into a reshape: the fast path must notice and run eagerly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1).sum(1, keepdim=True)


def test_a_batch_size_baked_into_the_trace_is_caught() -> None:
    run = FastForward(_BatchBaked(), MIN_IMAGES)
    x = _images(5)
    with torch.inference_mode():
        out = run(x)
    torch.testing.assert_close(out, x.reshape(5, -1).sum(1, keepdim=True))
