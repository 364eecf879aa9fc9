"""``medtl tune``: hyperparameter search on Optuna that reports what the search itself was worth.

An experiment YAML gains a ``search:`` block, config key → distribution::

    search:
      train.lr: {loguniform: [0.0001, 0.01]}
      model.head.dropout: {uniform: [0.0, 0.5]}
      train.epochs: {int: [3, 10]}
      transfer.unfreeze_from: {choice: [blocks.4, blocks.5, blocks.6]}

**Nested** (the default): for each outer fold of ``data.split`` an Optuna study (one per outer fold,
named ``<name>-outer<k>``) runs trials whose configurations train on *inner* folds carved from that
outer fold's training part only (:func:`inner_folds`: the same patient/duplicate groups, no group in
two inner roles), scored by their mean inner held-out AUC. The best configuration is refitted on the
outer fold's train/val part and scored once on its test fold. The pooled outer test predictions are
the honest estimate; ``tune.json`` gives per outer fold the chosen configuration, the best inner
score and the outer score, and the optimism (mean best inner AUC − pooled outer AUC).

**Flat** (``nest=False``): one study whose trials train on the outer folds themselves and are scored on
their test folds; the reported figure is selected on the same folds, so it is optimistic, and the
report and ``metrics.json`` say so.

Pruning: each epoch's validation AUC is reported to the trial (step = inner fold × epochs + epoch) and
Optuna's MedianPruner stops bad trials. Storage: ``sqlite:///DIR/optuna.db`` by default, any Optuna RDB
URL, or ``journal:PATH`` (a journal file, safe for several worker processes); a search continues from
its storage: finished (complete or pruned) trials count towards ``trials`` and are never run again.
Images are decoded once per tune; frozen-feature banks are shared between trials of one backbone, and
the frozen-prefix cache is shared on disk (keyed by the config).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from rich.table import Table

from medtl import artifact, rundir
from medtl.config import (
    ExperimentConfig,
    SplitConfig,
    apply_override,
    dump_config,
    parse_config,
    read_yaml,
    resolve_paths,
    set_dotted,
)
from medtl.data.splits import Fold, make_folds, write_manifest
from medtl.errors import ConfigError, DataError, MedtlError, RunInterrupted
from medtl.evaluate.metrics import compute_metrics
from medtl.experiment import PreparedData, RunLog, check_weights, conclude, prepare_data
from medtl.train.device import resolve_device
from medtl.train.fold import FoldOutcome, FoldTrainer

log = logging.getLogger(__name__)

KINDS = ("loguniform", "uniform", "int", "choice")
"""The distributions of a ``search:`` entry."""
SAMPLERS = ("tpe", "random", "grid")
TUNE_JSON = "tune.json"
SEARCH_JSON = "search.json"
DEFAULT_DB = "optuna.db"
OPTIMISTIC = ("optimistic: flat search (--no-nest): the configuration was selected on the same test folds that "
              "give this figure, so it overstates what the chosen configuration achieves on new data; run "
              "medtl tune without --no-nest for an unbiased (nested) estimate")
# Keys that change the data (decoded once per tune), the folds, or the network's shape (every outer
# fold's model must load with one model.json) cannot be searched.
_FIXED = ("data.", "model.backbone", "model.weights", "model.head.hidden", "transfer.truncate_at", "stages",
          "name", "evaluate.", "train.ensemble", "train.device", "train.seed")
_AUGMENT = "data.augment."


# --------------------------------------------------------------------------- the search block


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.values[0]), int(self.values[1]))
        return trial.suggest_float(self.key, float(self.values[0]), float(self.values[1]),
                                   log=self.kind == "loguniform")

    def extremes(self) -> list[Any]:
        """Values that validate the key and its range against the config schema."""
        return list(self.values)


@dataclass(frozen=True)
class TuneSpec:
    """A validated tune file: the base config (YAML tree and parsed) and the searched parameters."""

    base: ExperimentConfig
    tree: dict[str, Any]
    params: list[Param]
    source: str
    config_dir: Path

    def config(self, values: dict[str, Any]) -> ExperimentConfig:
        """The base config with the searched keys set to ``values``."""
        tree = json.loads(json.dumps(self.tree))
        for key, value in values.items():
            set_dotted(tree, key, value, f"{self.source}: search", merge=False)
        return resolve_paths(parse_config(tree, f"{self.source} (search values {values})"), self.config_dir)

    def search_json(self) -> dict[str, Any]:
        """The search block as stored next to the run (compared when a search is continued)."""
        return {p.key: {p.kind: list(p.values)} for p in self.params}


def load_tune(path: str | Path, overrides: list[str] | None = None) -> TuneSpec:
    """Read an experiment YAML with a ``search:`` block; validate every searched key and value.

    Raises:
        ConfigError: The file is missing or invalid, it has no ``search:`` block, a distribution is
            malformed, a key is not in the config schema (did-you-mean), cannot be searched, or one of
            its values (a bound, a choice) is invalid for that key.
    """
    path = Path(path)
    tree = read_yaml(path, "config file")
    if not isinstance(tree, dict) or "search" not in tree:
        raise ConfigError(f"{path}: no 'search:' block; add one mapping config keys to distributions, e.g. "
                          "search: {train.lr: {loguniform: [0.0001, 0.01]}}")
    search = tree.pop("search")
    for assignment in overrides or []:
        apply_override(tree, assignment)
    base = resolve_paths(parse_config(tree, str(path)), path.parent)
    params = parse_search(search, str(path))
    spec = TuneSpec(base, tree, params, str(path), path.parent)
    for param in params:
        _check_values(spec, param)
    return spec


def parse_search(search: Any, source: str) -> list[Param]:
    """The ``search:`` block as :class:`Param` objects (shape and bounds checked; keys not yet).

    Raises:
        ConfigError: Naming the key, what is wrong and an example of a valid entry.
    """
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{source}: 'search' must be a non-empty mapping of config keys to distributions, e.g. "
                          "search: {train.lr: {loguniform: [0.0001, 0.01]}}")
    return [_parse_param(str(key), spec, source) for key, spec in search.items()]


def _parse_param(key: str, spec: Any, source: str) -> Param:
    where = f"{source}: search.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution, e.g. {{loguniform: [0.0001, 0.01]}}; "
                          f"choose one of {', '.join(KINDS)}")
    kind, values = next(iter(spec.items()))
    if kind not in KINDS:
        hint = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.4)
        raise ConfigError(f"{where}: unknown distribution '{kind}'." + (f" Did you mean '{hint[0]}'?" if hint else "")
                          + f" Choose one of: {', '.join(KINDS)}")
    _check_key(key, where)
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice needs a non-empty list of values, e.g. {{choice: [0.1, 0.3]}}")
        return Param(key, kind, tuple(values))
    return Param(key, kind, _bounds(kind, values, where))


def _bounds(kind: str, values: Any, where: str) -> tuple[Any, Any]:
    numbers = isinstance(values, list) and len(values) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numbers:
        raise ConfigError(f"{where}: {kind} needs two numbers [low, high], e.g. {{{kind}: [0.0001, 0.01]}}")
    lo, hi = values
    if not lo < hi:
        raise ConfigError(f"{where}: {kind} bounds [{lo}, {hi}]: low must be below high")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform bounds must be positive (got low {lo}); use uniform for ranges "
                          "that include 0")
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise ConfigError(f"{where}: int bounds must be whole numbers (got [{lo}, {hi}])")
    return lo, hi


def _check_key(key: str, where: str) -> None:
    fixed = next((f for f in _FIXED if key == f.rstrip(".") or key.startswith(f)), None)
    if fixed is not None and not key.startswith(_AUGMENT):
        raise ConfigError(f"{where}: '{key}' cannot be searched: images are decoded and split once per tune, and "
                          "every outer fold's model must share one architecture and evaluation; search training, "
                          "transfer, head (dropout) or data.augment keys, and run one tune per value of this key")


def _check_values(spec: TuneSpec, param: Param) -> None:
    """Each bound / choice set into the base config must validate (this also checks the key exists)."""
    for value in param.extremes():
        tree = json.loads(json.dumps(spec.tree))
        set_dotted(tree, param.key, value, f"{spec.source}: search.{param.key}", merge=False)
        try:
            parse_config(tree, f"{spec.source}: search.{param.key} = {value!r}")
        except ConfigError as exc:
            raise ConfigError(f"search key '{param.key}' (value {value!r}) is not valid here:\n{exc}") from None


# --------------------------------------------------------------------------- folds


def inner_folds(data: PreparedData, outer: Fold, n_folds: int, split: SplitConfig) -> list[Fold]:
    """Inner folds carved from the outer fold's training part (train + val), grouped like the outer folds.

    Built by :func:`medtl.data.splits.make_folds` on that part (k-fold, the run's split seed and
    validation fraction, checked there by :func:`~medtl.data.splits.check_folds`), so no patient/duplicate
    group is in two inner roles; and asserted here never to touch the outer test fold.

    Raises:
        DataError: Too few groups for ``n_folds`` inner folds (the message names ``--inner-folds``).
    """
    part = np.sort(np.concatenate([outer.train, outer.val]))
    inner_split = split.model_copy(update={"method": "kfold", "folds": n_folds})
    groups = [data.groups[i] for i in part]
    try:
        folds = make_folds(data.labels[part], groups, [None] * len(part), inner_split,
                           class_names=data.class_names)
    except DataError as exc:
        raise DataError(f"outer fold {outer.index}: cannot carve {n_folds} inner folds from its training part "
                        f"({exc}); lower --inner-folds or add data") from None
    mapped = [Fold(f.index, part[f.train], part[f.val], part[f.test]) for f in folds]
    outer_groups = {data.groups[i] for i in outer.test}
    for fold in mapped:
        inside = {data.groups[i] for role in (fold.train, fold.val, fold.test) for i in role}
        assert not inside & outer_groups, f"inner fold {fold.index} shares a group with outer test {outer.index}"
    return mapped


# --------------------------------------------------------------------------- storage


def storage_url(storage: str | None, out_dir: Path) -> str:
    """The storage of a search: ``--storage`` as given, else the SQLite file in the run directory."""
    return storage or f"sqlite:///{(Path(out_dir) / DEFAULT_DB).resolve()}"


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url`` (``journal:PATH`` → a journal file; else an RDB URL).

    Raises:
        ConfigError: The storage cannot be opened (the message names ``--storage`` and the URL).
    """
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url[len("journal:"):]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except (ImportError, ValueError, OSError) as exc:
        raise ConfigError(f"--storage {redact(url)}: cannot open it ({type(exc).__name__}: {exc}); give "
                          "sqlite:///PATH.db, an Optuna RDB URL (postgresql://user@host/db) or journal:PATH") from None
    except Exception as exc:  # SQLAlchemy's errors (no server, bad driver) have no common base in optuna
        if type(exc).__module__.startswith("sqlalchemy"):
            raise ConfigError(f"--storage {redact(url)}: cannot open it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})") from None
        raise


