"""Benchmarks (s) streamed data and (w) studies over workers (issue 18, item 6; docs/scaling.md).

(s) ``stream_rss_ratio``: peak RSS of a ``medtl train`` feature-extraction run (``data.storage: disk``)
on N_LARGE images ÷ the same on N_SMALL images, both sets made from the shared chest X-rays
(re-encoded at the benchmark's image size as PNG, each copy made unique by two pixels so no cache
folds copies together). ``stream_throughput_ratio``: fine-tuning images/s with the images streamed
from a memmap ÷ held in RAM (same data, fold, seed; steady-state epochs).
(w) ``study_parallel_ratio``: wall time of a 4-cell ``medtl study`` with ``--workers 2`` ÷ ``--workers 1``.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.cases import (
    GB,
    BenchmarkError,
    Context,
    _env,
    entry,
    epoch_timing,
    medtl_executable,
    run_measured,
)

log = logging.getLogger("benchmarks")

STREAM_SIZES = {"quick": (500, 5000), "full": (2000, 20000)}
"""(small, large) image counts of ``stream_rss_ratio`` per suite: the quick suite keeps the 10x ratio on a
quarter of the images (20,000 took over 10 min on a loaded 2-core VM); the JSON's ``n_images`` says which."""
THROUGHPUT_IMAGES = 600
"""Images of the ``stream_throughput_ratio`` fine-tuning runs (a subset of the small set)."""
_MODEL = {"backbone": "tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
          "head": {"hidden": [], "dropout": 0.2}}
_EVALUATE = {"bootstrap": 0, "report": False, "tta": "none"}


def _image_size(ctx: Context) -> int:
    """64 px in the quick suite, the suite's size (224) in the full one."""
    return 64 if ctx.settings.suite == "quick" else ctx.settings.image_size


def _chest_files(ctx: Context) -> list[tuple[Path, str]]:
    root = ctx.data_root / "chest_xray_pneumonia_224"
    files = [(p, p.parent.name) for p in sorted(root.glob("*/*/*.jpeg"))]
    if not files:
        raise BenchmarkError(f"chest X-rays not found under {root}; pass --data or set MEDTL_DATA")
    return files


def stream_set(ctx: Context, n: int, size: int) -> Path:
    """A class-folder set of ``n`` unique PNGs at ``size`` px made from the chest X-rays (built once)."""
    from PIL import Image

    folder = ctx.work / f"stream-{n}-{size}px"
    if (folder / "done").is_file():
        return folder
    sources = _chest_files(ctx)
    for label in {label for _, label in sources}:
        (folder / label).mkdir(parents=True, exist_ok=True)
    decoded: dict[int, np.ndarray] = {}
    for k in range(n):
        i = k % len(sources)
        if i not in decoded:
            decoded[i] = np.asarray(Image.open(sources[i][0]).convert("L").resize((size, size), Image.BILINEAR))
        img = decoded[i].copy()
        img[0, 0], img[0, 1] = k % 256, k // 256 % 256  # unique bytes per copy
        Image.fromarray(img).save(folder / sources[i][1] / f"{k:06d}.png", compress_level=1)
    (folder / "done").write_text(f"{n}\n")
    return folder


def _fe_tree(root: Path, size: int, storage: str) -> dict[str, Any]:
    return {"name": "bench-stream-fe", "data": {"source": "folder", "root": str(root), "image_size": size,
                                                "positive_class": "PNEUMONIA", "storage": storage, "cache": False,
                                                "split": {"method": "holdout", "seed": 0}},
            "model": _MODEL, "transfer": {"strategy": "feature_extraction"},
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "progress": False}, "evaluate": _EVALUATE}


def plan_s(ctx: Context) -> dict:
    small, large = STREAM_SIZES[ctx.settings.suite]
    _chest_files(ctx)
    return {"n_images": {"small": small, "large": large}, "image_size": _image_size(ctx),
            "rss_run": [medtl_executable(), "train", "<config: feature extraction, data.storage disk>", "--out",
                        "<tmp>", "--quiet"],
            "throughput_runs": f"fine_tune 3 epochs on {THROUGHPUT_IMAGES} images, data.storage memory vs disk"}


