"""Side-by-side comparison of finished runs, with paired tests against a baseline run.

Each run contributes its six metrics and their 95% CIs from ``metrics.json``. Against the
baseline, two paired tests are computed from ``predictions.csv`` — but only when both runs were
evaluated on the same images (the same set of ``id`` values with the same labels): DeLong's test
of the AUCs (binary problems only) and McNemar's test of the ``pred`` column (each run's own
threshold). Runs evaluated on different images are never paired; the row says why instead.

Both tests are *conditional on the trained models*: they count the test images, not the variation
between trainings (seeds; see :func:`seed_rows` for the test over seeds). When patients (the
``group`` column) have several images, the AUC is also tested clustered by patient
(``p_auc_clustered``, Obuchowski), and with several runs against one baseline the AUC p-values are
Holm-adjusted (``p_auc_holm``; the clustered p where there is one, else DeLong's).
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
from medtl.evaluate.stats import CONDITIONAL, clustered_auc_test, has_clusters, holm, mean_sd, paired_seed_test
from medtl.evaluate.table import adaptation_note

log = logging.getLogger(__name__)

TEST_COLUMNS: tuple[str, ...] = ("p_auc_delong", "p_acc_mcnemar", "paired_with", "reason", "p_auc_clustered",
                                  "p_auc_holm")
"""Columns of the paired tests, after the metric columns."""
_NO_TESTS = dict.fromkeys(("p_auc_delong", "p_acc_mcnemar", "paired_with", "p_auc_clustered"))
SEED_COLUMNS: tuple[str, ...] = ("config", "runs", "auc_mean", "auc_sd", "accuracy_mean", "accuracy_sd", "mean_diff",
                                 "sd_diff", "p_ttest", "p_wilcoxon", "paired_with")
"""Columns of a comparison over seeds (:func:`seed_rows`)."""

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
    p_clustered: float | None = None
    if pr.positive_index is None:
        reasons.append(f"DeLong not available for {len(pr.class_names)} classes (binary only)")
    else:
        pos = pr.positive_index
        _, _, p_auc = delong_test(pr.labels[ia] == pos, pr.probs[ia, pos], pb.probs[ib, pos])
        groups = [pr.groups[i] for i in ia] if len(pr.groups) == len(pr.ids) else []
        if groups and has_clusters(groups):
            _, _, p_clustered = clustered_auc_test(pr.labels[ia] == pos, pr.probs[ia, pos], pb.probs[ib, pos], groups)
    return {"p_auc_delong": p_auc, "p_acc_mcnemar": p_acc, "paired_with": baseline.name,
            "reason": "; ".join(reasons), "p_auc_clustered": p_clustered}


# --------------------------------------------------------------------------- comparison


def compare_results(runs: Sequence[RunResult], base: RunResult) -> list[dict[str, Any]]:
    """One row per run: the six metrics with 95% CIs and paired tests against ``base``.

    Returns:
        Dicts with keys ``run``, ``run_dir``, ``n``, for each metric ``<m>``, ``<m>_lo``, ``<m>_hi``,
        then :data:`TEST_COLUMNS`. The baseline's own row has no p-values (reason ``baseline``);
        a run evaluated on other images than the baseline has none either, with the reason.
    """
    return with_holm([_row(run, base) for run in runs])


def with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ``p_auc_holm``: the AUC p-values against the baseline (clustered where present), Holm-adjusted."""
    raw = [r.get("p_auc_clustered") if r.get("p_auc_clustered") is not None else r.get("p_auc_delong")
           for r in rows]
    return [r | {"p_auc_holm": p} for r, p in zip(rows, holm(raw), strict=True)]


def _row(run: RunResult, base: RunResult) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run.name, "run_dir": str(run.run_dir), "n": run.metrics.get("n"),
                           "protocol": adaptation_note(run.metrics)}
    row.update(metric_columns(run.metrics))
    if run is base:
        return row | _NO_TESTS | {"reason": "baseline"}
    try:
        return row | paired_tests(run, base)
    except UnpairedError as exc:
        log.warning("no paired tests for %s: %s", run.name, exc)
        return row | _NO_TESTS | {"reason": str(exc)}


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
    return [*label_columns, *metric_column_names(), *TEST_COLUMNS, "protocol"]


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


