"""Baselines without medtl's machinery: plain timm + torch training loops.

Both loops get exactly what medtl gets, so the only difference is how training is done:

- the same decoded uint8 images (``medtl.experiment.prepare_data``) and the same fold, so decoding
  and splitting are not what differs;
- the same model, built by the caller with ``medtl.experiment.build_model`` (timm + the packaged
  weights + the same zero-initialised head), the same optimizer, learning rate, schedule
  (medtl's warm-up + cosine, written out below), batch size and number of epochs;
- the same evaluation: the best epoch by validation AUC is kept, AUC on the test part is reported.

The loops themselves are written out in plain torch: no Lightning, no feature bank, no cache.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

Build = Callable[[], tuple[nn.Module, object]]
"""Returns ``(model, weights spec)``; the model has ``.backbone`` and ``.head``, the spec ``.mean``/``.std``."""


@dataclass
class LoopResult:
    """Timings and test AUC of one baseline run."""

    seconds: float
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    val_seconds: list[float] = field(default_factory=list)
    test_auc: float | None = None
    best_epoch: int = -1

    def steady_epoch_seconds(self) -> float:
        """Median epoch time after the first (warm-up) epoch; the only epoch when there is one."""
        times = self.epoch_seconds[1:] or self.epoch_seconds
        return float(np.median(times))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → float, grey replicated to RGB, normalised, channels_last (as medtl feeds it)."""
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _stats(spec: object) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return mean, std


def _nchw(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """medtl's schedule (``medtl.train.engine.warmup_cosine``): linear warm-up from 1%, cosine to 1%."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def auc(labels: np.ndarray, probs: np.ndarray, positive_index: int) -> float | None:
    """Binary AUC of the positive class; None when only one class is present."""
    y = labels == positive_index
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, probs[:, positive_index]))


# ---------------------------------------------------------------- (a) feature extraction


@torch.inference_mode()
def _features(backbone: nn.Module, images: np.ndarray, idx: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
              batch_size: int) -> torch.Tensor:
    out = [backbone(normalize(_nchw(images, idx[s:s + batch_size]), mean, std)).float()
           for s in range(0, len(idx), batch_size)]
    return torch.cat(out)


@torch.inference_mode()
def _head_probs(head: nn.Module, feats: torch.Tensor) -> np.ndarray:
    return head.eval()(feats).softmax(1).numpy()


def naive_feature_extraction(build: Build, images: np.ndarray, labels: np.ndarray, fold: object,
                             positive_index: int, *, epochs: int, lr: float, batch_size: int,
                             probe_c: float, seed: int, n_classes: int) -> LoopResult:
    """Frozen backbone + trained head, recomputing the backbone's features every time they are needed.

    Mirrors medtl's feature-extraction recipe step by step: a linear-probe start of the head
    (``medtl.transfer.probe.init_head`` on the training features), AdamW without weight decay and
    the cosine schedule, validation AUC after every epoch with the best head kept, test AUC at the
    end. Unlike medtl, the backbone runs on every training and validation batch of every epoch.
    Model building is inside the timing, as it is inside medtl's run time.
    """
    from medtl.transfer.probe import init_head

    started = time.perf_counter()
    torch.manual_seed(seed)
    model, spec = build()
    backbone, head = model.backbone.eval(), model.head
    backbone.requires_grad_(False)
    mean, std = _stats(spec)
    init_head(head, _features(backbone, images, fold.train, mean, std, batch_size), labels[fold.train],
              n_classes, probe_c, seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(fold.train) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(0, steps))
    y_all = torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    result, best, best_state = LoopResult(0.0), -math.inf, copy.deepcopy(head.state_dict())
    for epoch in range(epochs):
        t0 = time.perf_counter()
        head.train()
        order = fold.train[torch.randperm(len(fold.train), generator=generator).numpy()]
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            with torch.no_grad():
                feats = backbone(normalize(_nchw(images, idx), mean, std))
            loss = nn.functional.cross_entropy(head(feats), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        t1 = time.perf_counter()
        if len(fold.val):
            val_probs = _head_probs(head, _features(backbone, images, fold.val, mean, std, batch_size))
            score = auc(labels[fold.val], val_probs, positive_index)
            if score is not None and score > best:
                best, best_state, result.best_epoch = score, copy.deepcopy(head.state_dict()), epoch
        t2 = time.perf_counter()
        result.train_seconds.append(t1 - t0)
        result.val_seconds.append(t2 - t1)
        result.epoch_seconds.append(t2 - t0)
    head.load_state_dict(best_state)
    probs = _head_probs(head, _features(backbone, images, fold.test, mean, std, batch_size))
    result.test_auc = auc(labels[fold.test], probs, positive_index)
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- (d) full fine-tuning


class _Images(Dataset):
    """``(uint8 CHW, label)`` items from the decoded array, augmented per item (as medtl's dataset)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 augment: Callable | None) -> None:
        self.images, self.labels, self.indices, self.augment = images, labels, indices, augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        idx = self.indices[i]
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(2, 0, 1)
        return (self.augment(x) if self.augment is not None else x), int(self.labels[idx])


def _train_mode(model: nn.Module) -> None:
    """Train mode with BatchNorm statistics frozen (medtl's default ``transfer.bn: frozen``)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def bare_fine_tune(build: Build, images: np.ndarray, labels: np.ndarray, fold: object, positive_index: int, *,
                   augment: Callable | None, epochs: int, lr: float, batch_size: int, warmup_epochs: float,
                   seed: int) -> LoopResult:
    """Full fine-tuning in a bare loop: Adam on all parameters, one validation pass per epoch.

    Per epoch: shuffle, augment per image, normalise, forward, cross-entropy, backward, Adam step,
    schedule step; then a forward pass over the validation images. ``epoch_seconds`` covers both
    (medtl's epoch time does too). The best epoch by validation AUC is kept; test AUC is reported.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    model, spec = build()
    model.requires_grad_(True)
    mean, std = _stats(spec)
    loader = DataLoader(_Images(images, labels, fold.train, augment), batch_size=batch_size, shuffle=True,
                        num_workers=0, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch))
    result, best, best_state = LoopResult(0.0), -math.inf, None
    for epoch in range(epochs):
        t0 = time.perf_counter()
        _train_mode(model)
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(normalize(x, mean, std)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        t1 = time.perf_counter()
        if len(fold.val):
            score = auc(labels[fold.val], _probs(model, images, fold.val, mean, std, batch_size), positive_index)
            if score is not None and score > best:
                best, result.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        t2 = time.perf_counter()
        result.train_seconds.append(t1 - t0)
        result.val_seconds.append(t2 - t1)
        result.epoch_seconds.append(t2 - t0)
    if best_state is not None:
        model.load_state_dict(best_state)
    result.test_auc = auc(labels[fold.test], _probs(model, images, fold.test, mean, std, batch_size), positive_index)
    result.seconds = time.perf_counter() - started
    return result


@torch.inference_mode()
def _probs(model: nn.Module, images: np.ndarray, idx: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
           batch_size: int) -> np.ndarray:
    model.eval()
    out = [model(normalize(_nchw(images, idx[s:s + batch_size]), mean, std)).float().softmax(1)
           for s in range(0, len(idx), batch_size)]
    return torch.cat(out).numpy()
