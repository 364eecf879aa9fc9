"""Side-by-side comparison of finished runs, with paired tests against a baseline run.

Each run contributes its six metrics and their 95% CIs from ``metrics.json``. Against the
baseline, two paired tests are computed from ``predictions.csv`` — but only when both runs were
evaluated on the same images (the same set of ``id`` values with the same labels): DeLong's test
of the AUCs (binary problems only) and McNemar's test of the ``pred`` column (each run's own
threshold). Runs evaluated on different images are never paired; the row says why instead.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from medtl.errors import DataError
from medtl.evaluate.metrics import METRIC_KEYS, delong_test, mcnemar_test

log = logging.getLogger(__name__)

TEST_COLUMNS: tuple[str, ...] = ("p_auc_delong", "p_acc_mcnemar", "paired_with", "reason")
"""Columns of the paired tests, after the metric columns."""

_HEADERS = {"accuracy": "Accuracy", "precision": "Precision", "sensitivity": "Recall (sensitivity)",
            "specificity": "Specificity", "f1": "F1", "auc": "AUC"}
# Order of the Markdown table: the brain MRI paper's Table 1 (accuracy, precision, recall, F1,
# AUC) with specificity added, since a screening result without it is hard to judge.
_MARKDOWN_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc")


class UnpairedError(DataError):
    """Two runs were not evaluated on the same images, so a paired test would be meaningless."""


@dataclass(frozen=True)
class Predictions:
    """The rows of a run's ``predictions.csv`` (or ``val_predictions.csv``), in file order."""

    ids: list[str]
    labels: np.ndarray  # class index per image
    probs: np.ndarray  # (n, K) in class order
    pred: np.ndarray  # predicted class name per image (the run's own threshold)
    class_names: list[str]
    positive_index: int | None
    paths: list[str] = field(default_factory=list)
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class RunResult:
    """What a comparison needs from one run directory (read by :func:`medtl.rundir.load_result`)."""

    name: str
    run_dir: Path
    metrics: dict[str, Any]
    predictions: Predictions | None


# --------------------------------------------------------------------------- pairing


def pair_runs(a: RunResult, b: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Align two runs' predictions image by image.

    Returns:
        Index arrays ``(ia, ib)`` such that ``a``'s row ``ia[j]`` and ``b``'s row ``ib[j]`` are the
        same image.

    Raises:
        UnpairedError: When either run has no predictions, the class lists differ, an id repeats,
            the id sets differ (the message names both runs and counts the ids only one has), or a
            shared id has different labels.
    """
    pa, pb = a.predictions, b.predictions
    if pa is None or pb is None:
        missing = a if pa is None else b
        raise UnpairedError(f"{missing.name} has no predictions.csv, so it cannot be paired with "
                            f"{(b if missing is a else a).name}")
    if pa.class_names != pb.class_names:
        raise UnpairedError(f"{a.name} and {b.name} have different classes ({pa.class_names} vs {pb.class_names})")
    for run, preds in ((a, pa), (b, pb)):
        if len(set(preds.ids)) != len(preds.ids):
            raise UnpairedError(f"{run.name}: predictions.csv repeats ids, so images cannot be matched one to one")
    only_a, only_b = set(pa.ids) - set(pb.ids), set(pb.ids) - set(pa.ids)
    if only_a or only_b:
        raise UnpairedError(
            f"{a.name} and {b.name} were evaluated on different images: {len(only_a)} ids only in {a.name}, "
            f"{len(only_b)} only in {b.name} (e.g. {sorted(only_a or only_b)[0]!r}); paired tests need the same "
            "folds, split seed and train/test split")
    position = {id_: i for i, id_ in enumerate(pb.ids)}
    ia = np.arange(len(pa.ids))
    ib = np.array([position[id_] for id_ in pa.ids], dtype=np.int64)
    differ = int(np.sum(pa.labels[ia] != pb.labels[ib]))
    if differ:
        raise UnpairedError(f"{a.name} and {b.name}: {differ} shared ids have different labels")
    return ia, ib


def paired_tests(run: RunResult, baseline: RunResult) -> dict[str, Any]:
    """DeLong (AUC) and McNemar (accuracy of ``pred``) of ``run`` against ``baseline``.

    Returns:
        ``{"p_auc_delong", "p_acc_mcnemar", "paired_with", "reason"}``; a p-value is None where the
        test does not apply, with the reason given.

    Raises:
        UnpairedError: When the runs were not evaluated on the same images (see :func:`pair_runs`).
    """
    ia, ib = pair_runs(run, baseline)
    pr, pb = run.predictions, baseline.predictions
    assert pr is not None and pb is not None
    names = np.array(pr.class_names, dtype=object)
    truth = names[pr.labels[ia]]
    _, _, p_acc = mcnemar_test(truth, pr.pred[ia], pb.pred[ib])
    reasons = []
    p_auc: float | None = None
    if pr.positive_index is None:
        reasons.append(f"DeLong not available for {len(pr.class_names)} classes (binary only)")
    else:
        pos = pr.positive_index
        _, _, p_auc = delong_test(pr.labels[ia] == pos, pr.probs[ia, pos], pb.probs[ib, pos])
    return {"p_auc_delong": p_auc, "p_acc_mcnemar": p_acc, "paired_with": baseline.name,
            "reason": "; ".join(reasons)}


# --------------------------------------------------------------------------- comparison


def compare_results(runs: Sequence[RunResult], base: RunResult) -> list[dict[str, Any]]:
    """One row per run: the six metrics with 95% CIs and paired tests against ``base``.

    Returns:
        Dicts with keys ``run``, ``run_dir``, ``n``, for each metric ``<m>``, ``<m>_lo``, ``<m>_hi``,
        then :data:`TEST_COLUMNS`. The baseline's own row has no p-values (reason ``baseline``);
        a run evaluated on other images than the baseline has none either, with the reason.
    """
    return [_row(run, base) for run in runs]


def _row(run: RunResult, base: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run.name, "run_dir": str(run.run_dir), "n": run.metrics.get("n")}
    row.update(metric_columns(run.metrics))
    if run is base:
        return row | {"p_auc_delong": None, "p_acc_mcnemar": None, "paired_with": None, "reason": "baseline"}
    try:
        return row | paired_tests(run, base)
    except UnpairedError as exc:
        log.warning("no paired tests for %s: %s", run.name, exc)
        return row | {"p_auc_delong": None, "p_acc_mcnemar": None, "paired_with": None, "reason": str(exc)}


def metric_columns(metrics: dict[str, Any]) -> dict[str, float | None]:
    """``{m, m_lo, m_hi}`` for each metric of a ``metrics.json`` body (None where undefined)."""
    out: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        entry = metrics.get(key) or {}
        lo, hi = entry.get("ci95") or (None, None)
        out.update({key: entry.get("value"), f"{key}_lo": lo, f"{key}_hi": hi})
    return out


def metric_column_names() -> list[str]:
    """``n`` then ``<m>, <m>_lo, <m>_hi`` for each metric, in output order."""
    return ["n", *[f"{key}{suffix}" for key in METRIC_KEYS for suffix in ("", "_lo", "_hi")]]


# --------------------------------------------------------------------------- output


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def comparison_csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """The rows as CSV text with exactly ``columns`` (floats to 6 significant digits, blanks for None)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_number(row.get(c)) for c in columns])
    return buffer.getvalue()