def _extra_p(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, header) of the optional p-value columns: clustered where patients repeat, Holm for several runs."""
    extra = []
    if any(r.get("p_auc_clustered") is not None for r in rows):
        extra.append(("p_auc_clustered", "p AUC (clustered by patient)"))
    if sum(r.get("p_auc_holm") is not None for r in rows) > 1:
        extra.append(("p_auc_holm", "p AUC (Holm)"))
    return extra


def comparison_table(rows: list[dict[str, Any]], label_columns: Sequence[str] = ("run",),
                     title: str | None = None) -> Table:
    """A rich table: label columns, n, each metric with its CI, the p-values and notes."""
    table = Table(title=title or f"Comparison (95% CI; p against {_baseline_name(rows) or 'the baseline'})",
                  caption=f"p AUC (DeLong) and p acc (McNemar): {CONDITIONAL} (they count test images, not seeds)")
    extra = _extra_p(rows)
    for col in label_columns:
        table.add_column(col)
    table.add_column("n", justify="right")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    table.add_column("p AUC (DeLong)", justify="right")
    table.add_column("p acc (McNemar)", justify="right")
    for _, header in extra:
        table.add_column(header, justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in label_columns], _number(row.get("n")),
                      *[format_metric(row, k) for k in METRIC_KEYS], format_p(row.get("p_auc_delong")),
                      format_p(row.get("p_acc_mcnemar")), *[format_p(row.get(k)) for k, _ in extra], _note(row))
    return table


def _note(row: dict[str, Any]) -> str:
    """The row's reason (baseline, unpaired, ...) and the protocol statement of an adapted run."""
    return "; ".join(str(row[k]) for k in ("reason", "protocol") if row.get(k))


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
    extra = _extra_p(rows)
    heads = [*label_columns, "n", *[_HEADERS[k] for k in _MARKDOWN_METRICS], "p AUC (DeLong)", "p acc (McNemar)",
             *[h for _, h in extra]]
    lines = ["| " + " | ".join(heads) + " |",
             "|" + "---|" * len(label_columns) + "---:|" * (len(heads) - len(label_columns))]
    for row in rows:
        cells = [*[str(row.get(c, "")) for c in label_columns], _number(row.get("n")),
                 *[format_metric(row, k) for k in _MARKDOWN_METRICS],
                 format_p(row.get("p_auc_delong")), format_p(row.get("p_acc_mcnemar")),
                 *[format_p(row.get(k)) for k, _ in extra]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    against = f" against the baseline ({baseline})" if baseline else " against the baseline"
    lines.append(f"Values with 95% CIs from a bootstrap over patients (groups). p-values are paired tests{against} "
                 "on the same evaluation images: DeLong for AUC, McNemar for the predicted class at each run's "
                 f"threshold; both are {CONDITIONAL} (they count test images, not the variation between trainings: "
                 "compare several seeds for that)."
                 + (" Clustered: AUC test clustered by patient (Obuchowski), for patients with several images."
                    if any(k == "p_auc_clustered" for k, _ in extra) else "")
                 + (" Holm: the AUC p-values (clustered where given) adjusted for the number of comparisons."
                    if any(k == "p_auc_holm" for k, _ in extra) else ""))
    notes = [f"- {_label(row, label_columns)}: {row['reason']}" for row in rows
             if row.get("reason") and row.get("reason") != "baseline"]
    notes += [f"- {_label(row, label_columns)}: {row['protocol']}" for row in rows if row.get("protocol")]
    return "\n".join([*lines, *([""] + notes if notes else [])]) + "\n"


def _label(row: dict[str, Any], label_columns: Sequence[str]) -> str:
    return str(row.get(label_columns[0], "")) if label_columns else ""


# --------------------------------------------------------------------------- seeds


def seed_rows(configs: Sequence[tuple[str, Sequence[RunResult]]]) -> list[dict[str, Any]]:
    """One row per configuration trained with several seeds: mean ± sd of AUC and accuracy, and a paired
    test over seeds against the first configuration (run k of each = the same seed).

    Returns:
        Dicts with :data:`SEED_COLUMNS`; the first (baseline) row has no test.

    Raises:
        DataError: The configurations have different numbers of runs (seeds must pair).
    """
    rows = []
    base_name, base_runs = configs[0]
    for name, runs in configs:
        aucs, accs = _values(runs, "auc"), _values(runs, "accuracy")
        row: dict[str, Any] = {"config": name, "runs": len(runs)}
        row.update(zip(("auc_mean", "auc_sd"), mean_sd(aucs), strict=True))
        row.update(zip(("accuracy_mean", "accuracy_sd"), mean_sd(accs), strict=True))
        if name != base_name:
            test = paired_seed_test(aucs, _values(base_runs, "auc"))
            row |= {k: test[k] for k in ("mean_diff", "sd_diff", "p_ttest", "p_wilcoxon")} | {"paired_with": base_name}
        rows.append(row)
    return rows


def _values(runs: Sequence[RunResult], key: str) -> list[float]:
    values = [(r.metrics.get(key) or {}).get("value") for r in runs]
    missing = [r.name for r, v in zip(runs, values, strict=True) if v is None]
    if missing:
        raise DataError(f"no {key} in metrics.json of {', '.join(missing)}; a seed comparison needs it in every run")
    return [float(v) for v in values]


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f}"


def seed_table(rows: list[dict[str, Any]], title: str = "Over seeds (mean ± sd)") -> Table:
    """A rich table of :func:`seed_rows`."""
    table = Table(title=title, caption="p: paired over seeds (t-test, Wilcoxon signed-rank) on the per-seed AUC "
                  "differences against the first configuration; this counts the variation between trainings")
    for col in ("config", "runs", "AUC", "accuracy", "AUC diff", "p (paired t)", "p (Wilcoxon)"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        diff = r.get("mean_diff")
        table.add_row(r["config"], str(r["runs"]), _pm(r.get("auc_mean"), r.get("auc_sd")),
                      _pm(r.get("accuracy_mean"), r.get("accuracy_sd")), "" if diff is None else f"{diff:+.4f}",
                      format_p(r.get("p_ttest")), format_p(r.get("p_wilcoxon")))
    return table


def seed_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`seed_rows` as a Markdown table with its note."""
    lines = ["| config | seeds | AUC (mean ± sd) | accuracy (mean ± sd) | AUC diff | p (paired t) | p (Wilcoxon) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        diff = r.get("mean_diff")
        lines.append(f"| {r['config']} | {r['runs']} | {_pm(r.get('auc_mean'), r.get('auc_sd'))} | "
                     f"{_pm(r.get('accuracy_mean'), r.get('accuracy_sd'))} | {'' if diff is None else f'{diff:+.4f}'} "
                     f"| {format_p(r.get('p_ttest'))} | {format_p(r.get('p_wilcoxon'))} |")
    base = rows[0]["config"] if rows else "the first configuration"
    lines += ["", f"p-values: paired over seeds against {base} (paired t-test and Wilcoxon signed-rank test on the "
              "per-seed AUC differences); unlike the per-model DeLong p-value, they count the variation between "
              "trainings."]
    return "\n".join(lines) + "\n"
