"""Terminal tables of results (rich), shared by the CLI commands and the demo."""

from __future__ import annotations

from rich.table import Table

METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")


def adaptation_note(metrics: dict) -> str | None:
    """The protocol statement of a domain-adapted run (``protocol.adaptation`` in metrics.json), e.g.
    ``transductive: unlabelled target images used for adaptation (coral, target test)``; None otherwise."""
    adaptation = (metrics.get("protocol") or {}).get("adaptation")
    if not adaptation:
        return None
    return f"{adaptation['statement']} ({adaptation['method']}, target {adaptation['target']})"


def adaptation_caption(results: list[tuple[str, dict]]) -> str | None:
    """One line per adapted run (``name: statement``); None when no run was adapted."""
    notes = [f"{name}: {note}" for name, m in results if (note := adaptation_note(m))]
    return "\n".join(notes) if notes else None


def format_value(entry: dict | None) -> str:
    """``0.953 (0.921–0.977)`` from a metrics.json entry ``{"value": v, "ci95": [lo, hi]}``."""
    if not entry or entry.get("value") is None:
        return "n/a"
    lo, hi = entry.get("ci95") or (None, None)
    ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{entry['value']:.3f}{ci}"


def metrics_table(results: list[tuple[str, dict]], title: str = "Results (95% CI)") -> Table:
    """One row per run: name, n, and each metric with its bootstrap CI."""
    table = Table(title=title, caption=adaptation_caption(results))
    table.add_column("run")
    table.add_column("n", justify="right")
    for name in METRICS:
        table.add_column(name, justify="right")
    for name, metrics in results:
        table.add_row(name, str(metrics.get("n", "")), *[format_value(metrics.get(m)) for m in METRICS])
    return table


def markdown_table(results: list[tuple[str, dict]]) -> str:
    """The same table in Markdown (for docs/results.md)."""
    head = "| run | n | " + " | ".join(METRICS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRICS)
    rows = [f"| {name} | {m.get('n', '')} | " + " | ".join(format_value(m.get(k)) for k in METRICS) + " |"
            for name, m in results]
    caption = adaptation_caption(results)
    return "\n".join([head, rule, *rows, *(["", caption] if caption else [])])
