"""Several training processes (``train.strategy: ddp``): rank 0 alone writes, validation counts each image once.

Fast tests check the pieces without processes: deduplication against torch's own ``DistributedSampler``
padding, the rank and device rules, the config checks and the read-only checkpoint store. The slow tests
launch real gloo processes on the CPU: a bare fit (1 vs 2 processes: the same images every epoch, each
validation image once), and ``medtl train`` on brain MRI (1 process vs 2 processes vs 2 "nodes" × 1
process on localhost). The GPU tests (NCCL, AMP with channels_last input) skip without CUDA.

Tolerance of 2 processes against 1 (feature-extraction head, 3 epochs, same global batch): the
DistributedSampler reads the images in another order, so the runs differ a little; every test-image
probability within 0.05 and accuracy / AUC within 0.1 (measured: 0.013 and 0.014 on this recipe).
Two nodes × 1 process are the same 2-process run, so they match it exactly.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler, TensorDataset

import medtl
from medtl import rundir
from medtl.config import TrainConfig, parse_config
from medtl.errors import ConfigError, TrainingError
from medtl.train import distributed
from medtl.train.distributed import IndexedDataset, gather_unique, per_process_batch, unique_by_index
from medtl.train.engine import FitResult

SCRIPT = Path(__file__).with_name("ddp_fit_script.py")
SRC = Path(medtl.__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a launched process: this checkout's medtl, one thread, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if k not in (*distributed.RANK_VARIABLES, "WORLD_SIZE", "MASTER_PORT")}
    path = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-4000:]


# ---------------------------------------------------------------- gathering, without processes


@pytest.mark.parametrize(("world", "n", "shuffle"), [(2, 11, False), (3, 10, False), (4, 3, False), (2, 1, False),
                                                     (3, 17, True)])
def test_unique_by_index_undoes_distributed_sampler_padding(world: int, n: int, shuffle: bool) -> None:
    parts = []
    for rank in range(world):
        idx = torch.tensor(list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=3)))
        parts.append((idx, idx.float()[:, None] * 10 + torch.tensor([[0.0, 1.0]]), idx % 2))
    assert sum(len(p[0]) for p in parts) == world * -(-n // world) > n - 1  # the sampler padded the last round
    index, values, labels = unique_by_index(parts)
    assert index.tolist() == list(range(n))
    assert torch.equal(values[:, 0], index.float() * 10) and torch.equal(values[:, 1], index.float() * 10 + 1)
    assert torch.equal(labels, index % 2)


def test_gather_unique_in_one_process_orders_by_index() -> None:
    index = torch.tensor([2, 0, 1, 0])
    got_index, got_values = gather_unique(index, torch.tensor([20.0, 0.0, 10.0, 99.0]))
    assert got_index.tolist() == [0, 1, 2] and got_values.tolist() == [0.0, 10.0, 20.0]  # the first 0 is kept


def test_indexed_dataset_appends_the_index() -> None:
    data = IndexedDataset(TensorDataset(torch.arange(3.0), torch.tensor([1, 0, 1])))
    assert len(data) == 3 and [int(v) for v in data[2]] == [2, 1, 2]


# ---------------------------------------------------------------- ranks, devices, batches, config


@pytest.mark.parametrize(("env", "zero"), [({}, True), ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
                                           ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1"}, False),
                                           ({"RANK": "3", "LOCAL_RANK": "0"}, False), ({"SLURM_PROCID": "2"}, False)])
def test_rank_zero_from_the_launchers_environment(monkeypatch: pytest.MonkeyPatch, env: dict, zero: bool) -> None:
    for name in distributed.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.is_rank_zero() is zero


def test_local_device_is_the_process_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.local_device("cuda") == "cuda" and distributed.local_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("cuda") == "cuda:1" and distributed.local_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "2")  # one GPU per process (CUDA_VISIBLE_DEVICES): its only device
    assert distributed.local_device("cuda") == "cuda"


def test_the_global_batch_splits_over_the_processes() -> None:
    cfg = TrainConfig(batch_size=12, devices="auto", strategy="ddp", num_nodes=3)
    assert distributed.world_size(cfg, gpu=False) == 3 and per_process_batch(cfg, 3) == 4
    with pytest.raises(TrainingError, match="train.batch_size 12 .* multiple of 5"):
        per_process_batch(cfg, 5)


def _tree(train: dict, transfer: dict | None = None) -> dict:
    return {"data": {"source": "folder", "root": "/nowhere"}, "train": train, "transfer": transfer or {}}


@pytest.mark.parametrize(("train", "transfer", "message"), [
    ({"strategy": "ddp_spawn"}, None, "ddp_spawn' is not supported.*use train.strategy: ddp"),
    ({"strategy": "fsdp"}, None, "fsdp' is not supported"),
    ({"devices": 2}, None, "set train.strategy: ddp"),
    ({"num_nodes": 2}, None, "set train.strategy: ddp"),
    ({"devices": 0, "strategy": "ddp"}, None, "at least 1"),
    ({"devices": 3, "strategy": "ddp", "batch_size": 32}, None, "batch_size 32 .* 3 processes"),
    ({"devices": 2, "strategy": "ddp"}, {"strategy": "gradual", "schedule": [{"epoch": 0, "unfreeze_from": "head"}]},
     "gradual' cannot run with train.strategy 'ddp'"),
])
def test_config_refuses_what_ddp_cannot_do(train: dict, transfer: dict | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_tree(train, transfer), "exp.yaml")


def test_config_accepts_ddp() -> None:
    cfg = parse_config(_tree({"devices": 2, "num_nodes": 2, "strategy": "ddp", "batch_size": 8}), "exp.yaml")
    assert (cfg.train.devices, cfg.train.num_nodes, cfg.train.strategy) == (2, 2, "ddp")


def test_a_reading_checkpoint_store_writes_nothing(tmp_path: Path) -> None:
    store = rundir.Checkpoints(tmp_path, writes=False)
    store.record(0, 0, "fold0.safetensors", FitResult(model=torch.nn.Linear(1, 1), history=[{"epoch": 0}]),
                 np.zeros((1, 2)), np.zeros((1, 2)))
    store.live_history(0, 0, [{"epoch": 0, "train_loss": 1.0}])
    assert list(tmp_path.iterdir()) == [] and store.finished(0, 0) is None


# ---------------------------------------------------------------- real processes (gloo on the CPU)


def fit(out: Path, devices: int, *options: str) -> subprocess.Popen:
    """The fit script in its own process group (``--kill-at`` kills that group)."""
    out.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(devices), *options], cwd=out,
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def fit_records(out: Path, devices: int, *options: str) -> list[dict]:
    finish([fit(out, devices, *options)])
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


@pytest.mark.slow
def test_two_processes_read_every_image_each_epoch_and_validate_each_image_once(tmp_path: Path) -> None:
    [one] = fit_records(tmp_path / "one", 1)
    two = fit_records(tmp_path / "two", 2)
    n_train, n_val = one["n_train"], one["n_val"]
    assert [r["rank"] for r in two] == [0, 1] and [r["rank_zero"] for r in two] == [True, False]
    for epoch in range(3):
        assert sorted(one["train"][epoch]) == list(range(n_train))
        shares = [r["train"][epoch] for r in two]
        assert [len(s) for s in shares] == [-(-n_train // 2)] * 2  # equal shares, one padding repeat
        assert set(shares[0]) | set(shares[1]) == set(range(n_train))
    for record in [one, *two]:
        assert record["val"] == [list(range(n_val))] * 3  # gathered: every validation image once, each epoch
    assert two[0]["history"] == two[1]["history"]  # every process logs the same metrics
    assert two[0]["best_epoch"] == two[1]["best_epoch"]
    for a, b in zip(one["history"], two[0]["history"], strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 0.1


@pytest.mark.slow
def test_two_processes_share_the_one_process_balanced_draw(tmp_path: Path) -> None:
    """train.sampler: balanced under ddp: each process makes the same seeded draw and Lightning's
    DistributedSamplerWrapper gives each its share; together they read the one-process draw (plus one
    padding repeat, 21 items over 2 processes)."""
    [one] = fit_records(tmp_path / "one", 1, "--sampler", "balanced")
    two = fit_records(tmp_path / "two", 2, "--sampler", "balanced")
    for epoch in range(3):
        drawn = Counter(one["train"][epoch])
        assert sum(drawn.values()) == one["n_train"] and len(drawn) < one["n_train"]  # with replacement
        shares = [r["train"][epoch] for r in two]
        assert [len(s) for s in shares] == [-(-one["n_train"] // 2)] * 2
        together = Counter(shares[0] + shares[1])
        assert together - drawn and sum((together - drawn).values()) == 1 and not drawn - together
    assert one["train"][0] != one["train"][1]  # a new draw every epoch
    assert two[0]["history"] == two[1]["history"]


@pytest.mark.slow
def test_two_processes_killed_after_an_epoch_resume_from_rank_0s_checkpoint(tmp_path: Path) -> None:
    whole = fit_records(tmp_path / "whole", 2, "--checkpoint", str(tmp_path / "whole.ckpt"))
    ckpt = tmp_path / "run.ckpt"
    killed = fit(tmp_path / "run", 2, "--checkpoint", str(ckpt), "--kill-at", "2")
    killed.communicate(timeout=600)
    assert killed.returncode == -9 and ckpt.is_file() and not list((tmp_path / "run").glob("rank*.json"))
    assert not list(tmp_path.glob(".*.tmp"))  # rank 0 renamed its checkpoint into place; no one else wrote
    resumed = fit_records(tmp_path / "run", 2, "--checkpoint", str(ckpt))
    assert [r["rank"] for r in resumed] == [0, 1]
    for r in resumed:  # both processes continued at epoch 2 with the first two epochs' history
        assert len(r["train"]) == 1 and r["history"] == whole[0]["history"]


def experiment(root: Path) -> dict:
    return {"name": "ddp", "data": {"source": "folder", "root": str(root), "positive_class": "yes", "image_size": 32,
                                    "max_per_class": 12, "split": {"method": "kfold", "folds": 2, "seed": 0}},
            "transfer": {"strategy": "feature_extraction"},
            "train": {"epochs": 3, "batch_size": 8, "lr": 0.003, "warmup_epochs": 0, "device": "cpu",
                      "progress": False},
            "evaluate": {"bootstrap": 20, "report": False, "label_issues": False, "tta": "none"}}


def train(folder: Path, *sets: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``medtl train`` as ``python -m medtl.cli`` (so that Lightning's launcher can re-execute it) in ``folder``."""
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "medtl.cli", "train", "exp.yaml", "--out", "run", "--quiet", *args],
                            cwd=folder, env=env or child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def runs(brain_mri: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same experiment in 1 process and in 2 processes, each in a folder of its own."""
    out = {}
    for name, sets in (("one", ()), ("two", ("train.strategy=ddp", "train.devices=2"))):
        folder = tmp_path_factory.mktemp(name)
        (folder / "exp.yaml").write_text(yaml.safe_dump(experiment(brain_mri)))
        finish([train(folder, *sets)])
        out[name] = folder
    return out


def predictions(run: Path, which: str = rundir.PREDICTIONS) -> list[dict[str, str]]:
    with open(run / which, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_two_processes_write_one_complete_run_directory_near_the_one_process_run(runs: dict[str, Path]) -> None:
    one, two = runs["one"] / "run", runs["two"] / "run"
    assert sorted(p.name for p in runs["two"].iterdir()) == ["exp.yaml", "run"]  # nothing else, anywhere
    assert rundir.is_complete(two) and not (two / rundir.CHECKPOINTS).exists()
    files = [json.loads((r / rundir.COMPLETE).read_text())["files"] for r in (one, two)]
    assert sorted(files[0]) == sorted(files[1])
    log = (two / rundir.LOG).read_text()
    assert log.count("fold 1/2: train") == 1 and log.count("fold 2/2: train") == 1  # one writer of run.log
    for which in (rundir.PREDICTIONS, rundir.VAL_PREDICTIONS):
        a, b = predictions(one, which), predictions(two, which)
        assert [(r["id"], r["fold"]) for r in a] == [(r["id"], r["fold"]) for r in b]
        assert len({r["id"] for r in b}) == len(b)  # each image once
        assert max(abs(float(x["prob_yes"]) - float(y["prob_yes"])) for x, y in zip(a, b, strict=True)) <= 0.05
    m1, m2 = (json.loads((r / rundir.METRICS).read_text()) for r in (one, two))
    for key in ("accuracy", "auc"):
        assert abs(m1[key]["value"] - m2[key]["value"]) <= 0.1, key
    assert m2["epochs_trained"] == [3, 3] and m2["n"] == m1["n"] == 24


@pytest.mark.slow
def test_two_nodes_of_one_process_on_localhost_match_two_processes(runs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    (tmp_path / "exp.yaml").write_text((runs["two"] / "exp.yaml").read_text())
    port = str(free_port())
    procs = [train(tmp_path, "train.strategy=ddp", "train.num_nodes=2",
                   env=child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node))) for node in (0, 1)]
    finish(procs)
    run, two = tmp_path / "run", runs["two"] / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "run"] and rundir.is_complete(run)
    assert predictions(run) == predictions(two)  # the same ranks and data: the same run
    assert (run / rundir.HISTORY).read_text() == (two / rundir.HISTORY).read_text()


# ---------------------------------------------------------------- GPU-only paths


@pytest.mark.gpu
@pytest.mark.slow
def test_nccl_two_gpus_validate_each_image_once(tmp_path: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices (NCCL)")
    records = fit_records(tmp_path / "nccl", 2, "--device", "cuda")
    assert len(records) == 2 and records[0]["history"] == records[1]["history"]
    assert all(v == list(range(len(v))) for r in records for v in r["val"])


@pytest.mark.gpu
def test_amp_fit_on_channels_last_images_on_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from medtl.data.transforms import Normalizer
    from medtl.train.engine import ClassifierModule, fit

    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=8, epochs=2, device="cuda", precision="16-mixed",
                      num_workers=0, progress=False, warmup_epochs=0.0)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 16, 16), generator=gen, dtype=torch.uint8)
    labels = torch.arange(32) % 2
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    module = ClassifierModule(net, cfg, positive_index=1, prepare=Normalizer((0.5,) * 3, (0.25,) * 3))
    result = fit(module, TensorDataset(images, labels), TensorDataset(images, labels), cfg, seed=0, progress=False)
    assert len(result.history) == 2 and all(np.isfinite(r["train_loss"]) for r in result.history)
