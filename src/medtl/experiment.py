"""Run one experiment end to end: data → splits → per-fold training → operating point → evaluation → run directory.

This module only orchestrates. How a fold is trained lives in :mod:`medtl.train.fold` (one place
chooses the fit path), the decision rule in :mod:`medtl.evaluate.operating`, the metrics in
:mod:`medtl.evaluate`, and every file of the run directory in :mod:`medtl.rundir`, which marks the
run complete last.

With several training processes (``train.strategy: ddp``) every process runs the experiment, and only
the fits are collective (:mod:`medtl.train.distributed`): rank 0 creates and writes the run directory,
the other processes prepare the same data, take part in every fit, write nothing, and wait at the end
until rank 0 has marked the run complete.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from medtl import artifact, rundir
from medtl.config import ExperimentConfig, dump_config
from medtl.data.sources import load_images, load_table
from medtl.data.splits import assign_groups, make_folds, near_duplicate_links, write_manifest
from medtl.data.synthetic import check_fingerprints
from medtl.errors import RunInterrupted
from medtl.evaluate.aggregate import patient_level_metrics
from medtl.evaluate.label_issues import audit_labels
from medtl.evaluate.metrics import compute_metrics, per_fold_summary, summarize
from medtl.evaluate.operating import OperatingChoice, calibrate, check_validation, choose_operating_point
from medtl.models.cuts import inference_ms
from medtl.models.network import TransferNet, create_model, preprocessing_for
from medtl.models.registry import WeightsSpec
from medtl.train import distributed
from medtl.train.adapt import adaptation_protocol, load_target
from medtl.train.device import environment, release_memory, resolve_device
from medtl.train.fold import (
    ENSEMBLE_SEED_STRIDE,
    FoldOutcome,
    FoldTrainer,
    PreparedData,
    build_model,
    member_seed,
)
from medtl.train.loggers import check_logger, make_logger
from medtl.transfer.freeze import count

log = logging.getLogger(__name__)

__all__ = ["ENSEMBLE_SEED_STRIDE", "FoldOutcome", "OperatingChoice", "PreparedData", "build_model", "conclude",
           "prepare_data", "run_experiment", "run_bridge_stages", "stage_config"]


def prepare_data(cfg: ExperimentConfig, progress: bool = True) -> PreparedData:
    """Load and decode the data, group it (patients + duplicates) and build the folds."""
    table = load_table(cfg.data)
    loaded = load_images(table, cfg.data, progress=progress)
    samples = loaded.table.samples
    labels = np.array([s.label for s in samples], dtype=np.int64)
    distance = cfg.data.split.near_duplicates
    links = near_duplicate_links(loaded.images, distance) if distance is not None else []
    groups = assign_groups(samples, loaded.hashes, links)
    folds = make_folds(labels, groups, [s.split for s in samples], cfg.data.split, cfg.data.train_fraction,
                       class_names=loaded.table.class_names)
    target = load_target(cfg.adapt, cfg.data, loaded, folds, progress) if cfg.adapt else None
    return PreparedData(loaded, labels, groups, folds, target)


def run_experiment(cfg: ExperimentConfig, out_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    """Run ``cfg`` and write the run directory ``out_dir``; returns the metrics dict.

    Every epoch of every fold member is checkpointed in ``out_dir/checkpoints`` while the run lasts;
    ``resume=True`` continues an unfinished run of the same config from its finished members and the
    last epoch of the member in training (same seeds: the same metrics as an uninterrupted run).

    Raises:
        MedtlError: ``out_dir`` is a file, or holds a finished run, or an unfinished run without
            ``resume`` (or with another config); bad data or config.
        RunInterrupted: Ctrl-C; the message (also in run.log) says what was kept and how to continue.
    """
    if not distributed.is_rank_zero():
        return _take_part(cfg, Path(out_dir), progress)
    resuming = resume and rundir.state(Path(out_dir)) == "unfinished"
    out_dir = rundir.create(Path(out_dir), resume=resume, config=dump_config(cfg))
    with RunLog(out_dir / rundir.LOG):
        if resuming:
            log.info("resuming the unfinished run in %s", out_dir)
        try:
            metrics = _run(cfg, out_dir, progress)
        except KeyboardInterrupt:
            message = _interrupted(out_dir)
            log.error("%s", message)
            raise RunInterrupted(message) from None
    rundir.Checkpoints(out_dir).clear()
    rundir.mark_complete(out_dir)
    distributed.barrier()
    return metrics


def _take_part(cfg: ExperimentConfig, out_dir: Path, progress: bool) -> dict:
    """A process other than rank 0: the same stages, data and fits (they are collective), nothing written.

    Finished members are read from rank 0's checkpoints, so a resumed run skips them here too. Returns
    the run's metrics once rank 0 has completed it ({} when there was no fit to synchronise with).
    """
    if cfg.stages:
        cfg, _ = run_bridge_stages(cfg, out_dir / rundir.STAGES, progress)
    train_folds(cfg, prepare_data(cfg, progress=False), out_dir, progress=False, writes=False)
    distributed.barrier()
    return rundir.read_metrics(out_dir) if rundir.is_complete(out_dir) else {}


def _run(cfg: ExperimentConfig, out_dir: Path, progress: bool) -> dict:
    rundir.write_text(out_dir / rundir.CONFIG, dump_config(cfg))
    check_logger(cfg.train.logger)
    check_weights(cfg)
    started = time.perf_counter()
    stages = []
    if cfg.stages:
        cfg, stages = run_bridge_stages(cfg, out_dir / rundir.STAGES, progress)
    data = prepare_data(cfg, progress)
    check_validation(cfg.evaluate, data.positive_index, len(data.class_names), [len(f.val) for f in data.folds])
    if cfg.data.synthetic is not None:  # a synthetic set made for another split fails before any training
        check_fingerprints(cfg.data.synthetic, data.loaded.table.samples, data.folds, data.class_names)
    with rundir.atomic_path(out_dir / rundir.SPLITS) as tmp:
        write_manifest(tmp, data.loaded.table, data.groups, data.folds)
    if data.target is not None:
        rundir.write_adapt_targets(out_dir, data.target.listing(data.folds))
    outcomes, spec = train_folds(cfg, data, out_dir, progress)
    metrics = conclude(cfg, data, outcomes, spec, out_dir, started, {"stages": stages} if stages else None)
    if cfg.evaluate.report:
        _write_report(out_dir, cfg)
    return metrics


def conclude(cfg: ExperimentConfig, data: PreparedData, outcomes: list[FoldOutcome], spec: WeightsSpec,
             out_dir: Path, started: float, extra: dict | None = None) -> dict:
    """Trained folds → operating point (on pooled validation) → metrics with CIs → the run's output files.

    Used by :func:`run_experiment` and by ``medtl tune`` (whose outer folds were refitted with their
    own chosen configurations); ``extra`` entries are added to the metrics before they are written.
    Returns the metrics dict (``metrics.json``); the caller marks the run complete.
    """
    choice = choose_operating_point(cfg.evaluate, *_pooled_validation(data, outcomes), data.positive_index,
                                    len(data.class_names))
    outcomes = [_at_operating_point(o, choice, data) for o in outcomes]
    metrics = _evaluate(cfg, data, outcomes, spec, time.perf_counter() - started, choice)
    metrics.update(extra or {})
    if cfg.evaluate.label_issues:
        metrics["label_issues"] = _audit_labels(out_dir, data, outcomes)
    _write_outputs(out_dir, cfg, data, outcomes, metrics, spec, choice)
    return metrics


def check_weights(cfg: ExperimentConfig) -> None:
    """Load ``file:`` weights once before any image is decoded, so a bad checkpoint fails in seconds."""
    if cfg.model.weights.startswith("file:"):
        build_model(cfg, 2)


def train_folds(cfg: ExperimentConfig, data: PreparedData, out_dir: Path, progress: bool,
                writes: bool = True) -> tuple[list[FoldOutcome], WeightsSpec]:
    """Train every fold (and ensemble member); history.csv grows fold by fold.

    ``writes=False`` (the processes other than rank 0): read rank 0's checkpoints, write nothing.
    """
    if cfg.train.ensemble > 1 and cfg.transfer.classifier != "head":
        log.warning("train.ensemble %d with transfer.classifier '%s': the classifier is fitted deterministically, "
                    "so the members are the same model", cfg.train.ensemble, cfg.transfer.classifier)
    trainer = FoldTrainer(cfg, data, out_dir, progress, distributed.local_device(resolve_device(cfg.train.device)),
                          store=rundir.Checkpoints(out_dir, ensemble=cfg.train.ensemble > 1, writes=writes),
                          logger_for=partial(make_logger, cfg.train.logger, out_dir / rundir.LOGS, cfg.name))
    save = partial(artifact.save_fold, out_dir) if writes else _not_saved
    outcomes: list[FoldOutcome] = []
    for fold in data.folds:
        log.info("fold %d/%d: train %d, val %d, test %d", fold.index + 1, len(data.folds),
                 len(fold.train), len(fold.val), len(fold.test))
        outcome = trainer.train_fold(fold, save)
        for earlier in outcomes:  # their weights are saved; the run only needs the last fold's model
            _drop_models(earlier)
        outcomes.append(outcome)
        release_memory()
        if writes:
            _log_fold(cfg, data, outcome)
            _write_history(out_dir, outcomes)
    assert trainer.spec is not None
    return outcomes, trainer.spec


def _drop_models(outcome: FoldOutcome) -> None:
    """Let go of a finished fold's models (saved as ``outcome.files``): each holds a whole network, so keeping
    every fold's would make a run's memory grow with the number of folds."""
    for fit in {id(f): f for f in [outcome.fit, *outcome.members]}.values():
        fit.model = None


def _not_saved(fold: int, model: object, member: int = 0) -> str:
    """The ``save`` of a process other than rank 0: rank 0 saves the same weights; nothing to name here."""
    return ""


def _log_fold(cfg: ExperimentConfig, data: PreparedData, outcome: FoldOutcome) -> None:
    fold, members = outcome.fold, len(outcome.member_probs)
    labels = data.labels[fold.test]
    if members > 1:
        for m, probs in enumerate(outcome.member_probs):
            log.info("fold %d member %d/%d (seed %d) test: %s", fold.index, m + 1, members,
                     member_seed(cfg, fold, m),
                     _fmt(compute_metrics(labels, probs, data.positive_index, cfg.evaluate.threshold)))
    metrics = compute_metrics(labels, outcome.probs, data.positive_index, cfg.evaluate.threshold)
    log.info("fold %d test%s: %s", fold.index, f" (mean of {members} members)" if members > 1 else "", _fmt(metrics))


def _pooled_validation(data: PreparedData, outcomes: list[FoldOutcome]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of every fold's validation images, pooled."""
    val_idx = np.concatenate([o.fold.val for o in outcomes]).astype(np.int64)
    if len(val_idx) == 0:
        return data.labels[val_idx], np.zeros((0, len(data.class_names)))
    return data.labels[val_idx], np.concatenate([o.val_probs for o in outcomes])