def _engine_kwargs(url: str) -> dict[str, Any]:
    # Several worker processes on one SQLite file: wait for the lock instead of failing at once.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def redact(url: str) -> str:
    """``url`` without a password (``postgresql://user:***@host/db``)."""
    return re.sub(r"//([^:/@]+):[^@/]+@", r"//\1:***@", url)


# --------------------------------------------------------------------------- trials


class PruningReport(L.Callback):
    """Reports each epoch's validation AUC to an Optuna trial; raises ``TrialPruned`` when it should stop."""

    def __init__(self, trial: Any, offset: int) -> None:
        self.trial, self.offset = trial, offset

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        import optuna

        if trainer.sanity_checking or "val_auc" not in trainer.callback_metrics:
            return
        step = self.offset + trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics["val_auc"]), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {trainer.current_epoch}: validation AUC below the median of earlier "
                                     "trials")


@dataclass
class Tuner:
    """What the trials of one tune share: decoded data, frozen-feature banks, the scratch folder."""

    spec: TuneSpec
    data: PreparedData
    scratch: Path
    progress: bool = False
    banks: dict[tuple, Any] = field(default_factory=dict)

    def trainer(self, cfg: ExperimentConfig, out_dir: Path, callbacks: list[L.Callback] | None = None) -> FoldTrainer:
        """A fold trainer for ``cfg``; a frozen-feature bank of the same backbone is shared, not recomputed."""
        return FoldTrainer(cfg, self.data, out_dir, self.progress, resolve_device(cfg.train.device),
                           bank=self.banks.get(_bank_key(cfg)), callbacks=callbacks or [])

    def keep_bank(self, cfg: ExperimentConfig, trainer: FoldTrainer) -> None:
        """Remember the trainer's frozen-feature bank for later trials of the same backbone."""
        if trainer.bank is not None:
            self.banks[_bank_key(cfg)] = trainer.bank

    def score(self, cfg: ExperimentConfig, folds: list[Fold], trial: Any) -> list[float]:
        """Train ``cfg`` on each fold (pruning from per-epoch validation AUC); the AUC of each fold's test part."""
        aucs = []
        for k, fold in enumerate(folds):
            trainer = self.trainer(cfg, self.scratch, [PruningReport(trial, k * cfg.train.epochs)])
            outcome = trainer.train_fold(fold, lambda *_: "")
            self.keep_bank(cfg, trainer)
            aucs.append(fold_auc(self.data, outcome))
        return aucs

    def objective(self, folds: list[Fold]) -> Any:
        """The Optuna objective: a trial's configuration scored by its mean AUC over ``folds``."""
        def run(trial: Any) -> float:
            values = {p.key: p.suggest(trial) for p in self.spec.params}
            cfg = self.spec.config(values)
            trial.set_user_attr("worker", os.getpid())
            aucs = self.score(cfg, folds, trial)
            trial.set_user_attr("fold_aucs", aucs)
            mean = float(np.mean(aucs))
            log.info("trial %d %s: AUC %s (mean %.4f)", trial.number, values, [round(a, 4) for a in aucs], mean)
            return mean if math.isfinite(mean) else 0.0
        return run


