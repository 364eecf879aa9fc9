"""Fast forwards for frozen work: feature banks, prefix caches and test-time predictions.

On CPU a module that no longer trains runs faster once TorchScript has traced and frozen it
(:func:`torch.jit.trace` + :func:`torch.jit.freeze`): BatchNorm is folded into the preceding
convolution, constants are propagated and activations are fused. Measured on the 2-core CI machine
(docs/performance.md): EfficientNet-Lite0 1.45-1.6x, ResNet-18 1.07x, DenseNet-121 1.13x, outputs equal
to float32 rounding (max abs difference ~1e-5). Tracing costs about one forward of a few images, so
small jobs (fewer than :data:`MIN_IMAGES` images) stay eager.

The traced module is a snapshot of the weights: use one :class:`FastForward` per pass over frozen
weights, never across training steps. On a GPU the eager module runs (AMP is the fast path there).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

MIN_IMAGES = 96
"""Below this many images tracing does not pay for itself."""

_TOLERANCE = 1e-3


class FastForward:
    """Calls ``module`` (in eval mode, under inference mode) traced and frozen on CPU, else eagerly.

    The module is traced on the first two images of the first batch and checked against the eager
    output there; any failure (an untraceable model, a mismatch) falls back to the eager module with
    a log line, so results never depend on whether the fast path worked.

    Args:
        module: The frozen network (a backbone, a prefix, a whole model in eval mode).
        n_images: How many images this pass will run (decides whether tracing pays).
        enabled: False runs eagerly (``train.fast_inference: false``).
    """

    def __init__(self, module: nn.Module, n_images: int, enabled: bool = True) -> None:
        self.module = module
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        self.active = enabled and device.type == "cpu" and n_images >= MIN_IMAGES
        self.traced: torch.jit.ScriptModule | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.active and self.traced is None:
            self.traced = self._trace(x)
            self.active = self.traced is not None
        if self.traced is not None:
            out = self.traced(x)
            if out.shape[0] == x.shape[0]:
                return out
            log.info("fast inference: traced %s returned %s for a batch of %d; running eagerly",
                     type(self.module).__name__, tuple(out.shape), x.shape[0])
            self.traced, self.active = None, False
        return self.module(x)

    def _trace(self, x: torch.Tensor) -> torch.jit.ScriptModule | None:
        sample = x[:2].clone()
        name = type(self.module).__name__
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = sample.clone()  # inference tensors cannot be recorded by the tracer
                traced = torch.jit.freeze(torch.jit.trace(self.module.eval(), example, check_trace=False))
                got, expected = traced(example), self.module(example)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: run eagerly
            log.info("fast inference: cannot trace %s (%s: %s); running eagerly", name, type(exc).__name__, exc)
            return None
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
                got, expected, rtol=_TOLERANCE, atol=_TOLERANCE):
            log.info("fast inference: traced %s differs from the eager module; running eagerly", name)
            return None
        log.debug("fast inference: %s traced and frozen", name)
        return traced
