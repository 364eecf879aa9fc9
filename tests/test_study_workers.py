"""Studies over workers: local processes and a real local Dask cluster run every cell exactly once,
and a dead worker's cell is taken over (medtl.study_workers).

The fast tests use a fake run (tests/test_study.py's FakeRun) that also appends ``cell pid`` to a log
file, so that calls made in other processes can be counted; one slow test runs a real tiny study.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_study import FakeRun, write_study
from typer.testing import CliRunner

import medtl.study as study_mod
from medtl import study_workers as sw
from medtl.cli import app
from medtl.errors import ConfigError
from medtl.study import load_study, parse_study, run_study


class LoggedRun(FakeRun):
    """A picklable fake run that logs ``cell pid`` to ``log_file``; it kills its own process on the first call
    of the cell ``die_in`` (a worker killed in the middle of a cell)."""

    def __init__(self, log_file: Path, seconds: float = 0.3, die_in: str | None = None) -> None:
        super().__init__()
        self.log_file = str(log_file)
        self.seconds = seconds
        self.die_in = die_in

    def __call__(self, cfg, out_dir: Path, progress: bool = True, resume: bool = False) -> dict:
        name = Path(out_dir).name
        with open(self.log_file, "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "started").write_text("")
        time.sleep(self.seconds)
        if name == self.die_in and not Path(self.log_file + ".died").exists():
            Path(self.log_file + ".died").write_text("")
            os._exit(9)
        return super().__call__(cfg, out_dir, progress)


def calls(log_file: Path) -> list[tuple[str, int]]:
    return [(line.split()[0], int(line.split()[1])) for line in log_file.read_text().splitlines()]


@pytest.fixture
def logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoggedRun:
    runner = LoggedRun(tmp_path / "calls.log")
    monkeypatch.setattr(study_mod, "run_experiment", runner)
    return runner


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_two_local_workers_run_each_cell_once_and_take_over_dead_workers(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One spawn-heavy run for several facts (each worker process imports torch): two workers share the
    cells; ft-0 holds the stale claim of a dead worker (taken over, its unfinished directory removed); the
    worker running fe-1 is killed in the middle (the other takes it over); ft-1 fails (reported once)."""
    runner = LoggedRun(tmp_path / "calls.log", die_in="fe-1")
    runner.fail_when = "ft-1"
    monkeypatch.setattr(study_mod, "run_experiment", runner)
    out = tmp_path / "out"
    (out / "cells" / "ft-0").mkdir(parents=True)
    (out / "cells" / "ft-0" / "left-by-the-dead-worker").write_text("")
    sw.claim_path(out, "ft-0").parent.mkdir(parents=True)
    sw.claim_path(out, "ft-0").write_text(json.dumps({"state": "running", "host": socket.gethostname(),
                                                      "pid": dead_pid(), "owner": "gone", "token": "old"}))
    result = run_study(load_study(write_study(tmp_path)), out, progress=False, workers=2)
    ran = calls(tmp_path / "calls.log")
    assert Counter(name for name, _ in ran) == {"fe-0": 1, "fe-1": 2, "ft-0": 1, "ft-1": 1}  # fe-1: killed once
    assert len({pid for _, pid in ran}) >= 2 and os.getpid() not in {pid for _, pid in ran}
    assert sorted(result.ran) == ["fe-0", "fe-1", "ft-0", "ft-1"] and result.failed == ["ft-1"]
    assert "boom in ft-1" in result.study.cell("ft-1").error
    assert not (out / "cells" / "ft-0" / "left-by-the-dead-worker").exists()
    assert json.loads(sw.claim_path(out, "ft-0").read_text())["state"] == "done"
    states = {c["name"]: c["status"] for c in json.loads((out / "study.json").read_text())["cells"]}
    assert states == {"fe-0": "done", "fe-1": "done", "ft-0": "done", "ft-1": "failed"}
    assert len((out / "comparison.csv").read_text().splitlines()) == 4


