#!/usr/bin/env python
"""medtl's performance suite: each figure is a ratio (or a wall time) measured in this one run.

    python benchmarks/run.py --quick                       # (a)-(d) on reduced settings, < 10 min on 2 cores
    python benchmarks/run.py --out bench.json              # the full suite (a)-(h)
    python benchmarks/run.py --only a,b --markdown         # a Markdown table instead of JSON on stdout
    python benchmarks/run.py --from-json bench.json --markdown   # render a stored result again
    python benchmarks/run.py --dry-run                     # validate every config and command, measure nothing

(a) fe_cache_speedup, (b) cv_cache_ratio, (c) cutoff_speedup, (d) ft_throughput_ratio,
(e) demo_seconds + demo_peak_rss_gb, (f) study_seconds, (g) frozen_forward_speedup + bf16_train_ratio, (h) serve_*,
onnx_speedup, int8_speedup, int8_auc_change; what each measures and how: docs/performance.md, (h): docs/serving.md.
(s) stream_rss_ratio + stream_throughput_ratio (``--only stream``), (w) study_parallel_ratio
(``--only workers``): benchmarks/scale.py and docs/scaling.md.
(i) ddp_cpu_scaling: docs/scaling.md.
JSON (or Markdown) goes to stdout, progress to stderr. Exit status 1 when a benchmark failed (or,
with --check, missed its goal). Measure on an otherwise idle machine: the JSON records the load
average, and a busy CPU makes every ratio meaningless.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.cases import (  # noqa: E402  (the repository root must be importable first)
    ALL_KEYS,
    BENCHMARKS,
    NAMES,
    PRESETS,
    Context,
    entry,
    settings_dict,
    with_overrides,
)

log = logging.getLogger("benchmarks")

SCHEMA_VERSION = 1
QUICK_LETTERS = "abcdsw"


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced settings, (a)-(d), (s) and (w) only")
    p.add_argument("--only", help="comma-separated benchmark letters, e.g. a,b, or names (stream = s, workers = w); "
                                  "default: all, or a-d, s, w with --quick")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    p.add_argument("--data", type=Path, help="datasets folder (default: medtl.config.data_root(), i.e. $MEDTL_DATA)")
    p.add_argument("--from-json", type=Path, help="render a stored result; runs nothing")
    p.add_argument("--dry-run", action="store_true", help="validate configs, data and commands; measure nothing")
    p.add_argument("--check", action="store_true", help="exit 1 when a measured figure misses its goal")
    p.add_argument("--work-dir", type=Path, help="keep run directories and logs here (default: a temporary folder)")
    p.add_argument("--threads", type=int, help="torch threads here and OMP_NUM_THREADS of subprocesses")
    p.add_argument("-v", "--verbose", action="store_true", help="show medtl's own log records")
    g = p.add_argument_group("settings (override the preset; recorded in the JSON)")
    g.add_argument("--image-size", type=int)
    g.add_argument("--fe-epochs", type=int, help="epochs of (a)/(b)")
    g.add_argument("--ft-epochs", type=int, help="epochs of (c)/(d); at least 2 for a steady-state epoch time")
    g.add_argument("--max-per-class", type=int, help="images per class in (a)-(d)")
    g.add_argument("--folds", type=int, help="folds of (b)")
    g.add_argument("--cut", help="cut point of (c) (see `medtl layers tf_efficientnet_lite0`)")
    g.add_argument("--cache-views", type=int, help="train.cache_views of (c)")
    g.add_argument("--study", help="study file of (f)")
    g.add_argument("--study-set", action="append", help="dotted.key=value passed to `medtl study --set` in (f)")
    args = p.parse_args(argv)
    args.letters = _letters(p, args)
    return args


def _letters(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.only is None:
        return QUICK_LETTERS if args.quick else "".join(BENCHMARKS)
    letters = [NAMES.get(x, x) for x in (x.strip().lower() for x in args.only.split(",")) if x]
    unknown = [x for x in letters if x not in BENCHMARKS]
    if unknown or not letters:
        parser.error(f"--only {args.only!r}: use comma-separated letters from {', '.join(BENCHMARKS)} "
                     f"(or the names {', '.join(f'{k} = {v}' for k, v in NAMES.items())})")
    return "".join(x for x in BENCHMARKS if x in letters)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line changes from the preset."""
    mpc = args.max_per_class
    values = {"image_size": args.image_size, "fe_epochs": args.fe_epochs, "ft_epochs": args.ft_epochs,
              "fe_max_per_class": mpc, "ft_max_per_class": mpc, "folds": args.folds, "cut": args.cut,
              "cache_views": args.cache_views, "study": args.study,
              "study_set": tuple(args.study_set) if args.study_set else None}
    return {k: v for k, v in values.items() if v is not None}