def _at_operating_point(outcome: FoldOutcome, choice: OperatingChoice, data: PreparedData) -> FoldOutcome:
    """The fold's outcome with calibrated probabilities and its metrics at the chosen threshold."""
    probs = calibrate(outcome.probs, choice)
    metrics = compute_metrics(data.labels[outcome.fold.test], probs, data.positive_index, choice.threshold)
    return replace(outcome, probs=probs, val_probs=calibrate(outcome.val_probs, choice), metrics=metrics)


def _audit_labels(out_dir: Path, data: PreparedData, outcomes: list[FoldOutcome]) -> dict:
    """Suspected label errors among the evaluated images (label_issues.csv)."""
    idx = np.concatenate([o.fold.test for o in outcomes])
    folds = [o.fold.index for o in outcomes for _ in o.fold.test]
    samples = data.loaded.table.samples
    with rundir.atomic_path(out_dir / rundir.LABEL_ISSUES) as tmp:
        summary = audit_labels(tmp, [samples[i].id for i in idx], [samples[i].path for i in idx], folds,
                               data.labels[idx], np.concatenate([o.probs for o in outcomes]), data.class_names,
                               name=rundir.LABEL_ISSUES)
    return summary


def _write_report(out_dir: Path, cfg: ExperimentConfig) -> None:
    from medtl.report import write_report

    try:
        path = write_report(out_dir, device=resolve_device(cfg.train.device))
    except Exception as exc:  # the run's results are written; a report failure must not lose them
        log.warning("the HTML report could not be written (%s: %s); run `medtl report %s` to retry",
                    type(exc).__name__, exc, out_dir)
        return
    log.info("report: %s", path)


