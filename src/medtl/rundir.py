"""The run directory: every file a run writes is named here once, written atomically, and read back here.

A run directory holds::

    config.yaml            the resolved experiment config
    splits.csv             the split manifest (every fold, role and sample)
    history.csv            per-epoch training record (rewritten after each fold)
    predictions.csv        held-out (out-of-fold or test) predictions
    val_predictions.csv    validation predictions (the operating point is chosen on these)
    metrics.json           metrics with confidence intervals, protocol, data and model facts
    label_issues.csv       suspected label errors (an audit; the metrics keep the labels)
    adapt_targets.csv      domain adaptation (``adapt:``): the unlabelled target images each fold adapted to
    model/                 fold*.safetensors + model.json (see :mod:`medtl.artifact`)
    checkpoints/           while the run lasts: the last epoch checkpoint of the member in training and
                           the record of each finished member (``medtl train --resume`` continues from
                           them); removed when the run completes
    report.html            the HTML report
    model_card.md          the model card (``medtl card``; :mod:`medtl.report.card`), written after the run
    export/                exported inference graphs (``medtl export``; :mod:`medtl.export`), after the run
    run.log                the log of the run
    logs/                  TensorBoard event files or an MLflow store per fold member (``train.logger``)
    complete.json          written last: the run finished; lists the files it wrote

Every write goes to a temporary file in the same folder and is renamed into place, so a reader
never sees half a file. A directory without ``complete.json`` is unfinished: commands that need a
finished run refuse it, and ``medtl train`` refuses to write into it (it says how to start clean).

In a run of several processes only rank 0 creates and writes the run directory (so no process refuses
the folder rank 0 has just started); the others read its checkpoints through
``Checkpoints(..., writes=False)`` (:mod:`medtl.experiment`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medtl.errors import DataError, MedtlError
from medtl.evaluate.compare import Predictions, RunResult, compare_results, seed_rows
from medtl.evaluate.metrics import predict_classes

CONFIG = "config.yaml"
SPLITS = "splits.csv"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
VAL_PREDICTIONS = "val_predictions.csv"
METRICS = "metrics.json"
LABEL_ISSUES = "label_issues.csv"
REPORT = "report.html"
LOG = "run.log"
MODEL_DIR = "model"
MODEL_META = f"{MODEL_DIR}/model.json"
STAGES = "stages"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
COMPLETE = "complete.json"
MODEL_CARD = "model_card.md"
EXPORT_DIR = "export"
ADAPT_TARGETS = "adapt_targets.csv"

State = Literal["absent", "empty", "unfinished", "complete", "not_a_folder"]
HISTORY_COLUMNS = ["fold", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr"]
OPTIONAL_HISTORY_COLUMNS = ["domain_loss"]
"""History columns written when some row has them (``domain_loss``: DANN / CORAL, ``adapt:``)."""
ADAPT_TARGET_COLUMNS = ["fold", "id", "path"]


# ---------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` that is renamed onto it when the block succeeds.

    A block that writes nothing to the temporary path leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN refused: JSON has none)."""
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False))


def write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[Any]] | list[Sequence[Any]]) -> Path:
    """Write a CSV with ``header`` and ``rows`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


# ---------------------------------------------------------------- state


def state(run_dir: Path) -> State:
    """What ``run_dir`` is: absent, an empty folder, an unfinished run, a finished run, or not a folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "absent"
    if not run_dir.is_dir():
        return "not_a_folder"
    if (run_dir / COMPLETE).is_file():
        return "complete"
    return "unfinished" if any(run_dir.iterdir()) else "empty"


