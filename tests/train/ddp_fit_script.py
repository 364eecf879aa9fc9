"""One :func:`medtl.train.engine.fit` of a tiny classifier, run as a script by tests/train/test_ddp.py.

    python ddp_fit_script.py OUT_DIR DEVICES [NUM_NODES [DEVICE]]

With DEVICES > 1 (or NUM_NODES > 1) the fit uses ``train.strategy: ddp`` on CPU (gloo) and Lightning's
launcher re-executes this script once per extra process. Each process writes ``rank<r>.json``: the
sample indices each training epoch read (column 0 of the inputs is the sample's index; the model
does not see it), the indices of every gathered validation set, and the fit's history.
"""

from __future__ import annotations

import json
import sys
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


def blobs(n: int, offset: int, seed: int) -> TensorDataset:
    """Two overlapping 2-D Gaussian blobs; column 0 holds the sample index."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.tensor([[-0.5, -0.5], [0.5, 0.5]])[y] + torch.randn(n, 2, generator=gen)
    return TensorDataset(torch.cat([torch.arange(offset, offset + n).float()[:, None], x], 1), y)


def main(out: Path, devices: int, num_nodes: int, device: str) -> None:
    gathered: list[list[int]] = []
    plain = engine.gather_unique

    def recorded(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        joined = plain(index, *values)
        gathered.append([int(i) for i in joined[0]])
        return joined

    engine.gather_unique = recorded  # records what the module gathers; the computation is the library's
    cfg = TrainConfig(optimizer="sgd", lr=0.1, batch_size=4, epochs=3, device=device, num_workers=0, progress=False,
                      scheduler="constant", warmup_epochs=0.0, devices=devices, num_nodes=num_nodes,
                      strategy="ddp" if devices * num_nodes > 1 else "auto",
                      )
    L.seed_everything(0, verbose=False)
    seen = SeenIndices()
    module = engine.ClassifierModule(WithoutIndex(), cfg, positive_index=1)
    result = engine.fit(module, blobs(N_TRAIN, 0, 1), blobs(N_VAL, 1000, 2), cfg, seed=0, progress=False,
                        callbacks=[seen])
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    record = {"n_train": N_TRAIN, "n_val": N_VAL,
              "rank": rank, "rank_zero": distributed.is_rank_zero(), "train": seen.epochs, "val": gathered,
              "history": result.history, "best_epoch": result.best_epoch}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), int(args[1]), int(args[2]) if len(args) > 2 else 1, args[3] if len(args) > 3 else "cpu")