def default_columns(label_columns: Sequence[str] = ("run",)) -> list[str]:
    """The CSV columns of a comparison: the label columns, metrics with CIs, then the tests."""
    return [*label_columns, *metric_column_names(), *TEST_COLUMNS]


def format_metric(row: dict[str, Any], key: str) -> str:
    """``0.953 (0.921–0.977)`` from a comparison row; ``n/a`` when undefined."""
    value, lo, hi = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if value is None:
        return "n/a"
    ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{value:.3f}{ci}"


def format_p(value: float | None) -> str:
    """A p-value for a table: ``<0.001``, three decimals, or ``–`` when absent."""
    if value is None or not math.isfinite(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def comparison_table(rows: list[dict[str, Any]], label_columns: Sequence[str] = ("run",),
                     title: str | None = None) -> Table:
    """A rich table: label columns, n, each metric with its CI, the two p-values and notes."""
    table = Table(title=title or f"Comparison (95% CI; p against {_baseline_name(rows) or 'the baseline'})")
    for col in label_columns:
        table.add_column(col)
    table.add_column("n", justify="right")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    table.add_column("p AUC (DeLong)", justify="right")
    table.add_column("p acc (McNemar)", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in label_columns], _number(row.get("n")),
                      *[format_metric(row, k) for k in METRIC_KEYS], format_p(row.get("p_auc_delong")),
                      format_p(row.get("p_acc_mcnemar")), _note(row))
    return table


def _note(row: dict[str, Any]) -> str:
    return str(row.get("reason") or "")


def _baseline_name(rows: list[dict[str, Any]]) -> str | None:
    return next((str(r.get("cell") or r.get("run")) for r in rows if r.get("reason") == "baseline"), None)


def comparison_markdown(rows: list[dict[str, Any]], label_columns: Sequence[str] = ("run",),
                        baseline: str | None = None) -> str:
    """A Markdown table in the layout of a paper's results table, with CIs and p-values.

    Args:
        rows: Rows from :func:`compare_runs` (or a study's comparison).
        label_columns: Leading columns naming each row (e.g. the run, or a study's axes).
        baseline: Name of the baseline, for the note under the table (default: the row marked ``baseline``).
    """
    baseline = baseline or _baseline_name(rows)
    heads = [*label_columns, "n", *[_HEADERS[k] for k in _MARKDOWN_METRICS], "p AUC (DeLong)", "p acc (McNemar)"]
    lines = ["| " + " | ".join(heads) + " |",
             "|" + "---|" * len(label_columns) + "---:|" * (len(heads) - len(label_columns))]
    for row in rows:
        cells = [*[str(row.get(c, "")) for c in label_columns], _number(row.get("n")),
                 *[format_metric(row, k) for k in _MARKDOWN_METRICS],
                 format_p(row.get("p_auc_delong")), format_p(row.get("p_acc_mcnemar"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    against = f" against the baseline ({baseline})" if baseline else " against the baseline"
    lines.append(f"Values with 95% CIs from a bootstrap over patients (groups). p-values are paired tests{against} "
                 "on the same evaluation images: DeLong for AUC, McNemar for the predicted class at each run's "
                 "threshold.")
    notes = [f"- {_label(row, label_columns)}: {row['reason']}" for row in rows
             if row.get("reason") and row.get("reason") != "baseline"]
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"


def _label(row: dict[str, Any], label_columns: Sequence[str]) -> str:
    return str(row.get(label_columns[0], "")) if label_columns else ""
