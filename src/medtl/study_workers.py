"""Study cells spread over workers: local processes (``--workers N``) or a Dask cluster (``--scheduler``).

Every worker runs the same loop over the cells still to do: claim a cell, run it, record the outcome,
and go on until every cell is settled. A cell is *claimed* by a small JSON file
``STUDY_DIR/claims/<cell>.json`` (owner host, pid and a random id, the study invocation's token, the
state ``running``/``done``/``failed``), written under an exclusive ``flock`` of ``claims/.lock``, so
two workers can never both decide to run a cell. While the cell runs, a heartbeat thread touches
the claim every :data:`HEARTBEAT_S` seconds. A ``running`` claim is *stale*, and is taken over, when
its owner's process is gone (same host) or its heartbeat is older than :data:`STALE_S` seconds (any
host); the cell's unfinished run directory is then removed and the cell runs again, as a re-run of
``medtl study`` does.

Why claim files and not the engine's task identity alone: Dask retries the task of a worker that
died (at-least-once), and two ``medtl study`` invocations on one study directory (two machines, or
a user restarting a study that still runs) know nothing of each other's tasks; the claim file
decides in the one place every worker sees, the study directory, so each cell runs exactly once
whichever engine starts the workers. The study directory must therefore be on a filesystem that
every worker mounts and that supports ``flock`` (local disks; NFSv4 and Lustre do).

Dask distributed was chosen over Ray and submitit: it is pure Python, installs with pip on any
machine, runs on a laptop (``LocalCluster``), on a set of machines (``dask scheduler`` plus
``dask worker ADDRESS`` on each) and on SLURM/PBS through ``dask-jobqueue``, and a cell is one
ordinary function call; Ray brings a large runtime and its own object store for nothing a cell
needs, and submitit serves SLURM only.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtl.errors import ConfigError

log = logging.getLogger(__name__)

CLAIMS = "claims"
"""Folder of the claim files inside the study directory."""
HEARTBEAT_S = 5.0
"""Seconds between two heartbeats of a running cell's claim."""
STALE_S = 60.0
"""A running claim whose heartbeat is older than this is taken over (``$MEDTL_CLAIM_STALE_S``)."""
POLL_S = 1.0
"""Seconds a worker waits before looking again at cells that other workers hold."""
DASK_PREFIXES = ("dask://", "tcp://", "tls://")


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: host, process and a random id (a pid can be reused)."""

    host: str
    pid: int
    id: str

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])


@dataclass(frozen=True)
class WorkPlan:
    """What every worker needs (pickled to local processes and Dask workers).

    Attributes:
        study: The study (cells with their resolved configs).
        out_dir: The study directory (shared by all workers).
        names: The cells to settle.
        progress: Progress bars in the cells' runs.
        runner: The function that runs one experiment (``medtl.experiment.run_experiment``).
        token: This study invocation's id: a cell failed under it is settled, not retried.
        threads: Torch threads per worker (None: leave as is).
        log_level: Level of the worker's log records on stderr.
    """

    study: Any
    out_dir: Path
    names: tuple[str, ...]
    progress: bool
    runner: Callable[..., dict]
    token: str
    threads: int | None = None
    log_level: int = logging.INFO


def stale_after() -> float:
    """:data:`STALE_S`, or ``$MEDTL_CLAIM_STALE_S``."""
    raw = os.environ.get("MEDTL_CLAIM_STALE_S", "").strip()
    try:
        return float(raw) if raw else STALE_S
    except ValueError:
        log.warning("$MEDTL_CLAIM_STALE_S=%r is not a number of seconds; using %g", raw, STALE_S)
        return STALE_S


# ---------------------------------------------------------------- claims


def claim_path(out_dir: Path, name: str) -> Path:
    """The claim file of cell ``name``."""
    return Path(out_dir) / CLAIMS / f"{name}.json"


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    folder = Path(out_dir) / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_claim(path: Path) -> dict[str, Any] | None:
    """The claim record at ``path`` with its heartbeat age in seconds (``age``), or None when there is none."""
    try:
        record = json.loads(path.read_text())
        record["age"] = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a torn or foreign file: treat it as stale
        log.warning("claim %s is unreadable (%s); treating it as stale", path, exc)
        return {"state": "running", "age": float("inf")}
    return record


def is_alive(record: dict[str, Any]) -> bool:
    """True while a running claim's owner works on it: a fresh heartbeat and, on this host, a live process."""
    if record.get("age", float("inf")) > stale_after():
        return False
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _write_claim(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def try_claim(out_dir: Path, name: str, owner: Owner, token: str, is_done: Callable[[], bool]) -> str:
    """Claim cell ``name`` for ``owner``: ``claimed``, ``held`` (a live worker runs it) or ``settled``.

    ``settled``: the cell is done, or failed under this ``token`` (this invocation tried it once).
    A missing claim, one from an earlier invocation, or a stale running claim is taken.
    """
    path = claim_path(out_dir, name)
    with _locked(out_dir):
        if is_done():
            return "settled"
        record = read_claim(path)
        if record is not None:
            state = record.get("state")
            if state in ("done", "failed") and record.get("token") == token:
                return "settled"
            if state == "running" and is_alive(record):
                return "held"
            if state == "running":
                log.warning("cell %s: its worker (%s pid %s) is gone (last heartbeat %.0f s ago); running it again",
                            name, record.get("host"), record.get("pid"), record.get("age", float("nan")))
        _write_claim(path, {"state": "running", "host": owner.host, "pid": owner.pid, "owner": owner.id,
                            "token": token, "started": time.time()})
    return "claimed"


def finish_claim(out_dir: Path, name: str, owner: Owner, token: str, state: str, error: str | None) -> None:
    """Record the outcome of a claimed cell (``done``/``failed``), unless another worker took the claim over."""
    path = claim_path(out_dir, name)
    with _locked(out_dir):
        record = read_claim(path)
        if record is not None and record.get("owner") not in (owner.id, None):
            log.warning("cell %s: the claim was taken over by %s while this worker ran it", name, record.get("owner"))
            return
        _write_claim(path, {"state": state, "host": owner.host, "pid": owner.pid, "owner": owner.id,
                            "token": token, "error": error, "finished": time.time()})


@contextmanager
def heartbeat(path: Path, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Touch ``path`` every ``every`` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name=f"heartbeat {path.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------- one worker


def work(plan: WorkPlan) -> list[str]:
    """One worker: claim, run and record cells of ``plan`` until every one is settled.

    Returns:
        The names of the cells this worker ran.
    """
    from medtl.study import cell_is_done, run_cell

    owner = Owner.me()
    out = Path(plan.out_dir)
    ran: list[str] = []
    while True:
        states = {}
        for name in plan.names:
            cell = plan.study.cell(name)
            cell_dir = out / "cells" / name
            states[name] = try_claim(out, name, owner, plan.token, lambda c=cell, d=cell_dir: cell_is_done(c, d))
            if states[name] != "claimed":
                continue
            log.info("cell %s: running on %s (pid %d)", name, owner.host, owner.pid)
            with heartbeat(claim_path(out, name)):
                run_cell(cell, cell_dir, plan.progress, plan.runner)
            finish_claim(out, name, owner, plan.token, cell.status, cell.error)
            ran.append(name)
        if all(s == "settled" for s in states.values()):
            return ran
        if "claimed" not in states.values():
            time.sleep(POLL_S)


def worker_main(plan: WorkPlan) -> list[str]:
    """Entry point of a local worker process: its own logging and torch threads, then :func:`work`."""
    logging.basicConfig(level=plan.log_level, format="%(asctime)s [worker %(process)d] %(levelname)s %(message)s")
    logging.getLogger("medtl").setLevel(plan.log_level)
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    return work(plan)


# ---------------------------------------------------------------- engines


def run_local(plan: WorkPlan, workers: int) -> None:
    """``workers`` local processes (spawned: no state shared with the parent) run :func:`work` on ``plan``."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=worker_main, args=(plan,), name=f"medtl-study-worker-{i}")
             for i in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode:
            log.error("study worker pid %s exited with status %s; its cell is taken over by the others",
                      proc.pid, proc.exitcode)


def dask_address(scheduler: str) -> str:
    """The Dask scheduler address of ``--scheduler dask://HOST:PORT`` (``tcp://``/``tls://`` kept, bare
    ``HOST:PORT`` read as ``tcp://``).

    Raises:
        ConfigError: Not a ``HOST:PORT`` address, with or without ``dask://``, ``tcp://`` or ``tls://``.
    """
    if "://" not in scheduler:
        scheduler = f"dask://{scheduler}"
    host, _, port = scheduler.split("://", 1)[1].rpartition(":")
    if not scheduler.startswith(DASK_PREFIXES) or not host or not port.isdigit():
        raise ConfigError(f"--scheduler '{scheduler}': expected a Dask scheduler address such as "
                          "dask://HOST:8786 (or tcp://HOST:8786); start one with `dask scheduler`")
    return "tcp://" + scheduler.split("://", 1)[1] if scheduler.startswith("dask://") else scheduler


def run_dask(plan: WorkPlan, address: str, workers: int | None) -> None:
    """Submit one :func:`work` task per Dask worker (or ``workers`` tasks) to the cluster at ``address``.

    Raises:
        ConfigError: The scheduler cannot be reached, or it has no workers.
    """
    from distributed import Client, wait

    try:
        client = Client(address, timeout=30)
    except OSError as exc:
        raise ConfigError(f"--scheduler: cannot reach the Dask scheduler at {address} ({exc}); start it with "
                          "`dask scheduler` and workers with `dask worker ADDRESS`, or check the address") from None
    try:
        available = len(client.scheduler_info().get("workers", {}))
        n = workers or available
        if n < 1:
            raise ConfigError(f"--scheduler: the Dask cluster at {address} has no workers; start some with "
                              f"`dask worker {address}`")
        log.info("study %s: %d task(s) on the Dask cluster at %s (%d worker(s))", plan.study.name, n, address,
                 available)
        futures = [client.submit(work, plan, key=f"medtl-study-{plan.study.name}-{plan.token}-{i}", pure=False)
                   for i in range(n)]
        wait(futures)
        for future in futures:
            if future.status == "error":
                log.error("a Dask study task failed: %s", future.exception())
    finally:
        client.close()


def settle_statuses(study: Any, out_dir: Path, names: list[str], token: str) -> None:
    """Set each cell's status from its run directory and claim after the workers finished."""
    from medtl.study import cell_is_done

    for name in names:
        cell = study.cell(name)
        if cell_is_done(cell, Path(out_dir) / "cells" / name):
            cell.status, cell.error = "done", None
            continue
        record = read_claim(claim_path(out_dir, name)) or {}
        cell.status = "failed"
        if record.get("token") == token and record.get("state") == "failed":
            cell.error = record.get("error") or "failed"
        else:
            cell.error = "not finished: every worker stopped before it (run the study again to resume it)"


def new_token() -> str:
    """A fresh study-invocation token."""
    return uuid.uuid4().hex[:16]