def _interrupted(out_dir: Path) -> str:
    """What an interrupted run kept, and how to go on."""
    kept = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and p.name != rundir.LOG)
    models = [k for k in kept if k.startswith(rundir.MODEL_DIR + "/")]
    return (f"interrupted (Ctrl-C): {out_dir} is an unfinished run (no {rundir.COMPLETE}); it keeps "
            f"{len(kept)} file(s): {len(models)} model file(s) of finished fold members and the last epoch "
            "checkpoint of the member in training. Run the same medtl train command with --resume to continue "
            "where it stopped, or delete the folder to start clean")


def run_bridge_stages(cfg: ExperimentConfig, stage_root: Path,
                      progress: bool = True) -> tuple[ExperimentConfig, list[dict]]:
    """Multi-stage transfer: run each bridge stage, each starting from the previous stage's backbone.

    Returns the final-stage config (``model.weights`` = the last bridge model, no ``stages``) and a
    summary per stage. A stage whose run directory already holds a finished run with the same
    config is reused, so an interrupted multi-stage run resumes.
    """
    weights = cfg.model.weights
    summary = []
    for i, stage in enumerate(cfg.stages):
        stage_cfg = stage_config(cfg, i, weights)
        run_dir = stage_root / f"{i + 1}-{stage.name}"
        log.info("stage %d/%d '%s': %s from %s", i + 1, len(cfg.stages), stage.name, stage_cfg.transfer.strategy,
                 weights)
        same = (run_dir / rundir.CONFIG).is_file() and (run_dir / rundir.CONFIG).read_text() == dump_config(stage_cfg)
        if rundir.is_complete(run_dir) and same:
            log.info("stage '%s' already finished in %s; reusing it", stage.name, run_dir)
            stage_metrics = rundir.read_metrics(run_dir)
        else:
            if run_dir.exists() and not same and distributed.is_rank_zero():
                shutil.rmtree(run_dir)
            stage_metrics = run_experiment(stage_cfg, run_dir, progress, resume=True)
        weights = f"file:{run_dir / rundir.MODEL_DIR / 'fold0.safetensors'}"
        if not distributed.is_rank_zero():
            continue  # the summary is rank 0's (it reads the stage's files)
        summary.append({"stage": stage.name, "run_dir": str(run_dir), "started_from": stage_cfg.model.weights,
                        "strategy": stage_cfg.transfer.strategy, "data": str(stage.data.location),
                        "splits_sha256": _sha256(run_dir / rundir.SPLITS),
                        **{k: stage_metrics[k]["value"] for k in ("accuracy", "auc") if k in stage_metrics}})
    final = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": weights}), "stages": []})
    return final, summary


