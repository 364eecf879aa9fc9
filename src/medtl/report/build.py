"""Write a run's or a study's report: one self-contained HTML file.

Everything is inside the file: figures are base64 PNGs, the style sheet is inline and there is
no script, font or any other request, so the report can be mailed, archived or opened offline.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from medtl import rundir
from medtl.errors import DataError, MedtlError
from medtl.evaluate.table import adaptation_note
from medtl.report import run_report, study_report
from medtl.report.load import RunData, StudyData, is_run_dir, is_study_dir, load_run, load_study

log = logging.getLogger(__name__)

REPORT_NAME = rundir.REPORT
"""File name of the report inside the run or study directory (the default output)."""


def _num(value: Any, digits: int = 3) -> str:
    """A number for a table: fixed decimals, ``n/a`` for None / nan."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def _ci(block: Any) -> str:
    """``0.953 (0.921–0.977)`` from ``{"value", "ci95"}`` or a (value, lo, hi) tuple."""
    if isinstance(block, tuple | list) and len(block) == 3:
        value, lo, hi = block
    elif isinstance(block, dict):
        value, (lo, hi) = block.get("value"), (block.get("ci95") or (None, None))
    else:
        return "n/a"
    if _num(value) == "n/a":
        return "n/a"
    interval = f" ({_num(lo)}–{_num(hi)})" if _num(lo) != "n/a" and _num(hi) != "n/a" else ""
    return f"{_num(value)}{interval}"


def _pvalue(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("medtl.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, ci=_ci, pvalue=_pvalue)
    return env


def _medtl_version() -> str:
    try:
        return version("medtl")
    except PackageNotFoundError:
        return "unknown"


def _common(title: str, kind: str) -> dict[str, Any]:
    return {"title": title, "kind": kind, "version": _medtl_version(),
            "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def render_run(run: RunData, cam: bool = True, n_boot: int | None = None, seed: int = 0,
               device: str = "cpu") -> str:
    """HTML of a run's report.

    Args:
        run: The loaded run directory.
        cam: Draw the Grad-CAM gallery (loads the fold models; a few seconds on a CPU).
        n_boot: Bootstrap resamples of the curve bands and CIs (default: the run's ``evaluate.bootstrap``).
        seed: Bootstrap seed.
        device: Torch device for Grad-CAM.
    """
    boot = int(n_boot if n_boot is not None else run_report.get(run.config, "evaluate.bootstrap", 1000))
    context = _common(f"medtl report: {run.name}", "run") | {
        "run_dir": str(run.path), "n_boot": boot,
        "protocol": run_report.protocol_section(run), "data": run_report.data_section(run),
        "learning": run_report.learning_section(run), "curves": run_report.curves_section(run, boot, seed),
        "operating": run_report.operating_section(run, boot, seed),
        "calibration": run_report.calibration_section(run), "patients": run_report.patient_section(run, boot, seed),
        "gallery": _gallery(run, cam, device), "folds": run_report.folds_section(run),
        "metric_keys": run_report.METRIC_KEYS, "adaptation": adaptation_note(run.metrics)}
    return _environment().get_template("run.html.j2").render(**context)


def _gallery(run: RunData, cam: bool, device: str) -> Any:
    from medtl.report.gallery import Gallery, build_gallery

    if not cam:
        return Gallery(notes=["Grad-CAM was switched off for this report"])
    try:
        return build_gallery(run, device=device)
    except (MedtlError, RuntimeError, OSError) as exc:
        log.warning("Grad-CAM gallery not drawn: %s", exc)
        return Gallery(notes=[f"Grad-CAM failed: {exc}"])


def render_study(study: StudyData) -> str:
    """HTML of a study's report (cells, comparison table, data-size learning curves)."""
    context = _common(f"medtl study report: {study.name}", "study") | {
        "study": study, "cells": study_report.cells_section(study),
        "comparison": study_report.comparison_section(study), "data_size": study_report.data_size_section(study)}
    return _environment().get_template("study.html.j2").render(**context)


def write_report(path: str | Path, out: str | Path | None = None, *, cam: bool = True, n_boot: int | None = None,
                 seed: int = 0, device: str = "cpu") -> Path:
    """Write the HTML report of a run directory or a study directory.

    Args:
        path: A run directory (``medtl train``) or a study directory (``study.json``).
        out: Output file (default ``<path>/report.html``).
        cam: Include the Grad-CAM gallery (runs only).
        n_boot: Bootstrap resamples for curve bands and CIs (runs only; default the run's
            ``evaluate.bootstrap``).
        seed: Bootstrap seed.
        device: Torch device for Grad-CAM.

    Returns:
        The path of the written file.

    Raises:
        DataError: ``path`` is neither a run nor a study directory, or one of its files is malformed.
    """
    path = Path(path)
    if is_study_dir(path):
        html = render_study(load_study(path))
    elif is_run_dir(path):
        html = render_run(load_run(path), cam=cam, n_boot=n_boot, seed=seed, device=device)
    else:
        raise DataError(f"{path}: neither a run directory (metrics.json, predictions.csv or model/model.json) nor a "
                        "study directory (study.json); pass the --out directory of medtl train or medtl study")
    target = Path(out) if out is not None else path / REPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    log.info("report written to %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target