def test_claims_of_other_hosts_are_held_until_their_heartbeat_is_stale(tmp_path: Path) -> None:
    path = sw.claim_path(tmp_path, "c")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"state": "running", "host": "another-machine", "pid": 1, "owner": "x", "token": "t"}))
    me = sw.Owner.me()
    assert sw.try_claim(tmp_path, "c", me, "t", lambda: False) == "held"
    assert sw.try_claim(tmp_path, "c", me, "t", lambda: True) == "settled"
    old = time.time() - sw.STALE_S - 5
    os.utime(path, (old, old))
    assert sw.try_claim(tmp_path, "c", me, "t", lambda: False) == "claimed"
    assert json.loads(path.read_text())["owner"] == me.id
    sw.finish_claim(tmp_path, "c", me, "t", "failed", "boom")
    assert sw.try_claim(tmp_path, "c", me, "t", lambda: False) == "settled"  # failed once in this invocation
    assert sw.try_claim(tmp_path, "c", me, "next", lambda: False) == "claimed"  # a new invocation retries it


def test_a_real_local_dask_cluster_runs_the_cells(tmp_path: Path, logged: LoggedRun) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        result = run_study(load_study(write_study(tmp_path)), tmp_path / "out", progress=False,
                           scheduler=address.replace("tcp://", "dask://"))
    ran = calls(tmp_path / "calls.log")
    assert sorted(name for name, _ in ran) == ["fe-0", "fe-1", "ft-0", "ft-1"]
    assert os.getpid() not in {pid for _, pid in ran}
    assert result.failed == []


@pytest.mark.parametrize("address", ["dask://nohost", "http://h:1", "dask://:8786", "h:port"])
def test_bad_scheduler_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="Dask scheduler address"):
        sw.dask_address(address)
    assert sw.dask_address("dask://h:8786") == "tcp://h:8786" == sw.dask_address("h:8786")
    assert sw.dask_address("tls://h:1") == "tls://h:1"


def test_cli_workers_and_scheduler(tmp_path: Path, logged: LoggedRun) -> None:
    path = write_study(tmp_path)
    dry = CliRunner().invoke(app, ["study", str(path), "--out", str(tmp_path / "o1"), "--workers", "2", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    bad = CliRunner().invoke(app, ["study", str(path), "--out", str(tmp_path / "o2"), "--dask", "nohost"])
    assert bad.exit_code == 2 and "dask scheduler" in bad.output.lower()
    zero = CliRunner().invoke(app, ["study", str(path), "--workers", "0", "--dry-run"])
    assert zero.exit_code == 2
    assert not (tmp_path / "calls.log").exists()


@pytest.mark.slow
def test_a_real_tiny_study_on_two_workers(brain_mri: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          one_torch_thread: None) -> None:
    monkeypatch.setattr(study_mod.os, "cpu_count", lambda: 2)  # one torch thread per worker, as the serial run
    base = {"name": "tiny", "data": {"source": "folder", "root": str(brain_mri), "positive_class": "yes",
                                     "image_size": 32, "max_per_class": 12,
                                     "split": {"method": "kfold", "folds": 2, "seed": 0}},
            "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "progress": False},
            "evaluate": {"bootstrap": 50, "tta": "none", "report": False}}
    tree = {"name": "tiny-workers", "base": base, "baseline": "fe-0",
            "axes": {"strategy": {"fe": {"transfer.strategy": "feature_extraction"},
                                  "ft": {"transfer.strategy": "fine_tune"}},
                     "seed": {"key": "train.seed", "values": [0, 1]}}}
    result = run_study(parse_study(tree, tmp_path), tmp_path / "study", progress=False, workers=2)
    assert result.failed == [], [c.error for c in result.study.cells]
    owners = {json.loads(sw.claim_path(tmp_path / "study", c).read_text())["pid"] for c in result.ran}
    assert len(result.ran) == 4 and len(owners) == 2
    serial = run_study(parse_study(tree, tmp_path), tmp_path / "serial", progress=False)
    for cell in ("fe-0", "ft-1"):  # same seeds, same predictions as the serial study
        assert ((tmp_path / "study" / "cells" / cell / "predictions.csv").read_text()
                == (tmp_path / "serial" / "cells" / cell / "predictions.csv").read_text())
    assert serial.failed == []