def stage_config(cfg: ExperimentConfig, index: int, weights: str) -> ExperimentConfig:
    """The experiment config of bridge stage ``index`` starting from ``weights``."""
    stage = cfg.stages[index]
    transfer = stage.transfer or (cfg.transfer if cfg.transfer.strategy != "truncated" else None)
    tree = {"name": f"{cfg.name}-{stage.name}", "data": stage.data.model_dump(),
            "model": cfg.model.model_dump() | {"weights": weights},
            "transfer": (transfer.model_dump() if transfer else {}),
            "train": (stage.train or cfg.train).model_dump(),
            "evaluate": (stage.evaluate or cfg.evaluate).model_dump()}
    return ExperimentConfig.model_validate(tree)


def _evaluate(cfg: ExperimentConfig, data: PreparedData, outcomes: list[FoldOutcome],
              spec: WeightsSpec, seconds: float, choice: OperatingChoice) -> dict:
    idx = np.concatenate([o.fold.test for o in outcomes])
    probs = np.concatenate([o.probs for o in outcomes])
    groups = np.array(data.groups, dtype=object)[idx]
    metrics = summarize(data.labels[idx], probs, groups, data.class_names, data.positive_index,
                        choice.threshold, cfg.evaluate.bootstrap, cfg.train.seed)
    metrics["per_fold"] = per_fold_summary([o.metrics for o in outcomes])
    if cfg.evaluate.patient_level is not None:
        level = cfg.evaluate.patient_level
        metrics["patient_level"] = patient_level_metrics(
            data.labels[idx], probs, groups, data.class_names, data.positive_index, level.method, level.k,
            choice.threshold, cfg.evaluate.bootstrap, cfg.train.seed)
    metrics["protocol"] = _protocol(cfg, data) | {"threshold": choice.threshold, "threshold_rule": choice.rule,
                                                  "temperature": choice.temperature}
    if cfg.adapt is not None and data.target is not None:
        metrics["protocol"]["adaptation"] = adaptation_protocol(cfg.adapt, data.target)
    metrics["data"] = {"source": cfg.data.source, "location": str(cfg.data.location),
                       "color": {"setting": cfg.data.color, "used": data.loaded.color},
                       "n_images": len(data.labels), "n_bad": len(data.loaded.bad),
                       "bad": [{"file": f, "reason": r} for f, r in data.loaded.bad]}
    model = outcomes[-1].fit.model
    metrics["model"] = {"backbone": cfg.model.backbone, "weights": spec.name, "weights_sha256": spec.sha256,
                        "strategy": cfg.transfer.strategy, "unfreeze_from": cfg.transfer.unfreeze_from,
                        "parameters": count(model)}
    if cfg.transfer.strategy == "truncated":
        metrics["model"]["truncation"] = truncation_report(cfg, model)
    metrics["warnings"] = collapse_warnings(metrics, data.labels[idx])
    metrics["epochs_trained"] = [len(o.fit.history) for o in outcomes]
    if cfg.data.synthetic is not None:
        metrics["synthetic"] = synthetic_summary(cfg, outcomes)
    if cfg.train.ensemble > 1:
        metrics["ensemble"] = {"members": cfg.train.ensemble, "seed_stride": ENSEMBLE_SEED_STRIDE,
                               "epochs_trained": [[len(f.history) for f in o.members] for o in outcomes]}
    metrics["seconds"] = round(seconds, 1)
    metrics["name"] = cfg.name
    metrics["environment"] = environment(resolve_device(cfg.train.device))  # provenance (issue 19)
    return metrics