def make_settings(args: argparse.Namespace) -> Any:
    """The preset of ``--quick`` (or the full suite) with the command line's overrides."""
    return with_overrides(PRESETS["quick" if args.quick else "full"], **overrides(args))


# ---------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, library versions, threads, load and the medtl commit."""
    import lightning
    import numpy
    import timm
    import torch
    import torchvision

    info = {"cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cgroup_cpu_max": _read("/sys/fs/cgroup/cpu.max"), "memory_gb": _memory_gb(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "lightning": lightning.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "device": "cpu", "cuda_available": torch.cuda.is_available(),
            "load_average_start": list(os.getloadavg())}
    return info | _commit()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return None


def _commit() -> dict[str, Any]:
    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"medtl_commit": git("rev-parse", "HEAD"), "medtl_dirty": None if status is None else bool(status)}


# ---------------------------------------------------------------- running


def run_suite(ctx: Context, letters: str, dry_run: bool = False) -> dict[str, dict]:
    """Entries for every JSON key: measured (or planned, with ``dry_run``), skipped, or failed."""
    entries = {key: entry(key, None, skipped=f"not selected (ran: {', '.join(letters)})") for key in ALL_KEYS}
    for letter in letters:
        bench = BENCHMARKS[letter]
        log.info("(%s) %s%s", letter, bench.title, " — dry run" if dry_run else "")
        started = time.perf_counter()
        try:
            if dry_run:
                plan = bench.plan(ctx)
                found = {k: entry(k, None, skipped="dry run: nothing measured", plan=plan) for k in bench.keys}
            else:
                found = bench.measure(ctx)
        except Exception as exc:  # one failed benchmark must not lose the others: recorded in the JSON, exit 1
            log.error("(%s) failed: %s: %s", letter, type(exc).__name__, exc)
            tb = traceback.format_exc().splitlines()[-12:]
            found = {k: entry(k, None, error=f"{type(exc).__name__}: {exc}", traceback=tb) for k in bench.keys}
        seconds = time.perf_counter() - started
        for key in bench.keys:
            entries[key] = found[key] | {"benchmark": letter, "title": bench.title,
                                         "benchmark_seconds": round(seconds, 1)}
        log.info("(%s) %s in %.0f s", letter, _short(found), seconds)
    return entries


def _short(found: dict[str, dict]) -> str:
    return ", ".join(f"{k} = {_fmt(e)}" for k, e in found.items())


def build_result(ctx: Context, letters: str, entries: dict[str, dict], machine: dict, seconds: float,
                 argv: list[str], dry_run: bool) -> dict[str, Any]:
    """The JSON document: what ran, on what, with which settings, then one entry per figure."""
    machine = machine | {"load_average_end": list(os.getloadavg())}
    warnings = []
    load = machine["load_average_start"][0]
    if load > 0.5 and not dry_run:
        warnings.append(f"the CPU was busy when the suite started (1-minute load average {load:.2f}): timings and "
                        "ratios measured next to other work are not comparable; re-run on an idle machine")
    custom = sorted(k for k, v in settings_dict(ctx.settings).items()
                    if v != settings_dict(PRESETS[ctx.settings.suite])[k])
    if custom:
        warnings.append(f"settings changed from the {ctx.settings.suite} preset ({', '.join(custom)}): figures are "
                        "not comparable with the preset's")
    return {"suite": ctx.settings.suite, "custom_settings": custom, "schema_version": SCHEMA_VERSION,
            "dry_run": dry_run,
            "command": " ".join(["python", "benchmarks/run.py", *argv]), "selected": list(letters),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - seconds)),
            "suite_seconds": seconds, "data_root": str(ctx.data_root), "warnings": warnings, "machine": machine,
            "settings": settings_dict(ctx.settings), **entries}