def create(run_dir: Path, option: str = "--out", resume: bool = False, config: str | None = None) -> Path:
    """Make ``run_dir`` for a new run, or reopen an unfinished one to resume it.

    Args:
        run_dir: The run directory.
        option: How the user named it (for messages).
        resume: Continue an unfinished run in ``run_dir`` (an absent or empty one simply starts).
        config: The resolved config text; a resumed run must have been started with exactly this config.

    Raises:
        MedtlError: ``run_dir`` is a file or holds a finished run; it holds an unfinished run and
            ``resume`` is off (the message says how to resume or start clean); or the unfinished run was
            started with another config.
    """
    run_dir = Path(run_dir)
    now = state(run_dir)
    if now == "not_a_folder":
        raise MedtlError(f"{option} {run_dir} is a file, not a folder; choose a folder for the run directory")
    if now == "complete":
        raise MedtlError(f"{run_dir} already holds a finished run; choose another {option}")
    if now == "unfinished" and not resume:
        raise MedtlError(f"{run_dir} holds an unfinished run (no {COMPLETE}: it was interrupted or failed); "
                         f"add --resume to continue it, or delete the folder to start clean, or choose another "
                         f"{option}")
    if now == "unfinished" and config is not None:
        stored = run_dir / CONFIG
        if not stored.is_file() or stored.read_text(encoding="utf-8") != config:
            raise MedtlError(f"{run_dir}: cannot resume: the unfinished run was started with another config "
                             f"(compare {stored} with your YAML and --set values); resume with the same config, "
                             "or delete the folder to start clean")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def mark_complete(run_dir: Path) -> Path:
    """Write ``complete.json`` (the files of the run with their sizes), last of all."""
    run_dir = Path(run_dir)
    files = {str(p.relative_to(run_dir)): p.stat().st_size for p in sorted(run_dir.rglob("*"))
             if p.is_file() and p.name != COMPLETE and not p.name.startswith(".")}
    return write_json(run_dir / COMPLETE, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files})


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its completion marker exists)."""
    return state(run_dir) == "complete"


def require_complete(run_dir: Path) -> Path:
    """``run_dir`` when it holds a finished run.

    Raises:
        MedtlError: Missing, not a folder, or unfinished (no ``complete.json``).
    """
    run_dir = Path(run_dir)
    now = state(run_dir)
    if now == "complete":
        return run_dir
    if now in ("absent", "not_a_folder"):
        raise MedtlError(f"{run_dir}: no such run directory")
    if not (run_dir / MODEL_META).is_file() and not (run_dir / CONFIG).is_file():
        raise MedtlError(f"{run_dir} is not a medtl run directory (no {MODEL_META}, no {COMPLETE}); give the --out "
                         "folder of a finished medtl train run")
    raise MedtlError(f"{run_dir} is not a finished run: no {COMPLETE} (the run was interrupted, failed, or is "
                     "still running); train it again with medtl train")


# ---------------------------------------------------------------- readers


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a run, or a DataError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); re-run the experiment") from None


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` of a finished run."""
    return read_json(require_complete(run_dir) / METRICS)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV of a run as dicts ([] when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def class_info(run_dir: Path, metrics: dict[str, Any] | None = None) -> tuple[list[str] | None, int | None]:
    """Class names and positive index from ``model/model.json``, else from ``metrics.json``."""
    meta = Path(run_dir) / MODEL_META
    if meta.is_file():
        model = read_json(meta)
        return model.get("class_names"), model.get("positive_index")
    metrics = metrics or {}
    names = metrics.get("class_names")
    positive = metrics.get("positive_class")
    return names, names.index(positive) if names and positive in names else None


def read_predictions(path: Path, info: tuple[list[str] | None, int | None] = (None, None),
                     need_pred: bool = False) -> Predictions:
    """Parse ``predictions.csv`` or ``val_predictions.csv``: the one reader of both.

    Args:
        path: The CSV file.
        info: (class names, positive index) of the run; names default to the ``prob_`` columns.
        need_pred: The ``pred`` column (the run's decisions) must be there (paired accuracy tests).

    Raises:
        DataError: The file is missing, a needed column is missing or a value cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found; is the run finished?")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    names = info[0] or [c[len("prob_"):] for c in header if c.startswith("prob_")]
    needed = ["id", "label", *(["pred"] if need_pred else []), *[f"prob_{n}" for n in names]]
    missing = [c for c in needed if c not in header]
    if missing or len(names) < 2:
        raise DataError(f"{path}: columns {missing or ['prob_<class>']} missing; expected {needed}")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows], dtype=float).reshape(-1, len(names))
        folds = np.array([int(r["fold"]) if r.get("fold") not in (None, "") else 0 for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: unreadable label, fold or probability ({exc})") from None
    positive = info[1] if len(names) == 2 else None
    return Predictions(ids=[r["id"] for r in rows], labels=labels, probs=probs,
                       pred=np.array([r.get("pred", "") for r in rows], dtype=object),
                       class_names=list(names), positive_index=positive, paths=[r.get("path", "") for r in rows],
                       folds=folds, groups=[r.get("group", "") for r in rows])


def load_result(run_dir: str | Path, name: str | None = None) -> RunResult:
    """Metrics and (when present) held-out predictions of a finished run, for comparisons.

    Raises:
        DataError: The run is not finished, or ``metrics.json`` / ``predictions.csv`` is unreadable.
    """
    run_dir = Path(run_dir)
    if not is_complete(run_dir):
        raise DataError(f"{run_dir / METRICS} not found: {run_dir} is not a finished run (no {COMPLETE}); "
                        "train it with medtl train")
    metrics = read_json(run_dir / METRICS)
    preds = run_dir / PREDICTIONS
    predictions = read_predictions(preds, class_info(run_dir, metrics), need_pred=True) if preds.is_file() else None
    return RunResult(name or run_dir.name, run_dir, metrics, predictions)


def compare_runs(run_dirs: Sequence[str | Path], baseline: str | Path | None = None,
                 names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """:func:`medtl.evaluate.compare.compare_results` of finished run directories.

    Args:
        run_dirs: Finished run directories.
        baseline: The run to test against; default the first of ``run_dirs``. When it is not one of
            ``run_dirs`` it is added as the first row.
        names: Display names, one per run directory (default: the directory names).

    Raises:
        DataError: When a run directory is not a finished run.
    """
    dirs = [Path(d) for d in run_dirs]
    labels = list(names) if names is not None else [d.name for d in dirs]
    if len(labels) != len(dirs):
        raise DataError(f"compare_runs: {len(labels)} names for {len(dirs)} run directories")
    base_dir = Path(baseline) if baseline is not None else (dirs[0] if dirs else None)
    if base_dir is None:
        return []
    if not any(_same_dir(base_dir, d) for d in dirs):
        dirs, labels = [base_dir, *dirs], [base_dir.name, *labels]
    runs = [load_result(d, n) for d, n in zip(dirs, labels, strict=True)]
    base = next(r for r in runs if _same_dir(r.run_dir, base_dir))
    return compare_results(runs, base)


def compare_seed_groups(groups: Sequence[Sequence[str | Path]]) -> list[dict[str, Any]]:
    """:func:`medtl.evaluate.compare.seed_rows` of groups of finished runs, one group per configuration.

    Each group lists one run per seed, in the same seed order in every group; the first group is the
    baseline. A group is named by the common prefix of its directory names (else ``group<k>``).

    Raises:
        DataError: A run is not finished, a group is empty, or the groups differ in size.
    """
    loaded = []
    for k, group in enumerate(groups):
        dirs = [Path(d) for d in group]
        if not dirs:
            raise DataError(f"--group {k + 1} names no run directory")
        loaded.append((_group_name([d.name for d in dirs], k), [load_result(d) for d in dirs]))
    sizes = {len(runs) for _, runs in loaded}
    if len(sizes) > 1:
        raise DataError(f"the groups hold {', '.join(str(len(r)) for _, r in loaded)} runs; a paired test over seeds "
                        "needs one run per seed, the same seeds in every group")
    return seed_rows(loaded)


def _group_name(names: list[str], index: int) -> str:
    prefix = os.path.commonprefix(names).rstrip("-_.")
    return prefix if prefix and len(names) > 1 else (names[0] if len(names) == 1 else f"group{index + 1}")


def _same_dir(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# ---------------------------------------------------------------- writers of the run's tables


def prediction_rows(ids: Sequence[str], paths: Sequence[str], folds: Sequence[int], labels: np.ndarray,
                    groups: Sequence[str], probs: np.ndarray, class_names: Sequence[str], positive_index: int | None,
                    threshold: float) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``predictions.csv``: one row per (fold, image), the decision at ``threshold``."""
    header = ["id", "path", "fold", "label", "class_name", "group", *[f"prob_{n}" for n in class_names], "pred"]
    pred = predict_classes(probs, positive_index, threshold) if len(probs) else []
    rows = [[i, p, f, int(y), class_names[y], g, *[f"{v:.9g}" for v in pr], class_names[k]]
            for i, p, f, y, g, pr, k in zip(ids, paths, folds, labels, groups, probs, pred, strict=True)]
    return header, rows


def write_predictions(run_dir: Path, which: Literal["test", "val"], header: list[str], rows: list[list[Any]]) -> Path:
    """Write ``predictions.csv`` (``which='test'``) or ``val_predictions.csv``."""
    return write_csv(Path(run_dir) / (PREDICTIONS if which == "test" else VAL_PREDICTIONS), header, rows)


def write_history(run_dir: Path, rows: list[dict[str, Any]], ensemble: bool) -> Path:
    """Write ``history.csv``: per-epoch rows (``fold`` first; a ``member`` column for ensembles)."""
    keys = [*HISTORY_COLUMNS, *[k for k in OPTIONAL_HISTORY_COLUMNS if any(k in row for row in rows)]]
    keys += ["member"] if ensemble else []
    return write_csv(Path(run_dir) / HISTORY, keys, [[row.get(k, "") for k in keys] for row in rows])


def write_adapt_targets(run_dir: Path, rows: Sequence[tuple[int, str, str]]) -> Path:
    """Write ``adapt_targets.csv``: ``(fold, id, path)`` of every unlabelled image a fold adapted to."""
    return write_csv(Path(run_dir) / ADAPT_TARGETS, ADAPT_TARGET_COLUMNS, [list(r) for r in rows])


# ---------------------------------------------------------------- resuming


class Checkpoints:
    """The ``checkpoints/`` folder of an unfinished run (a :class:`medtl.train.fold.MemberStore`).

    ``writes=False``: a reader only (the other processes of a multi-process run read what rank 0 keeps;
    recording and the live history are rank 0's).
    """

    def __init__(self, run_dir: Path, ensemble: bool = False, writes: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINTS
        self.ensemble = ensemble
        self.writes = writes

    def _stem(self, fold: int, member: int) -> str:
        return f"fold{fold}-m{member}"

    def epoch_checkpoint(self, fold: int, member: int) -> Path:
        """The checkpoint a member in training writes after each epoch."""
        return self.root / f"{self._stem(fold, member)}.ckpt"

    def finished(self, fold: int, member: int) -> dict[str, Any] | None:
        """The record of a finished member with its model path and predictions; None when it did not finish."""
        meta, arrays = self.root / f"{self._stem(fold, member)}.json", self.root / f"{self._stem(fold, member)}.npz"
        if not meta.is_file() or not arrays.is_file():
            return None
        record = json.loads(meta.read_text(encoding="utf-8"))
        model_path = self.run_dir / MODEL_DIR / record["file"]
        if not model_path.is_file():
            return None
        with np.load(arrays) as saved:
            return record | {"model_path": model_path, "test": saved["test"], "val": saved["val"]}

    def record(self, fold: int, member: int, file: str, result: Any, test: np.ndarray, val: np.ndarray) -> None:
        """Keep a finished member (predictions first, then the record, which marks it finished)."""
        if not self.writes:
            return
        stem = self._stem(fold, member)
        with atomic_path(self.root / f"{stem}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, test=test, val=val)
        record = {"file": file, "history": result.history, "best_epoch": result.best_epoch,
                  "best_score": result.best_score, "stopped_early": result.stopped_early}
        write_text(self.root / f"{stem}.json", json.dumps(record))
        self.epoch_checkpoint(fold, member).unlink(missing_ok=True)

    def live_history(self, fold: int, member: int, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``history.csv``: every finished member's epochs, then the member in training's so far."""
        if not self.writes:
            return
        done = []
        for meta in self.root.glob("fold*-m*.json"):
            f, m = (int(x) for x in meta.stem.removeprefix("fold").split("-m"))
            if (f, m) != (fold, member):
                done += [{"fold": f, **row, "member": m} for row in json.loads(meta.read_text())["history"]]
        done.sort(key=lambda r: (r["fold"], r["member"], r["epoch"]))
        write_history(self.run_dir, [*done, *({"fold": fold, **row, "member": member} for row in rows)],
                      self.ensemble)

    def clear(self) -> None:
        """Remove the folder (the run is complete)."""
        shutil.rmtree(self.root, ignore_errors=True)
