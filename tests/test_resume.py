"""Crash-safe runs: ``kill -9`` in the middle of fold 2 of a real run, ``--resume``, the same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medtl import rundir

pytestmark = pytest.mark.slow

MEDTL = [sys.executable, "-c", "from medtl.cli import app; app()"]


def config(root: Path) -> dict:
    return {"name": "resume", "data": {"source": "folder", "root": str(root), "positive_class": "yes",
                                       "image_size": 32, "max_per_class": 12,
                                       "split": {"method": "kfold", "folds": 3, "seed": 0},
                                       "augment": {"hflip": True}},
            "transfer": {"strategy": "fine_tune", "unfreeze_from": "blocks.5"},
            "train": {"epochs": 4, "batch_size": 8, "lr": 0.001, "warmup_epochs": 1, "mixup": 0.3,
                      "progress": False, "early_stopping": {"monitor": "val_loss", "patience": 10}},
            "evaluate": {"bootstrap": 50, "report": False, "label_issues": False}}


def medtl(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([*MEDTL, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def kill_9_when(proc: subprocess.Popen, path: Path, what: str) -> None:
    """``kill -9`` the process as soon as ``path`` exists (it must still be running then)."""
    deadline = time.monotonic() + 600
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the process ended before {what}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def comparable(run: Path) -> tuple[str, dict]:
    metrics = json.loads((run / rundir.METRICS).read_text())
    metrics.pop("seconds")
    return (run / rundir.PREDICTIONS).read_text(), metrics


def test_kill_9_in_fold_2_then_resume_gives_the_uninterrupted_metrics(brain_mri: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(config(brain_mri)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same thread count for every run
    finish(medtl("train", str(cfg), "--out", str(tmp_path / "whole"), "--quiet", env=env))

    run = tmp_path / "run"
    proc = medtl("train", str(cfg), "--out", str(run), "--quiet", env=env)
    kill_9_when(proc, run / rundir.CHECKPOINTS / "fold1-m0.ckpt", "fold 2 was checkpointed")
    assert rundir.state(run) == "unfinished"
    assert (run / "model" / "fold0.safetensors").is_file() and not (run / "model" / "fold2.safetensors").exists()
    live = rundir.read_rows(run / rundir.HISTORY)  # history.csv grows epoch by epoch, not at the end
    assert {r["fold"] for r in live} >= {"0", "1"} and any(r["fold"] == "1" and r["epoch"] == "0" for r in live)

    refused = subprocess.run([*MEDTL, "train", str(cfg), "--out", str(run), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr

    finish(medtl("train", str(cfg), "--out", str(run), "--resume", "--quiet", env=env))
    assert rundir.is_complete(run) and not (run / rundir.CHECKPOINTS).exists()
    log = (run / rundir.LOG).read_text()
    assert "resuming the unfinished run" in log and "finished before the interruption" in log
    assert "resuming from" in log, "fold 2 continued from its epoch checkpoint"
    assert comparable(run) == comparable(tmp_path / "whole")


def test_resume_refuses_another_config(brain_mri: Path, tmp_path: Path) -> None:
    from medtl.config import parse_config
    from medtl.errors import MedtlError
    from medtl.experiment import run_experiment

    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("name: other\n")
    with pytest.raises(MedtlError, match="started with another config"):
        run_experiment(parse_config(config(brain_mri)), run, progress=False, resume=True)


def study_yaml(root: Path) -> dict:
    base = config(root)
    base["train"] |= {"epochs": 3}
    return {"name": "resume-study", "base": base, "baseline": "ft-0",
            "axes": {"strategy": {"ft": {"transfer.strategy": "fine_tune"}},
                     "seed": {"key": "train.seed", "values": [0, 1]}}}


def test_kill_9_in_the_second_cell_of_a_study_then_rerun_gives_the_uninterrupted_study(brain_mri: Path,
                                                                                       tmp_path: Path) -> None:
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(study_yaml(brain_mri), sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finish(medtl("study", str(spec), "--out", str(tmp_path / "whole"), "--quiet", env=env))

    out = tmp_path / "study"
    proc = medtl("study", str(spec), "--out", str(out), "--quiet", env=env)
    kill_9_when(proc, out / "cells" / "ft-1" / rundir.CHECKPOINTS / "fold0-m0.ckpt", "its second cell was checkpointed")
    assert rundir.is_complete(out / "cells" / "ft-0") and rundir.state(out / "cells" / "ft-1") == "unfinished"

    finish(medtl("study", str(spec), "--out", str(out), "--quiet", env=env))
    assert "continuing its unfinished run" in (out / "cells" / "ft-1" / rundir.LOG).read_text() or \
        "resuming the unfinished run" in (out / "cells" / "ft-1" / rundir.LOG).read_text()
    for cell in ("ft-0", "ft-1"):
        assert comparable(out / "cells" / cell) == comparable(tmp_path / "whole" / "cells" / cell), cell
    def table(study: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "run_dir"} for row in rundir.read_rows(study / "comparison.csv")]

    assert table(out) == table(tmp_path / "whole")
