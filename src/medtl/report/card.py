"""The model card of a finished run: what the model is for, what it was trained and tested on, how well it did.

:func:`card_data` gathers the card as a JSON-ready dict (``GET /v1/model`` of ``medtl serve`` returns
it; ``medtl export`` stores it in the graph's contract); :func:`card_markdown` renders it;
:func:`write_card` writes ``model_card.md`` into the run directory. Everything comes from the run's
own files (``metrics.json``, ``model/model.json``, ``config.yaml``, ``splits.csv``,
``label_issues.csv``, the prediction tables), read through :mod:`medtl.report.load`.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from medtl import rundir
from medtl.evaluate.calibration import expected_calibration_error, negative_log_likelihood
from medtl.evaluate.compare import Predictions
from medtl.evaluate.metrics import compute_metrics
from medtl.report.load import RunData, load_run

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1")
SHIFT_GAP = 0.10
"""A validation-vs-test gap in sensitivity or specificity at least this large is listed as a known shift."""
_LIBRARIES = ("torch", "timm", "lightning", "numpy", "medtl")


def card_data(run_dir: Path) -> dict[str, Any]:
    """The model card of a finished run as a JSON-ready dict.

    Raises:
        MedtlError: ``run_dir`` is not a finished run.
    """
    run = load_run(rundir.require_complete(Path(run_dir)))
    return {"name": run.name, "model": _model(run), "intended_use": _intended_use(run),
            "out_of_scope": _out_of_scope(run), "data": _data(run), "protocol": run.metrics.get("protocol", {}),
            "metrics": _metrics(run), "operating_point": _operating_point(run), "calibration": _calibration(run),
            "lineage": run.model.get("lineage", []), "known_shifts": _shifts(run), "training": _training(run)}


def _model(run: RunData) -> dict[str, Any]:
    facts = run.metrics.get("model", {})
    return {"backbone": run.model.get("backbone") or facts.get("backbone"), "weights": facts.get("weights"),
            "strategy": facts.get("strategy"), "parameters": facts.get("parameters"),
            "class_names": run.class_names, "positive_class": _positive(run),
            "preprocessing": run.model.get("preprocessing", {}), "tta": run.model.get("tta"),
            "folds": run.model.get("folds", [])}


def _positive(run: RunData) -> str | None:
    index = run.positive_index
    return run.class_names[index] if index is not None else None


def _intended_use(run: RunData) -> str:
    data = run.config.get("data", {})
    task = (f"a binary decision '{_positive(run)}' vs '{[c for c in run.class_names if c != _positive(run)][0]}'"
            if run.positive_index is not None else f"one of {len(run.class_names)} classes")
    return (f"Research use: {task} on single {data.get('source', 'image')} images prepared like the training "
            f"data ({data.get('image_size')} px, {data.get('color', 'grayscale')}), as decision support to be "
            "checked by a clinician, at the operating point below.")


def _out_of_scope(run: RunData) -> list[str]:
    return ["Clinical diagnosis without review by a qualified reader; the model is not a medical device.",
            "Images of other modalities, body parts, scanners or populations than the training data "
            f"({run.metrics.get('data', {}).get('location', 'see Data')}).",
            f"Classes other than {', '.join(run.class_names)}: every input gets one of these labels.",
            "Decisions at another threshold than the stored operating point without re-validating it."]


def _data(run: RunData) -> dict[str, Any]:
    data = run.metrics.get("data", {})
    groups = {r.get("group", "") for r in run.splits}
    duplicates = sorted(g for g in groups if g.startswith("dup:"))
    suspects = [{"id": r.get("id"), "given": r.get("given"), "predicted": r.get("predicted")}
                for r in run.label_issues[:10]]
    return {"source": data.get("source"), "location": data.get("location"), "n_images": data.get("n_images"),
            "n_unreadable": data.get("n_bad"), "class_counts": run.metrics.get("class_counts", {}),
            "patient_ids": any(r.get("patient") for r in run.splits),
            "duplicate_groups": len(duplicates), "suspect_labels": len(run.label_issues),
            "suspect_label_examples": suspects, "warnings": run.metrics.get("warnings", [])}


def _metrics(run: RunData) -> dict[str, Any]:
    out = {}
    for key in METRICS:
        entry = run.metrics.get(key)
        if isinstance(entry, dict):
            out[key] = {"value": entry.get("value"), "ci95": entry.get("ci95")}
    out["n"] = run.metrics.get("n")
    out["per_fold"] = {k: v.get("values") for k, v in run.metrics.get("per_fold", {}).items() if k in METRICS}
    return out


def _operating_point(run: RunData) -> dict[str, Any]:
    return {"threshold": run.threshold, "rule": run.model.get("threshold_rule"),
            "chosen_on": "validation predictions" if run.val_predictions is not None else "fixed (configured)"}


def _calibration(run: RunData) -> dict[str, Any]:
    out: dict[str, Any] = {"temperature": run.temperature}
    table = run.predictions
    if table is not None and len(table.labels):
        out |= {"ece": expected_calibration_error(table.labels, table.probs),
                "nll": negative_log_likelihood(table.labels, table.probs), "on": "held-out test predictions"}
    return out


def _at_threshold(table: Predictions | None, run: RunData) -> dict[str, float] | None:
    if table is None or len(table.labels) == 0 or len(np.unique(table.labels)) < 2:
        return None
    return compute_metrics(table.labels, table.probs, run.positive_index, run.threshold)


def _shifts(run: RunData) -> list[str]:
    """Validation vs test gaps of sensitivity and specificity at the stored operating point."""
    val, test = _at_threshold(run.val_predictions, run), _at_threshold(run.predictions, run)
    if val is None or test is None:
        return []
    notes = []
    for key in ("sensitivity", "specificity"):
        a, b = val.get(key), test.get(key)
        if a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and abs(a - b) >= SHIFT_GAP:
            notes.append(f"{key} {a:.3f} on validation vs {b:.3f} on test at threshold {run.threshold:.3g}: "
                         "expect the operating point to move on new data")
    return notes


def _training(run: RunData) -> dict[str, Any]:
    return {"config": {k: run.config.get(k) for k in ("model", "transfer", "train", "evaluate")},
            "epochs_trained": run.metrics.get("epochs_trained"), "seconds": run.metrics.get("seconds"),
            "environment": {"python": platform.python_version(), **{lib: _version(lib) for lib in _LIBRARIES}},
            "environment_note": "of the machine that wrote this card"}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- markdown


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if np.isfinite(value) else "n/a"
    return "n/a" if value is None else str(value)


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = ["| Metric | Value | 95% CI | Per fold |", "|---|---|---|---|"]
    for key in METRICS:
        entry = metrics.get(key)
        if entry is None:
            continue
        ci = entry.get("ci95") or [None, None]
        folds = ", ".join(_fmt(v) for v in metrics.get("per_fold", {}).get(key) or [])
        rows.append(f"| {key} | {_fmt(entry['value'])} | {_fmt(ci[0])}–{_fmt(ci[1])} | {folds} |")
    return rows


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    m, d, op, cal = card["model"], card["data"], card["operating_point"], card["calibration"]
    protocol = card["protocol"]
    lines = [f"# Model card: {card['name']}", "",
             f"{m['backbone']} ({m['weights']}, {m['strategy']}), classes {', '.join(m['class_names'])}"
             + (f", positive class '{m['positive_class']}'" if m["positive_class"] else "") + ".", "",
             "## Intended use", "", card["intended_use"], "", "## Out-of-scope use", "",
             *[f"- {x}" for x in card["out_of_scope"]], "", "## Data", "",
             f"- Source: {d['source']} at `{d['location']}`; {d['n_images']} images "
             f"({d['n_unreadable']} unreadable); classes {d['class_counts']}.",
             f"- Patient ids: {'yes' if d['patient_ids'] else 'no (grouped by duplicate image content)'}; "
             f"{d['duplicate_groups']} groups of duplicate images kept on one side of every split.",
             f"- Suspect labels (audit, labels unchanged): {d['suspect_labels']}"
             + (": " + "; ".join(f"{s['id']} ({s['given']}→{s['predicted']})" for s in
                                 d["suspect_label_examples"][:5]) if d["suspect_labels"] else "") + ".",
             *[f"- Warning: {w}" for w in d["warnings"]], "", "## Protocol", "",
             *[f"- {k}: {_fmt(v)}" for k, v in protocol.items() if k not in ("threshold_rule",)], "",
             "## Metrics", "", f"On {card['metrics'].get('n')} held-out images:", "",
             *_metric_rows(card["metrics"]), "", "## Operating point", "",
             f"Threshold {_fmt(op['threshold'])} on the positive class's probability; rule {op['rule']}; chosen on "
             f"{op['chosen_on']}.", "", "## Calibration", "",
             f"Temperature {_fmt(cal.get('temperature'))}; ECE {_fmt(cal.get('ece'))}, NLL {_fmt(cal.get('nll'))} "
             f"on {cal.get('on', 'n/a')}.", "", "## Known shifts", "",
             *([f"- {s}" for s in card["known_shifts"]] or ["- None found between validation and test."]), "",
             "## Lineage", "", *[f"- {s}" for s in card["lineage"]], "", "## How it was trained", "",
             *[f"- {k}: `{v}`" for k, v in card["training"]["config"].items()],
             f"- Epochs trained per fold: {card['training']['epochs_trained']}; "
             f"{_fmt(card['training']['seconds'])} s.",
             f"- Environment ({card['training']['environment_note']}): {card['training']['environment']}.", ""]
    return "\n".join(lines)


def write_card(run_dir: Path) -> Path:
    """Write ``model_card.md`` into a finished run directory and return its path."""
    card = card_data(run_dir)
    return rundir.write_text(Path(run_dir) / rundir.MODEL_CARD, card_markdown(card))
