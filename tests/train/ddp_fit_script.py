"""One :func:`medtl.train.engine.fit` of a tiny classifier, run as a script by tests/train/test_ddp.py.

    python ddp_fit_script.py OUT_DIR DEVICES [--num-nodes N] [--device cuda] [--checkpoint PATH [--kill-at EPOCH]]
                             [--sampler balanced]

With DEVICES > 1 (or NUM_NODES > 1) the fit uses ``train.strategy: ddp`` on CPU (gloo) and Lightning's
launcher re-executes this script once per extra process. Each process writes ``rank<r>.json``: the
sample indices each training epoch read (column 0 of the inputs is the sample's index; the model
does not see it), the indices of every gathered validation set, and the fit's history. With
``--checkpoint`` the fit is checkpointed after every epoch (and continues from the file when it exists);
``--kill-at E`` kills every process of the run with SIGKILL when epoch E starts (its process group).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import TensorDataset

import medtl.train.engine as engine
from medtl.config import TrainConfig
from medtl.train import distributed

N_TRAIN, N_VAL = 21, 11  # odd: DistributedSampler pads both with repeats


class WithoutIndex(nn.Module):
    """A linear classifier on every input column but the first (the sample index)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:, 1:])


class SeenIndices(L.Callback):
    """The sample indices of each training epoch, in the order this process read them."""

    def __init__(self) -> None:
        self.epochs: list[list[int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: tuple,
                             batch_idx: int) -> None:
        self.epochs[-1] += [int(i) for i in batch[0][:, 0]]


class KillAt(L.Callback):
    """SIGKILL to this process group when epoch ``epoch`` starts (the checkpoint of the one before is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and trainer.is_global_zero:
            os.killpg(0, signal.SIGKILL)


def blobs(n: int, offset: int, seed: int) -> TensorDataset:
    """Two overlapping 2-D Gaussian blobs; column 0 holds the sample index."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.tensor([[-0.5, -0.5], [0.5, 0.5]])[y] + torch.randn(n, 2, generator=gen)
    return TensorDataset(torch.cat([torch.arange(offset, offset + n).float()[:, None], x], 1), y)


def main(out: Path, devices: int, num_nodes: int, device: str, checkpoint: Path | None, kill_at: int | None,
         sampler: str = "shuffle") -> None:
    gathered: list[list[int]] = []
    plain = engine.gather_unique

    def recorded(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        joined = plain(index, *values)
        gathered.append([int(i) for i in joined[0]])
        return joined

    engine.gather_unique = recorded  # records what the module gathers; the computation is the library's
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=4, epochs=3, device=device, num_workers=0, progress=False,
                      scheduler="constant", warmup_epochs=0.0, devices=devices, num_nodes=num_nodes,
                      strategy="ddp" if devices * num_nodes > 1 else "auto", sampler=sampler)
    L.seed_everything(0, verbose=False)
    seen = SeenIndices()
    module = engine.ClassifierModule(WithoutIndex(), cfg, positive_index=1)
    result = engine.fit(module, blobs(N_TRAIN, 0, 1), blobs(N_VAL, 1000, 2), cfg, seed=0, progress=False,
                        callbacks=[seen, *([KillAt(kill_at)] if kill_at is not None else [])], checkpoint=checkpoint)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    record = {"n_train": N_TRAIN, "n_val": N_VAL,
              "rank": rank, "rank_zero": distributed.is_rank_zero(), "train": seen.epochs, "val": gathered,
              "history": result.history, "best_epoch": result.best_epoch}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("devices", type=int)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--sampler", default="shuffle")
    a = parser.parse_args()
    main(a.out, a.devices, a.num_nodes, a.device, a.checkpoint, a.kill_at, a.sampler)
