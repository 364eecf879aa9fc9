"""(h) Serving: exported graph speed (onnxruntime vs PyTorch, int8 vs fp32) and a bounded loopback load test.

One feature-extraction run of EfficientNet-Lite0 on brain MRI (the (a) recipe, holdout split) is
exported to ONNX (fp32 and int8). On its test images: PyTorch eager images/s of the same ensemble
graph, onnxruntime fp32 and int8 images/s (batches of 32, best of 2 after a warm-up) and the int8
AUC change. Then ``medtl serve`` runs as a subprocess on 127.0.0.1 (a free port) and receives a fixed
number of requests (one image each, the test images' original files) from a fixed number of
concurrent clients; it stops after the last one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cases import BenchmarkError, Context, entry
from medtl.config import ExperimentConfig

log = logging.getLogger("benchmarks")

Timer = Callable[[Callable[[], object]], float]
BATCH = 32
MAX_BATCH = 8
MAX_WAIT_MS = 5.0


def plan(ctx: Context) -> dict[str, Any]:
    """What (h) runs."""
    s = ctx.settings
    return {"model": "tf_efficientnet_lite0 (packaged weights), feature extraction, holdout split",
            "image_size": s.image_size, "requests": s.serve_requests, "concurrency": s.serve_concurrency,
            "server": f"medtl serve <export> --max-batch {MAX_BATCH} --max-wait-ms {MAX_WAIT_MS:g} on 127.0.0.1",
            "in_process_batch": BATCH}


def _images(run_dir: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The run's test images: files, uint8 arrays (the run's decoding) and labels."""
    from medtl import artifact, rundir
    from medtl.data.images import open_image, to_array

    meta = artifact.load_meta(run_dir)
    pre = meta.preprocess
    table = rundir.read_predictions(run_dir / rundir.PREDICTIONS, (meta.class_names, meta.positive_index))
    files = [Path(p) for p in table.paths]
    arrays = np.stack([to_array(open_image(f), pre.image_size, pre.color, pre.resize, pre.crop) for f in files])
    return files, arrays, table.labels


def _per_second(fn: Callable[[np.ndarray], Any], x: np.ndarray, timed: Timer, batch: int = BATCH) -> float:
    """Images per second of ``fn`` over ``x`` in batches of ``batch`` (``timed``: best of 2 after a warm-up)."""
    def once() -> None:
        for start in range(0, len(x), batch):
            fn(x[start:start + batch])

    return len(x) / timed(once)


def _graph_speed(run_dir: Path, export: Any, x: np.ndarray, labels: np.ndarray, timed: Timer) -> dict[str, Any]:
    import torch

    from medtl.evaluate.metrics import compute_metrics
    from medtl.export import ensemble_graph, load_graph

    graph, meta = ensemble_graph(run_dir)

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return graph(torch.from_numpy(batch)).numpy()

    fp32, int8 = load_graph(export.graph), load_graph(export.int8)
    speed = {"torch_eager": _per_second(eager, x, timed), "onnx_fp32": _per_second(fp32.run, x, timed),
             "onnx_int8": _per_second(int8.run, x, timed)}
    auc = {name: compute_metrics(labels, g.run(x), meta.positive_index, meta.threshold)["auc"]
           for name, g in (("fp32", fp32), ("int8", int8))}
    return {"images_per_s": speed, "auc": auc, "images": len(x)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(ctx: Context, source: Path, port: int) -> subprocess.Popen:
    env = ctx.child_env("cache-h") | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    cmd = [sys.executable, "-c", "from medtl.cli import app; app()", "serve", str(source), "--port", str(port),
           "--max-batch", str(MAX_BATCH), "--max-wait-ms", str(MAX_WAIT_MS)]
    if ctx.threads:
        cmd += ["--threads", str(ctx.threads)]
    log_file = open(ctx.work / "serve.log", "w")  # noqa: SIM115  (closed with the process below)
    return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen, base: str, seconds: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchmarkError(f"medtl serve exited with {proc.returncode} before answering; see serve.log")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise BenchmarkError(f"medtl serve did not answer /healthz within {seconds:.0f} s")


async def _load(base: str, payloads: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                r = await c.post(f"{base}/v1/predict", files={"file": ("image", payloads[i % len(payloads)])})
                errors += r.status_code != 200
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=60) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - started
        metrics = (await c.get(f"{base}/metrics")).text
    ms = np.array(latencies) * 1000.0
    count = float(re.search(r"medtl_batch_size_count (\S+)", metrics).group(1))
    images = float(re.search(r"medtl_batch_size_sum (\S+)", metrics).group(1))
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "rps": requests / wall,
            "errors": errors, "wall_seconds": wall, "mean_batch": images / count if count else None}


def measure(ctx: Context, cfg: ExperimentConfig, timed: Timer) -> dict[str, dict]:
    """(h): train ``cfg``, export it, time the graphs (``timed``: best wall time of a callable), load-test."""
    from medtl.export import export_run, graph_input, load_graph

    s = ctx.settings
    run = ctx.run("serve-fe", cfg)
    export = export_run(run.run_dir, "onnx", ctx.work / "serve-export", quantize="int8")
    files, arrays, labels = _images(run.run_dir)
    x = graph_input(arrays, load_graph(export.graph).contract)
    graphs = _graph_speed(run.run_dir, export, x, labels, timed)
    port = _free_port()
    proc = _start_server(ctx, export.graph, port)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}")
        load = asyncio.run(_load(f"http://127.0.0.1:{port}", [f.read_bytes() for f in files], s.serve_requests,
                                 s.serve_concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    batch = max(1, round(load["mean_batch"] or 1))
    fp32 = load_graph(export.graph)
    in_process = _per_second(fp32.run, x, timed, batch)
    ips = graphs["images_per_s"]
    raw = {"load": load, "graphs": graphs, "settings": plan(ctx), "export_seconds": export.seconds}
    return {
        "serve_p50_ms": entry("serve_p50_ms", load["p50_ms"], **raw),
        "serve_p99_ms": entry("serve_p99_ms", load["p99_ms"], **raw),
        "serve_rps": entry("serve_rps", load["rps"], **raw),
        "serve_errors": entry("serve_errors", float(load["errors"]), **raw),
        "serve_overhead_ratio": entry("serve_overhead_ratio", load["rps"] / in_process, in_process_images_per_s=
                                      in_process, in_process_batch=batch, **raw,
                                      how="served requests/s (one image each) / onnxruntime images/s in process "
                                          "in batches of the server's mean batch size"),
        "onnx_speedup": entry("onnx_speedup", ips["onnx_fp32"] / ips["torch_eager"], **raw),
        "int8_speedup": entry("int8_speedup", ips["onnx_int8"] / ips["onnx_fp32"], **raw),
        "int8_auc_change": entry("int8_auc_change", graphs["auc"]["int8"] - graphs["auc"]["fp32"], **raw),
    }