@contextmanager
def work_folder(path: Path | None) -> Iterator[Path]:
    """``path`` (kept), or a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="medtl-bench-") as tmp:
        yield Path(tmp)


def exit_code(result: dict[str, Any], check: bool) -> int:
    """1 when a benchmark failed, or (``check``) when a measured figure missed its goal."""
    figures = [result[k] for k in ALL_KEYS if k in result]
    if any("error" in e for e in figures):
        return 1
    return int(check and any(e.get("met") is False for e in figures))


# ---------------------------------------------------------------- output


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def _fmt(e: dict[str, Any]) -> str:
    value = e.get("value")
    if value is None:
        return "error" if "error" in e else "—"
    unit = e.get("unit", "")
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "s":
        return f"{value:.0f} s"
    return f"{value:.2f} {unit.split()[0]}"


_RAW = {
    "fe_cache_speedup": lambda e: f"medtl {e['medtl_seconds']:.1f} s vs naive {e['naive_seconds']:.1f} s; test AUC "
                                  f"{_num(e['test_auc']['medtl'])} vs {_num(e['test_auc']['naive'])}",
    "cv_cache_ratio": lambda e: f"{e['folds']}-fold {e['cv_seconds']:.1f} s vs one fold {e['one_fold_seconds']:.1f} s",
    "cutoff_speedup": lambda e: f"{e['measured']}; epoch full {e['runs']['full']['steady_epoch_seconds']:.1f} s; "
                                f"without cache {e['speedup_without_cache']:.2f}×",
    "ft_throughput_ratio": lambda e: f"medtl {e['medtl_images_per_s']:.1f} vs bare {e['bare_images_per_s']:.1f} img/s",
    "demo_seconds": lambda e: f"{e['wall_seconds']:.0f} s wall",
    "demo_peak_rss_gb": lambda e: f"{e['peak_rss_bytes'] / 1e9:.2f} GB peak RSS",
    "study_seconds": lambda e: f"{e['cells_measured']} cells; peak RSS {e['peak_rss_gb']:.2f} GB",
    "frozen_forward_speedup": lambda e: f"eager {e['eager_images_per_s']:.1f} vs traced {e['fast_images_per_s']:.1f} "
                                        "img/s",
    "bf16_train_ratio": lambda e: f"fp32 {e['float32_seconds']:.2f} s vs bf16 {e['bf16_seconds']:.2f} s",
    **{k: lambda e: f"{e['load']['rps']:.1f} req/s, mean batch {e['load']['mean_batch'] or 0:.1f}, "
                    f"{e['load']['errors']} errors" for k in ("serve_p50_ms", "serve_p99_ms", "serve_rps",
                                                            "serve_errors")},
    "serve_overhead_ratio": lambda e: f"served {e['load']['rps']:.1f} req/s vs in-process "
                                      f"{e['in_process_images_per_s']:.1f} img/s (batch {e['in_process_batch']})",
    "onnx_speedup": lambda e: f"onnxruntime {e['graphs']['images_per_s']['onnx_fp32']:.1f} vs PyTorch "
                              f"{e['graphs']['images_per_s']['torch_eager']:.1f} img/s",
    "int8_speedup": lambda e: f"int8 {e['graphs']['images_per_s']['onnx_int8']:.1f} vs fp32 "
                              f"{e['graphs']['images_per_s']['onnx_fp32']:.1f} img/s",
    "int8_auc_change": lambda e: f"AUC int8 {_num(e['graphs']['auc']['int8'])} vs fp32 "
                                 f"{_num(e['graphs']['auc']['fp32'])}",
}


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def to_markdown(result: dict[str, Any]) -> str:
    """The result as the Markdown table of docs/performance.md, with the machine and the command."""
    lines = ["| | Figure | Goal | Measured | Met | Raw |", "|---|---|---|---|---|---|"]
    for key in ALL_KEYS:
        e = result.get(key) or {}
        met = {True: "yes", False: "**no**", None: "—"}[e.get("met")]
        raw = _RAW[key](e) if e.get("value") is not None else e.get("error") or e.get("skipped") or ""
        raw = raw.splitlines()[0] if raw else raw
        lines.append(f"| ({e.get('benchmark', '?')}) | `{key}` | {e.get('goal') or '—'} | {_fmt(e)} | {met} | "
                     f"{raw.replace('|', '/')} |")
    m = result["machine"]
    commit = (m.get("medtl_commit") or "unknown")[:10] + (" (uncommitted changes)" if m.get("medtl_dirty") else "")
    lines += ["", f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, "
                  f"{m['memory_gb']} GB; torch {m['torch']} with {m['torch_threads']} threads; commit {commit}.",
              f"Suite: {result['suite']} ({result['suite_seconds']:.0f} s), `{result['command']}`."]
    lines += [f"Warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines) + "\n"


def emit(result: dict[str, Any], markdown: bool) -> None:
    """JSON (or Markdown) on stdout."""
    sys.stdout.write(to_markdown(result) if markdown else json.dumps(result, indent=2, allow_nan=False) + "\n")


@contextmanager
def process_settings(verbose: bool, threads: int | None, data: Path) -> Iterator[None]:
    """Logging to stderr, torch threads and ``MEDTL_DATA`` for the suite; all restored afterwards.

    Progress shows the runner's own records, medtl's only with ``verbose`` (warnings always). medtl's
    logger is set to INFO because the epoch clock reads its INFO records.
    """
    import torch

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda r: verbose or r.levelno >= logging.WARNING or r.name.startswith("benchmarks"))
    loggers = ["", "medtl", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"]
    levels = {name: logging.getLogger(name).level for name in loggers}
    old_threads, old_data = torch.get_num_threads(), os.environ.get("MEDTL_DATA")
    logging.getLogger().addHandler(handler)
    for name, level in zip(loggers, [logging.INFO, logging.INFO, logging.WARNING, logging.WARNING], strict=True):
        logging.getLogger(name).setLevel(level)
    if threads:
        torch.set_num_threads(threads)
    os.environ["MEDTL_DATA"] = str(data)  # ${MEDTL_DATA} in the study file, and the subprocesses
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        torch.set_num_threads(old_threads)
        if old_data is None:
            os.environ.pop("MEDTL_DATA", None)
        else:
            os.environ["MEDTL_DATA"] = old_data


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and print the result; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        emit(result, args.markdown)
        return exit_code(result, args.check)
    from medtl.config import data_root

    root = (args.data or data_root()).expanduser().resolve()
    with process_settings(args.verbose, args.threads, root):
        result = measure(args, argv, root)
        if args.out:
            args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
            log.info("result written to %s", args.out)
    emit(result, args.markdown)
    return exit_code(result, args.check)


def measure(args: argparse.Namespace, argv: list[str], root: Path) -> dict[str, Any]:
    """Run the selected benchmarks in a work folder; the JSON document."""
    settings = make_settings(args)
    machine = machine_info()
    log.info("medtl benchmarks %s (%s): %s; data %s; load average %.2f", settings.suite, ", ".join(args.letters),
             machine["cpu_model"], root, machine["load_average_start"][0])
    started = time.perf_counter()
    with work_folder(args.work_dir) as work:
        ctx = Context(settings, root, work, args.threads)
        entries = run_suite(ctx, args.letters, args.dry_run)
    result = _round(build_result(ctx, args.letters, entries, machine, time.perf_counter() - started, argv,
                                 args.dry_run))
    for warning in result["warnings"]:
        log.warning("%s", warning)
    return result


if __name__ == "__main__":
    sys.exit(main())