def _bank_key(cfg: ExperimentConfig) -> tuple:
    """What a frozen-feature bank depends on (the images are the tune's, decoded once)."""
    return cfg.model.backbone, cfg.model.weights, cfg.evaluate.tta, cfg.train.fast_inference


def fold_auc(data: PreparedData, outcome: FoldOutcome) -> float:
    """AUC (macro for several classes) of a fold's test predictions; NaN when undefined."""
    metrics = compute_metrics(data.labels[outcome.fold.test], outcome.probs, data.positive_index, 0.5)
    return float(metrics.get("auc", math.nan))


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class TuneOptions:
    """How to search: trials per study, seconds per study, storage, sampler, nesting, inner folds."""

    trials: int = 20
    timeout: float | None = None
    storage: str | None = None
    sampler: str = "tpe"
    nest: bool = True
    inner_folds: int = 3


def make_sampler(name: str, params: list[Param], seed: int) -> Any:
    """The Optuna sampler: TPE (default), random, or grid (``choice`` and ``int`` entries only).

    Raises:
        ConfigError: Unknown sampler (did-you-mean), or grid over a continuous distribution.
    """
    import optuna

    if name not in SAMPLERS:
        hint = difflib.get_close_matches(name, SAMPLERS, n=1, cutoff=0.4)
        raise ConfigError(f"--sampler '{name}' is not a valid option." + (f" Did you mean '{hint[0]}'?" if hint
                          else "") + f" Choose one of: {', '.join(SAMPLERS)}")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    continuous = [p.key for p in params if p.kind in ("uniform", "loguniform")]
    if continuous:
        raise ConfigError(f"--sampler grid needs finite values; {', '.join(continuous)} "
                          "is continuous: use {choice: [...]} or {int: [lo, hi]}, or another --sampler")
    space = {p.key: list(p.values) if p.kind == "choice" else list(range(int(p.values[0]), int(p.values[1]) + 1))
             for p in params}
    return optuna.samplers.GridSampler(space, seed=seed)


