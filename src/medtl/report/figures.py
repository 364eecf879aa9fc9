"""The report's figures, drawn with matplotlib and returned as embedded PNG data URIs.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, so drawing a
report never touches pyplot's global state or the process-wide backend.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medtl.evaluate.calibration import ReliabilityCurve
from medtl.evaluate.curves import CurveBand

DPI = 110
_LINE_STYLES = {"train": "-", "val": "--"}


def _figure(nrows: int = 1, ncols: int = 1, width: float = 10.0, height: float = 3.6, **grid: Any):
    """A constrained-layout figure on an Agg canvas and its axes (2-D array)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid or None)
    return fig, axes


def to_data_uri(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def array_to_data_uri(image: np.ndarray) -> str:
    """A uint8 image (``H, W``, ``H, W, 1`` or ``H, W, 3``) as a PNG data URI."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def learning_curves(history: list[dict[str, str]]) -> str:
    """Loss, accuracy and AUC per epoch: one colour per fold, train solid, validation dashed."""
    from matplotlib.lines import Line2D

    fig, axes = _figure(1, 3, height=3.4)
    folds = sorted({r.get("fold", "0") for r in history}, key=lambda f: int(f) if f.isdigit() else f)
    panels = [("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy")),
              ("AUC", ("val_auc",))]
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for i, fold in enumerate(folds):
            rows = [r for r in history if r.get("fold", "0") == fold]
            epochs = [_float(r.get("epoch")) for r in rows]
            for key in keys:
                values = [_float(r.get(key)) for r in rows]
                if not all(math.isnan(v) for v in values):
                    ax.plot(epochs, values, _LINE_STYLES[key.split("_")[0]], color=f"C{i % 10}", lw=1.4)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{i % 10}", label=f"fold {f}") for i, f in enumerate(folds)]
    handles += [Line2D([], [], color="0.3", ls=ls, label=part) for part, ls in _LINE_STYLES.items()]
    axes[0][2].legend(handles=handles, fontsize=8, loc="lower right")
    return to_data_uri(fig)


def _band(ax: Any, band: CurveBand, color: str, label: str) -> None:
    if np.all(np.isfinite(band.lo)):
        ax.fill_between(band.grid, band.lo, band.hi, color=color, alpha=0.18, lw=0)
    if band.kind == "roc":
        ax.plot(band.x, band.y, color=color, lw=1.8, label=label)
    else:
        ax.plot(band.grid, band.y_grid, color=color, lw=1.8, label=label, drawstyle="steps-post")


def roc_pr(roc: dict[str, CurveBand], pr: dict[str, CurveBand],
           operating: tuple[float, float, float, float] | None = None) -> str:
    """ROC and precision-recall panels with bootstrap bands; the operating point as a marker.

    Args:
        roc: Curve per label (one for binary problems, one per class for one-vs-rest).
        pr: Curve per label.
        operating: (fpr, tpr, recall, precision) at the chosen threshold, or None.
    """
    fig, axes = _figure(1, 2, width=10.0, height=4.4)
    ax_roc, ax_pr = axes[0]
    for i, (label, band) in enumerate(roc.items()):
        ci = f" ({band.area_ci[0]:.3f}–{band.area_ci[1]:.3f})" if math.isfinite(band.area_ci[0]) else ""
        _band(ax_roc, band, f"C{i % 10}", f"{label}: AUC {band.area:.3f}{ci}")
    for i, (label, band) in enumerate(pr.items()):
        ci = f" ({band.area_ci[0]:.3f}–{band.area_ci[1]:.3f})" if math.isfinite(band.area_ci[0]) else ""
        _band(ax_pr, band, f"C{i % 10}", f"{label}: AP {band.area:.3f}{ci}")
        if len(pr) == 1:
            ax_pr.axhline(band.prevalence, color="0.5", ls=":", lw=1, label=f"prevalence {band.prevalence:.2f}")
    ax_roc.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    if operating is not None:
        ax_roc.plot(operating[0], operating[1], "o", color="black", ms=7, label="operating point")
        ax_pr.plot(operating[2], operating[3], "o", color="black", ms=7, label="operating point")
    labels = (("1 − specificity (FPR)", "sensitivity (TPR)", "ROC"),
              ("recall (sensitivity)", "precision", "Precision–recall"))
    for ax, (xl, yl, title) in zip((ax_roc, ax_pr), labels, strict=True):
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel=xl, ylabel=yl, title=title)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    return to_data_uri(fig)


def confusion(matrix: Sequence[Sequence[int]], class_names: list[str], title: str) -> str:
    """Confusion matrix heat map (rows true, columns predicted): counts and row percentages."""
    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = 1.2 + 0.9 * len(class_names)
    fig, axes = _figure(1, 1, width=side + 1.6, height=side)
    ax = axes[0][0]
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{int(count)}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                color="white" if share[i, j] > 0.6 else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30 if len(class_names) > 3 else 0, ha="right"
                  if len(class_names) > 3 else "center")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    return to_data_uri(fig)


def reliability(curves: list[tuple[str, ReliabilityCurve]]) -> str:
    """Reliability diagram (observed vs predicted per bin) above a histogram of the bin counts."""
    fig, axes = _figure(2, 1, width=5.6, height=6.0, height_ratios=[3, 1])
    top, bottom = axes[0][0], axes[1][0]
    top.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="perfect calibration")
    width = 1.0 / max(len(curves[0][1].counts), 1) / (len(curves) + 0.5)
    for i, (label, curve) in enumerate(curves):
        full = curve.counts > 0
        top.plot(curve.confidence[full], curve.observed[full], "o-", color=f"C{i}", lw=1.6, ms=4,
                 label=f"{label} (ECE {curve.ece:.3f})")
        centres = (curve.edges[:-1] + curve.edges[1:]) / 2 + (i - (len(curves) - 1) / 2) * width
        bottom.bar(centres, curve.counts, width=width, color=f"C{i}", alpha=0.8)
    kind = curves[0][1].kind
    xlabel = "predicted probability of the positive class" if kind == "positive" else "confidence (top label)"
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fraction positive" if kind == "positive" else "accuracy",
            title="Reliability diagram")
    top.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside upper center", ncols=2)
    bottom.set(xlim=(0, 1), xlabel=xlabel, ylabel="images")
    bottom.grid(alpha=0.3)
    return to_data_uri(fig)


def forest(rows: list[tuple[str, float, float, float]], metric: str, baseline: str | None) -> str:
    """Point estimate and 95% CI of ``metric`` per cell (one row each), the baseline in bold."""
    fig, axes = _figure(1, 1, width=8.0, height=0.9 + 0.32 * len(rows))
    ax = axes[0][0]
    for i, (label, value, lo, hi) in enumerate(rows):
        color = "C3" if label == baseline else "C0"
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot(value, i, "o", color=color)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    for tick in ax.get_yticklabels():
        if tick.get_text() == baseline:
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} (95% CI)", title=f"{metric} per cell")
    ax.grid(alpha=0.3, axis="x")
    return to_data_uri(fig)


def data_size_curves(series: dict[str, list[dict[str, float]]]) -> str:
    """AUC and accuracy against the training fraction, one line (with CI band) per series."""
    fig, axes = _figure(1, 2, height=3.8)
    for ax, metric in zip(axes[0], ("auc", "accuracy"), strict=True):
        for i, (label, points) in enumerate(series.items()):
            pts = sorted(points, key=lambda p: p["train_fraction"])
            x = [p["train_fraction"] for p in pts]
            y = [p.get(metric, math.nan) for p in pts]
            lo = [p.get(f"{metric}_lo", math.nan) for p in pts]
            hi = [p.get(f"{metric}_hi", math.nan) for p in pts]
            ax.plot(x, y, "o-", color=f"C{i % 10}", label=label)
            if all(math.isfinite(v) for v in lo + hi):
                ax.fill_between(x, lo, hi, color=f"C{i % 10}", alpha=0.15, lw=0)
        ax.set(xlabel="fraction of the training data", ylabel=metric, title=f"{metric} vs training data size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return to_data_uri(fig)