def measure_s(ctx: Context) -> dict[str, dict]:
    plan = plan_s(ctx)
    size = plan["image_size"]
    peaks: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for side, n in plan["n_images"].items():
        root = stream_set(ctx, n, size)
        config = ctx.work / f"stream-fe-{n}.yaml"
        config.write_text(yaml.safe_dump(_fe_tree(root, size, "disk")))
        cmd = [medtl_executable(), "train", str(config), "--out", str(ctx.work / f"stream-run-{n}"), "--quiet"]
        log.info("  %s", " ".join(cmd))
        m = run_measured(cmd, ctx.child_env(f"cache-s-{n}"), ctx.work / f"stream-{n}.log")
        if m.returncode != 0:
            raise BenchmarkError(f"`medtl train` on {n} images exited with {m.returncode}:\n{m.log_tail}")
        peaks[side], seconds[side] = m.peak_rss_bytes, m.seconds
    rss = entry("stream_rss_ratio", peaks["large"] / peaks["small"], n_images=plan["n_images"], image_size=size,
                peak_rss_gb={k: v / GB for k, v in peaks.items()}, run_seconds=seconds, settings=plan,
                how="peak RSS (VmHWM) of `medtl train` (feature extraction, data.storage disk, data.cache off) "
                    "as a subprocess on the large set / on the small set")
    return {"stream_rss_ratio": rss, "stream_throughput_ratio": _throughput(ctx, size, plan)}


def _throughput(ctx: Context, size: int, plan: dict) -> dict:
    root = stream_set(ctx, plan["n_images"]["small"], size)
    epochs = 3
    ips: dict[str, float] = {}
    timing: dict[str, Any] = {}
    for storage in ("memory", "disk"):
        tree = _fe_tree(root, size, storage) | {"name": f"bench-stream-ft-{storage}"}
        tree["data"]["max_per_class"] = THROUGHPUT_IMAGES // 2
        tree["transfer"] = {"strategy": "fine_tune"}
        tree["train"] = {"epochs": epochs, "batch_size": ctx.settings.batch_size, "device": "cpu",
                         "progress": False, "warmup_epochs": 0}
        cfg = ctx.config(tree["name"], tree)
        n_train = len(ctx.prepared(cfg)[1].folds[0].train)
        with _env(MEDTL_STREAM_DIR=str(ctx.work / "stores")):
            run = ctx.run(f"stream-ft-{storage}", cfg)
        timing[storage] = epoch_timing(run, epochs)
        ips[storage] = n_train / timing[storage]["steady_epoch_seconds"]
    return entry("stream_throughput_ratio", ips["disk"] / ips["memory"], images_per_s=ips, timing=timing,
                 image_size=size, images=THROUGHPUT_IMAGES, training_images=n_train, settings=plan,
                 how="fine-tune epoch throughput (steady-state epochs) with data.storage disk / memory, one "
                     "holdout fold, in this process")


# ---------------------------------------------------------------- (w) studies over workers


def _study_file(ctx: Context) -> Path:
    brain = ctx.brain_root()
    base = {"name": "bench-workers", "data": {"source": "folder", "root": str(brain), "positive_class": "yes",
                                              "image_size": 64, "max_per_class": 40,
                                              "split": {"method": "holdout", "seed": 0}},
            "model": _MODEL, "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "progress": False},
            "evaluate": _EVALUATE}
    tree = {"name": "bench-workers", "base": base, "baseline": "fe-0",
            "axes": {"strategy": {"fe": {"transfer.strategy": "feature_extraction"},
                                  "ft": {"transfer.strategy": "fine_tune"}},
                     "seed": {"key": "train.seed", "values": [0, 1]}}}
    path = ctx.work / "bench-workers.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def plan_w(ctx: Context) -> dict:
    return {"command": [medtl_executable(), "study", "<study: 4 cells, brain MRI 64 px, 80 images>", "--out", "<tmp>",
                        "--quiet", "--workers", "1|2"]}


def measure_w(ctx: Context) -> dict[str, dict]:
    path = _study_file(ctx)
    walls: dict[str, float] = {}
    for workers in (1, 2):
        out = ctx.work / f"study-workers-{workers}"
        cmd = [medtl_executable(), "study", str(path), "--out", str(out), "--quiet", "--workers", str(workers)]
        log.info("  %s", " ".join(cmd))
        started = time.perf_counter()
        done = subprocess.run(cmd, env=ctx.child_env(f"cache-w-{workers}"), capture_output=True, text=True)
        walls[str(workers)] = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchmarkError(f"`medtl study --workers {workers}` exited with {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return {"study_parallel_ratio": entry(
        "study_parallel_ratio", walls["2"] / walls["1"], wall_seconds=walls, settings=plan_w(ctx),
        how="wall time of the same 4-cell study (fresh study folder each) with --workers 2 / --workers 1; on a "
            "2-core machine each worker gets one torch thread, so this shows the overhead more than a speed-up")}
