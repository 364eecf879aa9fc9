"""The sections of a study's report: cells, the comparison table and data-size learning curves."""

from __future__ import annotations

import math
import re
from typing import Any

from medtl import rundir
from medtl.evaluate.metrics import METRIC_KEYS
from medtl.report import figures
from medtl.report.load import StudyData

FRACTION_AXIS = "train_fraction"
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*$")
_CURVE_KEYS = ("auc", "auc_lo", "auc_hi", "accuracy", "accuracy_lo", "accuracy_hi")


def number(text: Any) -> float:
    """A CSV cell as a float (``25%`` → 0.25); nan when blank or not a number."""
    match = _NUMBER.match(str(text)) if text not in (None, "") else None
    if match is None:
        return math.nan
    value = float(match.group(1))
    return value / 100.0 if match.group(2) else value


def cells_section(study: StudyData) -> dict[str, Any]:
    """One row per cell: axis labels, status, error and a link to the cell's own report."""
    rows = []
    for cell in study.cells:
        run_dir = study.path / str(cell.get("run_dir", ""))
        report = run_dir / rundir.REPORT
        rows.append({"name": cell.get("name", "?"), "axes": [(cell.get("axes") or {}).get(a, "") for a in study.axes],
                     "status": cell.get("status", "?"), "error": cell.get("error"),
                     "report": f"{cell.get('run_dir')}/report.html" if report.is_file() else None,
                     "baseline": cell.get("name") == study.baseline})
    done = sum(r["status"] == "done" for r in rows)
    return {"rows": rows, "axes": study.axes, "summary": f"{done} of {len(rows)} cells done"}


def comparison_section(study: StudyData) -> dict[str, Any]:
    """The comparison table (comparison.csv) and forest plots of AUC and accuracy."""
    if not study.comparison:
        return {"rows": [], "note": "no comparison.csv yet: run or resume the study (medtl study)"}
    rows = []
    for r in study.comparison:
        rows.append({"cell": r.get("cell", "?"), "axes": [r.get(a, "") for a in study.axes], "n": r.get("n", ""),
                     "metrics": [(number(r.get(k)), number(r.get(f"{k}_lo")), number(r.get(f"{k}_hi")))
                                 for k in METRIC_KEYS],
                     "p_auc": number(r.get("p_auc_delong")), "p_acc": number(r.get("p_acc_mcnemar")),
                     "reason": r.get("reason") or "", "baseline": r.get("cell") == study.baseline})
    forests = [figures.forest([(r["cell"], *r["metrics"][METRIC_KEYS.index(k)]) for r in rows], k, study.baseline)
               for k in ("auc", "accuracy") if any(math.isfinite(r["metrics"][METRIC_KEYS.index(k)][0]) for r in rows)]
    return {"rows": rows, "keys": METRIC_KEYS, "axes": study.axes, "forests": forests, "note": None}


def _series_from_csv(rows: list[dict[str, str]]) -> dict[str, list[dict[str, float]]]:
    """learning_curve.csv (series, train_fraction, metrics...) → points per series."""
    label_key = next((k for k in rows[0] if k not in (FRACTION_AXIS, "cell", *_CURVE_KEYS)), None)
    series: dict[str, list[dict[str, float]]] = {}
    for r in rows:
        point = {"train_fraction": number(r.get(FRACTION_AXIS))} | {k: number(r.get(k)) for k in _CURVE_KEYS}
        series.setdefault(r.get(label_key, "all") if label_key else "all", []).append(point)
    return series


def _series_from_comparison(study: StudyData) -> dict[str, list[dict[str, float]]]:
    """Points per combination of the other axes, from a ``train_fraction`` axis of comparison.csv."""
    others = [a for a in study.axes if a != FRACTION_AXIS]
    series: dict[str, list[dict[str, float]]] = {}
    for r in study.comparison:
        point = {"train_fraction": number(r.get(FRACTION_AXIS))} | {k: number(r.get(k)) for k in _CURVE_KEYS}
        series.setdefault("-".join(r.get(a, "") for a in others) or "all", []).append(point)
    return series


def data_size_section(study: StudyData) -> dict[str, Any] | None:
    """AUC and accuracy against the training fraction; None when the study has no such axis."""
    if study.learning_curve:
        series = _series_from_csv(study.learning_curve)
    elif FRACTION_AXIS in study.axes and study.comparison:
        series = _series_from_comparison(study)
    else:
        return None
    series = {k: [p for p in v if math.isfinite(p["train_fraction"])] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return {"figure": None, "rows": [], "note": "the training fractions could not be read as numbers"}
    rows = [{"series": k, **p} for k, v in series.items() for p in sorted(v, key=lambda p: p["train_fraction"])]
    return {"figure": figures.data_size_curves(series), "rows": rows, "note": None}