def search(tuner: Tuner, name: str, folds: list[Fold], options: TuneOptions, storage: Any, seed: int) -> Any:
    """Run (or continue) the study ``name`` until it holds ``options.trials`` finished trials.

    Finished = complete or pruned; failed or interrupted trials do not count and are run again.
    Several workers on one storage share the count (each may overshoot by the trials in flight).
    """
    import optuna
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=make_sampler(options.sampler, tuner.spec.params, seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    done = len(study.get_trials(deepcopy=False, states=finished))
    todo = max(0, options.trials - done)
    log.info("study %s: %d finished trial(s), %d to run", name, done, todo)
    if todo:
        study.optimize(tuner.objective(folds), n_trials=todo, timeout=options.timeout, gc_after_trial=False,
                       callbacks=[optuna.study.MaxTrialsCallback(options.trials, states=finished)],
                       catch=(MedtlError,))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise MedtlError(f"study {name}: no trial finished (all pruned or failed); raise --trials or check run.log")
    return study


def _counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    return {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}


def _ran_here(study: Any) -> list[int]:
    return sorted(t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == os.getpid())


# --------------------------------------------------------------------------- the run


def run_tune(spec: TuneSpec, out_dir: Path, options: TuneOptions, progress: bool = True) -> dict[str, Any]:
    """Search, refit the chosen configurations on the outer folds, and write the run directory.

    A folder holding an earlier search of the same config and search block (finished or not) is
    continued from its storage; its run files are rewritten and it is marked complete last.

    Returns:
        The ``tune.json`` summary (also under ``"tune"`` in ``metrics.json``).

    Raises:
        MedtlError: ``out_dir`` is a file, holds another run or a search of another config; bad
            search block, data or storage.
        RunInterrupted: Ctrl-C; the storage keeps every finished trial, and the same command continues.
    """
    make_sampler(options.sampler, spec.params, 0)  # a sampler that cannot search this block fails first
    out_dir = _open_dir(Path(out_dir), spec, options)
    url = storage_url(options.storage, out_dir)
    with RunLog(out_dir / rundir.LOG):
        try:
            summary = _tune(spec, out_dir, options, url, progress)
        except KeyboardInterrupt:
            message = (f"interrupted (Ctrl-C): the search storage {redact(url)} keeps every finished trial; run the "
                       f"same medtl tune command again to continue (finished trials are not run again)")
            log.error("%s", message)
            raise RunInterrupted(message) from None
    rundir.mark_complete(out_dir)
    return summary


def _open_dir(out_dir: Path, spec: TuneSpec, options: TuneOptions) -> Path:
    """Create ``out_dir`` or reopen an earlier search of the same experiment (removing its completion mark)."""
    now = rundir.state(out_dir)
    if now == "not_a_folder":
        raise MedtlError(f"--out {out_dir} is a file, not a folder; choose a folder for the tune run")
    search_file = out_dir / SEARCH_JSON
    if now in ("complete", "unfinished"):
        if not search_file.is_file():
            raise MedtlError(f"{out_dir} holds files of another kind of run (no {SEARCH_JSON}); choose another --out")
        _check_same_search(out_dir, spec, options)
        (out_dir / rundir.COMPLETE).unlink(missing_ok=True)
        log.info("continuing the search in %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_text(out_dir / rundir.CONFIG, dump_config(spec.base))
    rundir.write_json(search_file, {"search": spec.search_json(), "nested": options.nest,
                                    "inner_folds": options.inner_folds if options.nest else None})
    return out_dir


def _check_same_search(out_dir: Path, spec: TuneSpec, options: TuneOptions) -> None:
    old = rundir.read_json(out_dir / SEARCH_JSON)
    new = {"search": spec.search_json(), "nested": options.nest,
           "inner_folds": options.inner_folds if options.nest else None}
    config = out_dir / rundir.CONFIG
    same_config = config.is_file() and config.read_text() == dump_config(spec.base)
    if json.loads(json.dumps(new)) != old or not same_config:
        what = "experiment config" if not same_config else "search block / nesting / inner folds"
        raise MedtlError(f"{out_dir} holds a search with another {what}; continue it with the same YAML and "
                         "options, or choose another --out")


def _tune(spec: TuneSpec, out_dir: Path, options: TuneOptions, url: str, progress: bool) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    check_weights(spec.base)
    storage = open_storage(url)
    data = prepare_data(spec.base, progress)
    with rundir.atomic_path(out_dir / rundir.SPLITS) as tmp:
        write_manifest(tmp, data.loaded.table, data.groups, data.folds)
    tuner = Tuner(spec, data, out_dir / ".trials", progress=False)
    seed = spec.base.train.seed
    if options.nest:
        outer = [_outer_fold(tuner, fold, options, storage, seed) for fold in data.folds]
    else:
        study = search(tuner, f"{spec.base.name}-flat", data.folds, options, storage, seed)
        outer = [{"fold": f.index, "study": study.study_name, "params": study.best_params,
                  "best_search_auc": study.best_value, "trials": _counts(study), "trials_run_here": _ran_here(study)}
                 for f in data.folds]
    outcomes, spec_w = _refit(tuner, data.folds, [o["params"] for o in outer], out_dir)
    for entry, outcome in zip(outer, outcomes, strict=True):
        entry["outer_auc"] = fold_auc(data, outcome)
    summary = _summary(spec, options, url, outer)
    metrics = conclude(spec.base, data, outcomes, spec_w, out_dir, started, {"tune": summary})
    summary = _with_outer(summary, metrics)
    metrics["tune"] = summary
    if not options.nest:
        metrics["warnings"] = [*metrics.get("warnings", []), OPTIMISTIC]
    rundir.write_json(out_dir / rundir.METRICS, metrics)
    rundir.write_json(out_dir / TUNE_JSON, summary)
    return summary


def _outer_fold(tuner: Tuner, fold: Fold, options: TuneOptions, storage: Any, seed: int) -> dict[str, Any]:
    folds = inner_folds(tuner.data, fold, options.inner_folds, tuner.spec.base.data.split)
    log.info("outer fold %d: %d inner folds from %d training images", fold.index, len(folds),
             len(fold.train) + len(fold.val))
    study = search(tuner, f"{tuner.spec.base.name}-outer{fold.index}", folds, options, storage, seed + fold.index)
    return {"fold": fold.index, "study": study.study_name, "params": study.best_params,
            "best_inner_auc": study.best_value, "trials": _counts(study), "trials_run_here": _ran_here(study)}


def _refit(tuner: Tuner, folds: list[Fold], chosen: list[dict[str, Any]],
           out_dir: Path) -> tuple[list[FoldOutcome], Any]:
    """Each outer fold trained once with its chosen configuration; its model saved in the run directory."""
    outcomes, spec_w = [], None
    for fold, values in zip(folds, chosen, strict=True):
        cfg = tuner.spec.config(values)
        log.info("outer fold %d: refitting %s on train/val, scoring once on its test fold", fold.index, values)
        trainer = tuner.trainer(cfg, out_dir)
        outcomes.append(trainer.train_fold(fold, partial(artifact.save_fold, out_dir)))
        tuner.keep_bank(cfg, trainer)
        spec_w = trainer.spec
    return outcomes, spec_w


def _summary(spec: TuneSpec, options: TuneOptions, url: str, outer: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nested": options.nest, "sampler": options.sampler, "trials": options.trials,
            "timeout_s": options.timeout, "inner_folds": options.inner_folds if options.nest else None,
            "storage": redact(url), "search": spec.search_json(), "outer": outer}


def _with_outer(summary: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Add the pooled outer AUC (with its CI), the optimism and the words that go with them."""
    auc = metrics.get("auc") or {}
    pooled = auc.get("value")
    key = "best_inner_auc" if summary["nested"] else "best_search_auc"
    best = float(np.mean([o[key] for o in summary["outer"]]))
    out = summary | {"pooled_outer_auc": pooled, "pooled_outer_auc_ci95": auc.get("ci95"),
                     f"mean_{key}": best, "optimism": None if pooled is None else best - pooled}
    if summary["nested"]:
        out["estimate"] = ("unbiased: nested search; every outer test fold was scored once by a configuration "
                           "chosen on its training part only")
    else:
        out["estimate"] = OPTIMISTIC
    return out


def tune_table(summary: dict[str, Any]) -> Table:
    """The search as a table: per outer fold the chosen configuration, best search score and outer AUC."""
    nested = summary["nested"]
    key = "best_inner_auc" if nested else "best_search_auc"
    table = Table(title="medtl tune: " + ("nested search (unbiased outer estimate)" if nested
                                          else "FLAT search (optimistic: selected on the same folds)"))
    for col in ("outer fold", "chosen configuration", "best inner AUC" if nested else "search AUC", "outer AUC",
                "trials (complete/pruned/failed)"):
        table.add_column(col)
    for o in summary["outer"]:
        t = o["trials"]
        table.add_row(str(o["fold"]), ", ".join(f"{k}={_short(v)}" for k, v in o["params"].items()),
                      f"{o[key]:.4f}", f"{o['outer_auc']:.4f}", f"{t['complete']}/{t['pruned']}/{t['fail']}")
    lo, hi = summary.get("pooled_outer_auc_ci95") or (None, None)
    pooled = summary.get("pooled_outer_auc")
    ci = f" (95% CI {lo:.4f}–{hi:.4f})" if lo is not None and hi is not None else ""
    optimism = summary.get("optimism")
    table.caption = (f"pooled outer AUC {pooled if pooled is None else f'{pooled:.4f}'}{ci}; optimism (mean "
                     f"{'best inner' if nested else 'search'} − pooled outer) "
                     f"{optimism if optimism is None else f'{optimism:+.4f}'}. {summary['estimate']}")
    return table


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
