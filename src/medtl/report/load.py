"""Read what a report shows: the files of a run directory or of a study directory.

Every file is optional except the one that identifies the directory; a missing file leaves its
field empty (None, ``{}`` or ``[]``) and the report says so in the section that needed it.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from medtl import rundir
from medtl.errors import DataError
from medtl.evaluate.compare import Predictions as PredictionTable
from medtl.rundir import read_rows

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """Everything in a run directory that a report uses."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    splits: list[dict[str, str]] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    predictions: PredictionTable | None = None
    val_predictions: PredictionTable | None = None
    log_lines: list[str] = field(default_factory=list)
    label_issues: list[dict[str, str]] = field(default_factory=list)
    """Rows of label_issues.csv (suspected label errors, worst first)."""

    @property
    def name(self) -> str:
        """The experiment's name (config), else the directory's."""
        return str(self.metrics.get("name") or self.config.get("name") or self.path.name)

    @property
    def class_names(self) -> list[str]:
        """Class names from ``model.json``, else ``metrics.json``."""
        return list(self.model.get("class_names") or self.metrics.get("class_names") or [])

    @property
    def positive_index(self) -> int | None:
        """Positive class of a binary run (None for multiclass)."""
        if len(self.class_names) != 2:
            return None
        if "positive_index" in self.model:
            return self.model["positive_index"]
        positive = self.metrics.get("positive_class")
        return self.class_names.index(positive) if positive in self.class_names else 1

    @property
    def threshold(self) -> float:
        """The operating threshold of the model artifact (0.5 when nothing says otherwise)."""
        for source in (self.model, self.metrics):
            if isinstance(source.get("threshold"), int | float):
                return float(source["threshold"])
        return 0.5

    @property
    def temperature(self) -> float | None:
        """The fitted temperature of ``model.json`` (None when none was fitted)."""
        value = self.model.get("temperature")
        return float(value) if isinstance(value, int | float) else None


@dataclass
class StudyData:
    """Everything in a study directory that a report uses."""

    path: Path
    name: str
    baseline: str | None
    axes: list[str]
    cells: list[dict[str, Any]]
    comparison: list[dict[str, str]]
    learning_curve: list[dict[str, str]] | None


def is_study_dir(path: Path) -> bool:
    """True when ``path`` holds a ``study.json``."""
    return (Path(path) / "study.json").is_file()


def is_run_dir(path: Path) -> bool:
    """True when ``path`` holds the results of a run (metrics, predictions or a model)."""
    path = Path(path)
    return any((path / name).is_file() for name in (rundir.METRICS, rundir.PREDICTIONS, rundir.MODEL_META))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); was the run interrupted while writing it?") from None


def read_predictions(path: Path, class_names: list[str]) -> PredictionTable | None:
    """A predictions CSV through :func:`medtl.rundir.read_predictions`; None when the file does not exist.

    Rows without a group count as their own group (each image alone).
    """
    if not path.is_file():
        return None
    table = rundir.read_predictions(path, (class_names or None, None))
    return replace(table, groups=[g or i for g, i in zip(table.groups, table.ids, strict=True)])


def _class_names_from(rows_path: Path) -> list[str]:
    """Class names from the ``prob_<class>`` columns of a predictions file."""
    with open(rows_path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return [c[len("prob_"):] for c in header if c.startswith("prob_")]


def load_run(path: Path) -> RunData:
    """Read a run directory (files that are missing stay empty).

    Raises:
        DataError: ``path`` is not a run directory, or a file is malformed.
    """
    path = Path(path)
    if not is_run_dir(path):
        raise DataError(f"{path}: not a medtl run directory (no metrics.json, predictions.csv or model/model.json)")
    run = RunData(path=path, metrics=_read_json(path / rundir.METRICS), model=_read_json(path / rundir.MODEL_META))
    if (path / rundir.CONFIG).is_file():
        run.config = yaml.safe_load((path / rundir.CONFIG).read_text(encoding="utf-8")) or {}
    run.splits = read_rows(path / rundir.SPLITS)
    run.label_issues = read_rows(path / rundir.LABEL_ISSUES)
    # Learning curves show one model per fold: member 0 of a fold's ensemble (train.ensemble).
    run.history = [r for r in read_rows(path / rundir.HISTORY) if r.get("member", "0") in ("0", "")]
    names = run.class_names or (_class_names_from(path / rundir.PREDICTIONS)
                                if (path / rundir.PREDICTIONS).is_file() else [])
    if not run.class_names and names:
        run.metrics.setdefault("class_names", names)
    run.predictions = read_predictions(path / rundir.PREDICTIONS, names)
    run.val_predictions = read_predictions(path / rundir.VAL_PREDICTIONS, names)
    if (path / rundir.LOG).is_file():
        run.log_lines = (path / rundir.LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    return run


def load_study(path: Path) -> StudyData:
    """Read a study directory (``study.json``, ``comparison.csv``, ``learning_curve.csv``).

    Raises:
        DataError: ``study.json`` is missing or malformed.
    """
    path = Path(path)
    state = _read_json(path / "study.json")
    if not state:
        raise DataError(f"{path}: no study.json; is this a study directory (medtl study)?")
    cells = state.get("cells") or []
    axes = state.get("axes") or list(dict.fromkeys(a for c in cells for a in (c.get("axes") or {})))
    curve = path / "learning_curve.csv"
    return StudyData(path=path, name=str(state.get("name") or path.name), baseline=state.get("baseline"),
                     axes=list(axes), cells=cells, comparison=read_rows(path / "comparison.csv"),
                     learning_curve=read_rows(curve) if curve.is_file() else None)