def synthetic_summary(cfg: ExperimentConfig, outcomes: list[FoldOutcome]) -> dict:
    """How many synthetic images each fold trained on (``data.synthetic``), next to its real training images."""
    assert cfg.data.synthetic is not None
    per_fold = [{"fold": o.fold.index, "n_real": len(o.fold.train), "n_synthetic": sum(o.synthetic.values()),
                 "per_class": o.synthetic} for o in outcomes]
    return {"dir": str(cfg.data.synthetic.dir), "fraction": cfg.data.synthetic.fraction, "per_fold": per_fold,
            "n_synthetic": sum(f["n_synthetic"] for f in per_fold)}


def collapse_warnings(metrics: dict, labels: np.ndarray) -> list[str]:
    """Say so when a model predicts (almost) one class.

    Either accuracy sits at the majority rate with AUC < 0.6, or (binary) one class is almost never
    predicted: sensitivity or specificity below 0.1 (e.g. a from-scratch CNN calling every image positive).
    """
    majority = float(np.bincount(labels).max() / len(labels))
    accuracy, auc = metrics["accuracy"]["value"], metrics["auc"]["value"]
    sens, spec = metrics["sensitivity"]["value"], metrics["specificity"]["value"]
    at_majority = accuracy is not None and abs(accuracy - majority) < 0.01 and (auc is None or auc < 0.6)
    one_sided = any(v is not None and v < 0.1 for v in (sens, spec))
    if not (at_majority or one_sided):
        return []
    message = (f"the model collapsed to (almost) one class: accuracy {accuracy:.3f} (majority rate {majority:.3f}), "
               f"sensitivity {sens if sens is None else round(sens, 3)}, specificity "
               f"{spec if spec is None else round(spec, 3)}, AUC {auc if auc is None else round(auc, 3)}; try a lower "
               "train.lr, more epochs, class_weights: balanced, another threshold rule, or another strategy")
    log.warning(message)
    return [message]


def truncation_report(cfg: ExperimentConfig, truncated: TransferNet) -> dict:
    """Parameters and CPU inference time of the truncated model next to the full one."""
    full, _ = create_model(cfg.model.backbone, "none", 2, cfg.model.head)
    size = cfg.data.image_size
    report = {"truncate_at": cfg.transfer.truncate_at, "parameters_full": count(full),
              "parameters_truncated": count(truncated), "ms_per_image_full": round(inference_ms(full, size), 2),
              "ms_per_image_truncated": round(inference_ms(truncated, size), 2)}
    log.info("truncation at %s: %s → %s parameters, %.1f → %.1f ms/image", report["truncate_at"],
             f"{report['parameters_full']:,}", f"{report['parameters_truncated']:,}",
             report["ms_per_image_full"], report["ms_per_image_truncated"])
    return report


