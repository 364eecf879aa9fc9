"""The sections of a run's report, as plain data for the template (figures as data URIs).

Each ``*_section`` function takes the loaded run and returns a dict; a section whose inputs are
missing returns a ``note`` saying what is missing instead of failing the whole report.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from typing import Any

import numpy as np

from medtl import rundir
from medtl.errors import DataError, MedtlError
from medtl.evaluate.aggregate import patient_level_metrics
from medtl.evaluate.calibration import apply_temperature, negative_log_likelihood, reliability_curve
from medtl.evaluate.curves import CurveBand, one_vs_rest_bands, per_class_auc, pr_band, roc_band
from medtl.evaluate.metrics import METRIC_KEYS, compute_metrics, summarize
from medtl.evaluate.table import adaptation_note
from medtl.evaluate.threshold import choose_threshold, describe_rule
from medtl.report import figures
from medtl.report.load import PredictionTable, RunData

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test", "excluded")
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<msg>.*)$")
_AUDIT_LOGGERS = ("medtl.data.",)
_MAX_FINDINGS = 40
_ALTERNATIVE_RULES = (("youden", None), ("sensitivity", 0.95), ("specificity", 0.95), ("fixed", 0.5))


def get(tree: Any, key: str, default: Any = None) -> Any:
    """Value at dotted ``key`` of nested dicts, or ``default``."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def entry(value: float | None, ci: Any = None) -> dict[str, Any]:
    """A ``{"value", "ci95"}`` cell as in metrics.json (nan becomes None)."""
    def clean(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
    lo, hi = (ci or (None, None))[:2] if ci is not None else (None, None)
    return {"value": clean(value), "ci95": [clean(lo), clean(hi)]}


# --------------------------------------------------------------------------- protocol and data


def protocol_section(run: RunData) -> dict[str, Any]:
    """Data, split, grouping, seeds, weights lineage and transfer strategy."""
    cfg, m, proto = run.config, run.metrics, run.metrics.get("protocol", {})
    rule = run.model.get("threshold_rule")
    rows = [
        ("Experiment", run.name),
        ("Data", f"{get(cfg, 'data.source', get(m, 'data.source', '?'))}: {_location(cfg, m)}"),
        ("Images", f"{get(m, 'data.n_images', m.get('n', '?'))} used, {get(m, 'data.n_bad', 0)} unreadable"),
        ("Classes", ", ".join(run.class_names) + (f" (positive: {run.class_names[run.positive_index]})"
                                                   if run.positive_index is not None else "")),
        ("Split", _split_text(cfg, proto)),
        ("Grouping", f"{proto.get('grouping', '?')}; {proto.get('n_groups', m.get('n_groups', '?'))} groups"),
        ("Evaluated on", proto.get("evaluated_on", "?")),
        ("Seeds", f"split {proto.get('seed', get(cfg, 'data.split.seed', '?'))}, "
                  f"training {proto.get('train_seed', get(cfg, 'train.seed', '?'))} (+ fold index)"),
        ("Backbone / weights", f"{get(m, 'model.backbone', run.model.get('backbone', '?'))} / "
                               f"{get(m, 'model.weights', get(cfg, 'model.weights', '?'))}"),
        ("Transfer strategy", _strategy_text(cfg)),
        ("Training", _training_text(cfg, m)),
        ("Test-time augmentation", str(proto.get("tta", run.model.get("tta", "none")))),
        ("Operating point", _rule_text(run, rule)),
        ("Temperature scaling", f"T = {run.temperature:.3f} (fitted on validation)" if run.temperature
         else "not fitted"),
    ]
    if adaptation_note(m):
        rows.append(("Domain adaptation", adaptation_note(m)))
    if m.get("seconds") is not None:
        rows.append(("Run time", f"{float(m['seconds']) / 60:.1f} min"))
    card = rundir.MODEL_CARD if (run.path / rundir.MODEL_CARD).is_file() else None  # relative: beside report.html
    return {"rows": rows, "lineage": run.model.get("lineage") or [], "model_card": card}


def _location(cfg: dict, m: dict) -> str:
    for value in (get(m, "data.location"), get(cfg, "data.root"), get(cfg, "data.csv"), get(cfg, "data.path")):
        if value:
            return str(value)
    return "?"


def _split_text(cfg: dict, proto: dict) -> str:
    method = proto.get("split", get(cfg, "data.split.method", "?"))
    text = f"{method}, {proto.get('folds', get(cfg, 'data.split.folds', '?'))} fold(s)"
    val = proto.get("val_fraction", get(cfg, "data.split.val_fraction"))
    if val is not None:
        text += f", validation fraction {val}"
    if method == "holdout":
        text += f", test fraction {get(cfg, 'data.split.test_fraction')}"
    fraction = get(cfg, "data.train_fraction")
    return text + (f", training fraction {fraction}" if fraction not in (None, 1.0) else "")


def _strategy_text(cfg: dict) -> str:
    transfer = cfg.get("transfer") or {}
    text = str(transfer.get("strategy", "?"))
    for key in ("unfreeze_from", "truncate_at"):
        if transfer.get(key):
            text += f", {key} {transfer[key]}"
    if transfer.get("schedule"):
        text += ", schedule " + "; ".join(f"epoch {s.get('epoch')}: {s.get('unfreeze_from')}"
                                          for s in transfer["schedule"])
    return text + (f", head init {transfer['head_init']}" if transfer.get("head_init") else "")


def _training_text(cfg: dict, m: dict) -> str:
    train = cfg.get("train") or {}
    epochs = m.get("epochs_trained")
    trained = f" (trained {', '.join(map(str, epochs))})" if epochs else ""
    return (f"{train.get('optimizer', '?')}, lr {train.get('lr', '?')}, batch {train.get('batch_size', '?')}, "
            f"up to {train.get('epochs', '?')} epochs{trained}, early stopping on "
            f"{get(train, 'early_stopping.monitor', '?')}")


def _rule_text(run: RunData, rule: Any) -> str:
    if run.positive_index is None:
        return "argmax (multiclass)"
    text = f"threshold {run.threshold:.4g} on P({run.class_names[run.positive_index]})"
    if isinstance(rule, dict):
        described = describe_rule(str(rule.get("rule", "?")), rule.get("target"))
        sens, spec = rule.get("sensitivity"), rule.get("specificity")
        achieved = f"; validation sensitivity {sens:.3f}, specificity {spec:.3f}" \
            if isinstance(sens, float) and isinstance(spec, float) else ""
        return f"{text}, chosen on validation data by {described}{achieved}"
    if isinstance(rule, str):
        return f"{text}, chosen on validation data by {rule}"
    return f"{text} (fixed in the config: evaluate.threshold)"


def data_section(run: RunData) -> dict[str, Any]:
    """Class balance per fold and split role (splits.csv) and the audit findings of the log."""
    names = run.class_names or sorted({r.get("class_name", "") for r in run.splits})
    counts = Counter((r.get("fold", "0"), r.get("role", "?"), r.get("class_name", "")) for r in run.splits)
    folds = sorted({r.get("fold", "0") for r in run.splits}, key=lambda f: int(f) if f.isdigit() else 0)
    roles = [role for role in ROLES if any(k[1] == role for k in counts)]
    rows = [[fold, *[" / ".join(str(counts[(fold, role, c)]) for c in names) for role in roles]] for fold in folds]
    unique = {r.get("id"): r.get("class_name") for r in run.splits}
    totals = Counter(unique.values())
    return {"columns": ["fold", *[f"{role} ({' / '.join(names)})" for role in roles]], "rows": rows,
            "totals": ", ".join(f"{c}: {totals[c]}" for c in names) + f" ({len(unique)} images)" if unique else "",
            "findings": audit_findings(run), "bad": get(run.metrics, "data.bad") or [],
            "labels": label_audit_section(run),
            "note": None if run.splits else "no splits.csv in the run directory"}


LABEL_THUMBNAILS = 12
"""Suspected label errors shown with their image in the report (the rest are in label_issues.csv)."""


def label_audit_section(run: RunData, limit: int = LABEL_THUMBNAILS, size: int = 112) -> dict[str, Any]:
    """The worst suspected label errors (label_issues.csv) with thumbnails, and the audit's totals."""
    from PIL import Image

    from medtl.report.gallery import load_image

    audit = run.metrics.get("label_issues")
    if not isinstance(audit, dict):
        return {"note": "no label audit in this run (evaluate.label_issues off, or a run older than the audit)",
                "items": []}
    if "error" in audit:
        return {"note": f"the label audit could not run: {audit['error']}", "items": []}
    items, notes = [], []
    for row in run.label_issues[:limit]:
        item = dict(row)
        try:
            img = load_image(run, row.get("path", ""))
            img.thumbnail((size, size), Image.Resampling.BICUBIC)
            item["image"] = figures.array_to_data_uri(np.asarray(img.convert("L")))
        except (DataError, OSError) as exc:
            item["image"] = None
            notes.append(f"{row.get('id')}: not shown ({exc})")
        items.append(item)
    return {"n": audit.get("n"), "of": audit.get("of"), "method": audit.get("method", ""), "items": items,
            "more": max(0, len(run.label_issues) - limit), "notes": notes, "note": None}


def audit_findings(run: RunData) -> list[str]:
    """Data-audit messages of run.log: every record of ``medtl.data.*`` and every warning or error."""
    found = []
    for line in run.log_lines:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        level, name, msg = match.group("level"), match.group("logger"), match.group("msg")
        if name.startswith(_AUDIT_LOGGERS) or level in ("WARNING", "ERROR", "CRITICAL"):
            entry_text = f"{level.lower()}: {msg}" if level != "INFO" else msg
            if entry_text not in found:
                found.append(entry_text)
    audit = run.metrics.get("audit")
    if isinstance(audit, dict):
        found += [f"audit {k}: {v}" for k, v in audit.items() if not isinstance(v, dict | list)]
    return found[:_MAX_FINDINGS]


# --------------------------------------------------------------------------- training


def learning_section(run: RunData) -> dict[str, Any]:
    """Loss, accuracy and AUC per epoch (history.csv)."""
    if not run.history:
        return {"figure": None, "note": "no history.csv in the run directory"}
    return {"figure": figures.learning_curves(run.history), "note": None}


# --------------------------------------------------------------------------- discrimination


def _binary(table: PredictionTable, pos: int) -> tuple[np.ndarray, np.ndarray]:
    return (table.labels == pos).astype(int), table.probs[:, pos]


def curves_section(run: RunData, n_boot: int, seed: int) -> dict[str, Any]:
    """ROC and PR curves with grouped-bootstrap bands; per-class AUC for multiclass runs."""
    table = run.predictions
    if table is None or not len(table):
        return {"figure": None, "note": "no predictions.csv in the run directory"}
    pos = run.positive_index
    try:
        if pos is not None:
            y, score = _binary(table, pos)
            label = run.class_names[pos]
            roc = {label: roc_band(y, score, table.groups, n_boot, seed)}
            pr = {label: pr_band(y, score, table.groups, n_boot, seed)}
            per_class = None
        else:
            roc = one_vs_rest_bands(table.labels, table.probs, run.class_names, table.groups, "roc", n_boot, seed)
            pr = one_vs_rest_bands(table.labels, table.probs, run.class_names, table.groups, "pr", n_boot, seed)
            per_class = per_class_auc(table.labels, table.probs, run.class_names, table.groups, n_boot, seed)
    except DataError as exc:
        return {"figure": None, "note": f"curves not drawn: {exc}"}
    return {"figure": figures.roc_pr(roc, pr, _operating_marker(run) if pos is not None else None),
            "rows": _area_rows(roc, pr), "per_class": per_class, "note": None,
            "n_boot": n_boot, "n_groups": len(set(table.groups))}


def _operating_marker(run: RunData) -> tuple[float, float, float, float]:
    y, score = _binary(run.predictions, run.positive_index)
    said = score >= run.threshold
    tpr = float(said[y == 1].mean())
    fpr = float(said[y == 0].mean())
    precision = float(y[said].mean()) if said.any() else 1.0
    return fpr, tpr, tpr, precision


def _area_rows(roc: dict[str, CurveBand], pr: dict[str, CurveBand]) -> list[dict[str, Any]]:
    return [{"label": k, "auc": entry(roc[k].area, roc[k].area_ci), "ap": entry(pr[k].area, pr[k].area_ci),
             "valid": f"{roc[k].n_valid}/{roc[k].n_boot}"} for k in roc]


# --------------------------------------------------------------------------- operating point


def operating_section(run: RunData, n_boot: int, seed: int) -> dict[str, Any]:
    """Metrics with CIs and the confusion matrix at the operating point; rules compared on validation."""
    table = run.predictions
    if table is None or not len(table):
        return {"figure": None, "note": "no predictions.csv in the run directory"}
    pos, names = run.positive_index, run.class_names
    at = summarize(table.labels, table.probs, table.groups, names, pos, run.threshold, n_boot, seed)
    rows = [{"label": "operating point" if pos is not None else "argmax",
             "threshold": run.threshold if pos is not None else None, "metrics": at}]
    if pos is not None and abs(run.threshold - 0.5) > 1e-12:
        rows.append({"label": "for reference: 0.5", "threshold": 0.5,
                     "metrics": summarize(table.labels, table.probs, table.groups, names, pos, 0.5, n_boot, seed)})
    title = f"threshold {run.threshold:.3g}" if pos is not None else "argmax"
    return {"figure": figures.confusion(at["confusion_matrix"], names, f"Confusion matrix ({title})"),
            "rows": rows, "rule": _rule_text(run, run.model.get("threshold_rule")),
            "alternatives": _alternatives(run), "note": None}


def _alternatives(run: RunData) -> list[dict[str, Any]] | None:
    """Each rule fitted on the pooled validation predictions and its result on the test predictions."""
    val, test, pos = run.val_predictions, run.predictions, run.positive_index
    if pos is None or val is None or not len(val):
        return None
    y_val, s_val = _binary(val, pos)
    y_test, s_test = _binary(test, pos)
    out = []
    for rule, target in _ALTERNATIVE_RULES:
        name = describe_rule(rule, target)
        try:
            t = choose_threshold(y_val, s_val, rule, target)
        except DataError as exc:
            out.append({"rule": name, "threshold": None, "note": str(exc)})
            continue
        said, said_val = s_test >= t, s_val >= t
        out.append({"rule": name, "threshold": t, "in_use": abs(t - run.threshold) < 1e-9,
                    "val_sens": _rate(said_val, y_val, 1), "val_spec": _rate(~said_val, y_val, 0),
                    "sens": _rate(said, y_test, 1), "spec": _rate(~said, y_test, 0),
                    "acc": float(np.mean(said == (y_test == 1)))})
    return out


def _rate(hit: np.ndarray, y: np.ndarray, cls: int) -> float | None:
    mask = y == cls
    return float(hit[mask].mean()) if mask.any() else None


# --------------------------------------------------------------------------- calibration


def calibration_section(run: RunData) -> dict[str, Any]:
    """Reliability diagram, ECE and NLL of the test predictions (and validation, before scaling)."""
    table = run.predictions
    if table is None or not len(table):
        return {"figure": None, "note": "no predictions.csv in the run directory"}
    pos, t = run.positive_index, run.temperature
    curves, rows = [], []
    sets = [("test", table.labels, table.probs)]
    if t is not None and abs(t - 1.0) > 1e-9:
        sets.append(("test, without temperature scaling", table.labels, apply_temperature(table.probs, 1.0 / t)))
    if run.val_predictions is not None and len(run.val_predictions):
        sets.append(("validation", run.val_predictions.labels, run.val_predictions.probs))
    for label, labels, probs in sets:
        curve = reliability_curve(labels, probs, 10, pos)
        curves.append((label, curve))
        rows.append({"label": label, "ece": curve.ece, "nll": negative_log_likelihood(labels, probs),
                     "n": int(len(labels))})
    note = (f"Probabilities are temperature-scaled with T = {t:.3f} (fitted on validation data)." if t
            else "No temperature was fitted; probabilities are the model's softmax outputs.")
    return {"figure": figures.reliability(curves), "rows": rows, "note": None, "explain": note,
            "kind": curves[0][1].kind}


# --------------------------------------------------------------------------- patients and folds


def patient_section(run: RunData, n_boot: int, seed: int) -> dict[str, Any]:
    """Patient-level metrics: metrics.json's, or computed when patients have several test images."""
    stored = run.metrics.get("patient_level")
    if isinstance(stored, dict):
        return {"metrics": stored, "aggregation": stored.get("aggregation") or {}, "note": None}
    table = run.predictions
    patient_of = {r.get("id"): r.get("patient") for r in run.splits if r.get("patient")}
    if table is None or not patient_of:
        return {"metrics": None, "note": "No patient ids in the data (images are grouped by duplicate content "
                                         "only), so results are per image."}
    patients = [patient_of.get(i) or f"image:{i}" for i in table.ids]
    if max(Counter(patients).values()) < 2:
        return {"metrics": None, "note": "Every patient has a single test image: patient-level results equal the "
                                         "image-level ones."}
    metrics = patient_level_metrics(table.labels, table.probs, patients, run.class_names, run.positive_index,
                                    "mean", 3, run.threshold, n_boot, seed)
    return {"metrics": metrics, "aggregation": metrics["aggregation"], "note": None}


def folds_section(run: RunData) -> dict[str, Any]:
    """Per-fold test metrics (metrics.json ``per_fold``, else recomputed) with mean ± SD."""
    per_fold = run.metrics.get("per_fold")
    if not isinstance(per_fold, dict) and run.predictions is not None and len(run.predictions):
        per_fold = _recompute_folds(run)
    if not per_fold:
        return {"rows": [], "note": "no per-fold results"}
    n = max(len(v.get("values") or []) for v in per_fold.values())
    epochs = run.metrics.get("epochs_trained") or []
    rows = [{"fold": i, "epochs": epochs[i] if i < len(epochs) else None,
             "values": [_value_at(per_fold.get(k), i) for k in METRIC_KEYS]} for i in range(n)]
    summary = [(get(per_fold, f"{k}.mean"), get(per_fold, f"{k}.sd")) for k in METRIC_KEYS]
    return {"rows": rows, "summary": summary, "keys": METRIC_KEYS, "note": None}


def _value_at(block: dict | None, i: int) -> float | None:
    values = (block or {}).get("values") or []
    return values[i] if i < len(values) else None


def _recompute_folds(run: RunData) -> dict[str, dict]:
    from medtl.evaluate.metrics import per_fold_summary

    table = run.predictions
    folds = sorted(set(table.folds.tolist()))
    results = []
    for f in folds:
        mask = table.folds == f
        try:
            results.append(compute_metrics(table.labels[mask], table.probs[mask], run.positive_index, run.threshold))
        except MedtlError as exc:
            log.warning("fold %d: metrics not computed (%s)", f, exc)
            results.append({})
    return per_fold_summary(results)
