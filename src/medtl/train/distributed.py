"""Several training processes (Lightning DDP): which process is rank 0, which device each uses, and
validation outputs gathered over the processes exactly once per image.

How the processes come about (docs/scaling.md): ``medtl train`` with ``train.strategy: ddp`` and
``train.devices: N`` is re-executed by Lightning's launcher at the first fit (the children see
``LOCAL_RANK``); ``torchrun`` and SLURM's ``srun`` start every process themselves (``RANK`` /
``SLURM_PROCID``); a run over several machines sets ``NODE_RANK`` on each. Every process runs the whole
experiment (data, folds, predictions) and only the fits are collective, so rank 0 alone writes the run
directory and the others take part in the fits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from medtl.config import TrainConfig
from medtl.errors import TrainingError

RANK_VARIABLES = ("RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "SLURM_PROCID")
"""Environment variables the launchers set; global rank 0 is the process where each is unset or 0."""


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 (True in a single-process run).

    The process group decides once it exists; before that (data preparation, the first fit's launch) the
    launchers' environment does: torchrun sets ``RANK``, Lightning's launcher ``LOCAL_RANK`` (and
    ``NODE_RANK`` on every machine of a multi-node run), SLURM ``SLURM_PROCID``.
    """
    if _initialized():
        return dist.get_rank() == 0
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if not value.isdigit() or int(value) != 0:
            return False
    return True


def local_device(device: str) -> str:
    """The device of this process: ``cuda:<local rank>`` for CUDA with several processes on a machine.

    Work outside the fits (feature banks, predictions) then runs on the process's own GPU, the one
    Lightning gives its fits, instead of every process crowding GPU 0.
    """
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")
    if device != "cuda" or not local or not local.isdigit():
        return device
    return f"cuda:{int(local)}" if int(local) < torch.cuda.device_count() else device


def world_size(cfg: TrainConfig, gpu: bool) -> int:
    """Processes of a fit: ``train.devices`` (``auto``: every visible GPU, 1 on CPU) × ``train.num_nodes``."""
    devices = cfg.devices if cfg.devices != "auto" else (max(torch.cuda.device_count(), 1) if gpu else 1)
    return devices * cfg.num_nodes


def per_process_batch(cfg: TrainConfig, processes: int) -> int:
    """Each process's share of the global ``train.batch_size``.

    Raises:
        TrainingError: The batch does not split evenly over the processes.
    """
    if cfg.batch_size % processes:
        raise TrainingError(f"train.batch_size {cfg.batch_size} is the global batch and must split evenly over "
                            f"the {processes} processes (train.devices × train.num_nodes); choose a multiple "
                            f"of {processes}")
    return cfg.batch_size // processes


class IndexedDataset(Dataset):
    """``dataset``'s items with their index appended: ``(x, y, i)``, so gathered outputs can be deduplicated."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        return (*self.dataset[i], i)


def unique_by_index(parts: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Join per-process ``(index, *values)`` parts: each index once (its first occurrence), in index order.

    ``DistributedSampler`` pads the last rounds with images from the start so that every process gets the
    same number of batches; those repeats are dropped here.

    Args:
        parts: One tuple per process: an index tensor of shape (n_r,) and value tensors whose first
            dimension is n_r.

    Returns:
        The unique indices, sorted, then each value tensor in the same order.
    """
    index = torch.cat([p[0] for p in parts])
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    pick = order[first]
    return (index[pick], *(torch.cat([p[k] for p in parts])[pick] for k in range(1, len(parts[0]))))


def gather_unique(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's ``(index, *values)``, gathered onto every process and joined by :func:`unique_by_index`.

    In a single process: this process's part, each index once in index order.
    """
    part = (index.cpu(), *(v.cpu() for v in values))
    if not _initialized() or dist.get_world_size() == 1:
        return unique_by_index([part])
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return unique_by_index(parts)


def barrier() -> None:
    """Wait for every process of the run (nothing to wait for without a process group)."""
    if _initialized():
        dist.barrier()