def _protocol(cfg: ExperimentConfig, data: PreparedData) -> dict:
    split = cfg.data.split
    return {"split": split.method, "folds": len(data.folds), "seed": split.seed,
            "val_fraction": split.val_fraction, "train_seed": cfg.train.seed,
            "grouping": "patient + duplicate image content" if data.loaded.table.has_patients
            else "duplicate image content (no patient ids)",
            "n_groups": len(set(data.groups)),
            "evaluated_on": "pooled out-of-fold test predictions" if split.method == "kfold"
            else "held-out test split", "tta": cfg.evaluate.tta, "threshold": cfg.evaluate.threshold}


def _write_outputs(out_dir: Path, cfg: ExperimentConfig, data: PreparedData, outcomes: list[FoldOutcome],
                   metrics: dict, spec: WeightsSpec, choice: OperatingChoice) -> None:
    _write_predictions(out_dir, "test", data, [(o.fold.index, o.fold.test, o.probs) for o in outcomes],
                       choice.threshold)
    _write_predictions(out_dir, "val", data, [(o.fold.index, o.fold.val, o.val_probs) for o in outcomes],
                       choice.threshold)
    _write_history(out_dir, outcomes)
    pre = preprocessing_for(spec, cfg.data.image_size, data.loaded.color, cfg.data.resize, cfg.data.crop)
    lineage = [*spec.lineage, {"stage": cfg.name, "weights": spec.name, "weights_sha256": spec.sha256,
                               "data": str(cfg.data.location), "strategy": cfg.transfer.strategy,
                               "splits_sha256": _sha256(out_dir / rundir.SPLITS)}]
    meta = artifact.ModelMeta(
        backbone=cfg.model.backbone, head=cfg.model.head.model_dump(), class_names=data.class_names,
        positive_index=data.positive_index, preprocessing=pre.__dict__ | {"mean": list(pre.mean),
                                                                          "std": list(pre.std)},
        threshold=choice.threshold, threshold_rule=choice.rule, temperature=choice.temperature, tta=cfg.evaluate.tta,
        folds=[name for o in outcomes for name in o.files], lineage=lineage,
        config=cfg.model_dump(mode="json"), environment=metrics["environment"])
    artifact.save_meta(out_dir, meta)
    rundir.write_json(out_dir / rundir.METRICS, metrics)
    log.info("trainable parameters at the end: %s", f"{count(outcomes[-1].fit.model, True):,}")


def _write_predictions(out_dir: Path, which: str, data: PreparedData,
                       parts: list[tuple[int, np.ndarray, np.ndarray]], threshold: float) -> None:
    """One row per (fold, image): labels, group, probabilities and the decision at ``threshold``."""
    samples = data.loaded.table.samples
    idx = [int(i) for _, indices, _ in parts for i in indices]
    folds = [fold for fold, indices, _ in parts for _ in indices]
    probs = np.concatenate([p for _, _, p in parts]) if idx else np.zeros((0, len(data.class_names)))
    header, rows = rundir.prediction_rows([samples[i].id for i in idx], [samples[i].path for i in idx], folds,
                                          data.labels[idx], [data.groups[i] for i in idx], probs, data.class_names,
                                          data.positive_index, threshold)
    rundir.write_predictions(out_dir, which, header, rows)


def _write_history(out_dir: Path, outcomes: list[FoldOutcome]) -> None:
    """Per-epoch rows of every fold so far; a ``member`` column when a fold has several ensemble members."""
    ensemble = any(len(o.members) > 1 for o in outcomes)
    rows = [{"fold": o.fold.index, **row, "member": member}
            for o in outcomes for member, fit_result in enumerate(o.members or [o.fit]) for row in fit_result.history]
    rundir.write_history(out_dir, rows, ensemble)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))


class RunLog:
    """Context manager that mirrors medtl's and Lightning's log records into the run's log file."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.loggers = [logging.getLogger("medtl"), logging.getLogger("lightning")]

    def __enter__(self) -> RunLog:
        for logger in self.loggers:
            logger.addHandler(self.handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        self.handler.close()
