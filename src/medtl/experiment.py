"""Run one experiment end to end: data → splits → per-fold transfer + training → pooled evaluation.

Everything a reader needs to trust a result is written into the run directory: the resolved
config, the split manifest, per-epoch history, out-of-fold (or test) predictions, metrics with
group-bootstrap CIs, the model weights (safetensors) with metadata, and a log file.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from medtl import artifact
from medtl.config import ExperimentConfig, dump_config
from medtl.data.sources import LoadedImages, load_images, load_table
from medtl.data.splits import Fold, assign_groups, make_folds, near_duplicate_links, write_manifest
from medtl.data.strategy import training_dataset
from medtl.data.transforms import TTA_VIEWS, ImageArrayDataset, Normalizer
from medtl.errors import MedtlError, TrainingError
from medtl.evaluate.aggregate import patient_level_metrics
from medtl.evaluate.calibration import apply_temperature, fit_temperature
from medtl.evaluate.label_issues import audit_labels
from medtl.evaluate.metrics import compute_metrics, per_fold_summary, summarize
from medtl.evaluate.threshold import operating_point
from medtl.models.network import TransferNet, create_model, preprocessing_for
from medtl.models.registry import WeightsSpec
from medtl.train.engine import ClassifierModule, FitResult, class_weights_for, fit
from medtl.train.inference import embed, head_probs, predict_probs
from medtl.transfer.cuts import inference_ms
from medtl.transfer.freeze import apply_strategy, count
from medtl.transfer.gradual import GradualUnfreeze, step_lr_mults
from medtl.transfer.probe import init_head

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Decoded images with labels, groups and folds."""

    loaded: LoadedImages
    labels: np.ndarray
    groups: list[str]
    folds: list[Fold]

    @property
    def class_names(self) -> list[str]:
        return self.loaded.table.class_names

    @property
    def positive_index(self) -> int | None:
        return self.loaded.table.positive_index


@dataclass
class FoldOutcome:
    """Test-set probabilities and training record of one fold."""

    fold: Fold
    probs: np.ndarray
    fit: FitResult
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    val_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    members: list[FitResult] = field(default_factory=list)
    """Every ensemble member's fit (``train.ensemble``), ``fit`` first."""
    files: list[str] = field(default_factory=list)
    """The fold's model files, one per member."""


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
    return PreparedData(loaded, labels, groups, folds)


def run_experiment(cfg: ExperimentConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run ``cfg`` and write the run directory ``out_dir``; returns the metrics dict."""
    out_dir = Path(out_dir)
    if (out_dir / "metrics.json").exists():
        raise MedtlError(f"{out_dir} already holds a finished run; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _run_log(out_dir / "run.log"):
        (out_dir / "config.yaml").write_text(dump_config(cfg))
        started = time.perf_counter()
        stages = []
        if cfg.stages:
            cfg, stages = run_bridge_stages(cfg, out_dir / "stages", progress)
        data = prepare_data(cfg, progress)
        write_manifest(out_dir / "splits.csv", data.loaded.table, data.groups, data.folds)
        outcomes, spec = _train_folds(cfg, data, out_dir, progress)
        choice = choose_operating_point(cfg, data, outcomes)
        metrics = _evaluate(cfg, data, outcomes, spec, time.perf_counter() - started, choice)
        if stages:
            metrics["stages"] = stages
        if cfg.evaluate.label_issues:
            metrics["label_issues"] = _audit_labels(out_dir, data, outcomes)
        _write_outputs(out_dir, cfg, data, outcomes, metrics, spec, choice)
        if cfg.evaluate.report:
            _write_report(out_dir, cfg)
    return metrics


def _audit_labels(out_dir: Path, data: PreparedData, outcomes: list[FoldOutcome]) -> dict:
    """Suspected label errors among the evaluated images (label_issues.csv)."""
    idx = np.concatenate([o.fold.test for o in outcomes])
    folds = [o.fold.index for o in outcomes for _ in o.fold.test]
    samples = data.loaded.table.samples
    return audit_labels(out_dir / "label_issues.csv", [samples[i].id for i in idx], [samples[i].path for i in idx],
                        folds, data.labels[idx], np.concatenate([o.probs for o in outcomes]), data.class_names)


def _write_report(out_dir: Path, cfg: ExperimentConfig) -> None:
    from medtl.report import write_report

    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    try:
        path = write_report(out_dir, device=device)
    except Exception as exc:  # the run's results are written; a report failure must not lose them
        log.warning("the HTML report could not be written (%s: %s); run `medtl report %s` to retry",
                    type(exc).__name__, exc, out_dir)
        return
    log.info("report: %s", path)


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
        if (run_dir / "metrics.json").exists() and (run_dir / "config.yaml").read_text() == dump_config(stage_cfg):
            log.info("stage '%s' already finished in %s; reusing it", stage.name, run_dir)
            stage_metrics = json.loads((run_dir / "metrics.json").read_text())
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            stage_metrics = run_experiment(stage_cfg, run_dir, progress)
        weights = f"file:{run_dir / artifact.MODEL_DIR / 'fold0.safetensors'}"
        summary.append({"stage": stage.name, "run_dir": str(run_dir), "started_from": stage_cfg.model.weights,
                        "strategy": stage_cfg.transfer.strategy, "data": str(stage.data.location),
                        "splits_sha256": _sha256(run_dir / "splits.csv"),
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


ENSEMBLE_SEED_STRIDE = 1000
"""Member m of a fold trains with seed ``train.seed + fold + 1000·m`` (member 0: the single-model seed)."""


def _train_folds(cfg: ExperimentConfig, data: PreparedData, out_dir: Path,
                 progress: bool) -> tuple[list[FoldOutcome], WeightsSpec]:
    bank: list[torch.Tensor] | None = None
    outcomes = []
    spec: WeightsSpec | None = None
    members = cfg.train.ensemble
    if members > 1 and cfg.transfer.classifier != "head":
        log.warning("train.ensemble %d with transfer.classifier '%s': the classifier is fitted deterministically, "
                    "so the members are the same model", members, cfg.transfer.classifier)
    for fold in data.folds:
        log.info("fold %d/%d: train %d, val %d, test %d", fold.index + 1, len(data.folds),
                 len(fold.train), len(fold.val), len(fold.test))
        started = time.perf_counter()
        fits, test_probs, val_probs, files = [], [], [], []
        for member in range(members):
            seed = cfg.train.seed + fold.index + ENSEMBLE_SEED_STRIDE * member
            L.seed_everything(seed, workers=True, verbose=False)
            model, spec = build_model(cfg, len(data.class_names))
            apply_strategy(model, cfg.transfer)
            if _uses_feature_bank(cfg):
                bank = bank or _feature_bank(model, spec, cfg, data, progress)
            if cfg.transfer.classifier != "head":
                result, probs = _fit_classical(model, cfg, data, fold, bank, seed)
            elif _uses_feature_bank(cfg):
                _probe_head(model, spec, cfg, data, fold, bank, seed)
                result, probs = _fit_head(model, cfg, data, fold, bank, seed, progress)
            else:
                if _probe_first(cfg) and not cfg.train.prefix_cache:  # the cached path probes on cached features
                    _probe_head(model, spec, cfg, data, fold, bank, seed)
                result, probs = _fit_full(model, spec, cfg, data, fold, seed, progress, out_dir)
            files.append(artifact.save_fold(out_dir, fold.index, result.model, member))
            fits.append(result)
            test_probs.append(probs)
            val_probs.append(_probs_on(cfg, result.model, spec, data, fold.val, bank))
            if members > 1:
                log.info("fold %d member %d/%d (seed %d) test: %s", fold.index, member + 1, members, seed,
                         _fmt(compute_metrics(data.labels[fold.test], probs, data.positive_index,
                                              cfg.evaluate.threshold)))
        outcome = FoldOutcome(fold, np.mean(test_probs, axis=0), fits[0], time.perf_counter() - started,
                              val_probs=np.mean(val_probs, axis=0), members=fits, files=files)
        outcome.metrics = compute_metrics(data.labels[fold.test], outcome.probs, data.positive_index,
                                          cfg.evaluate.threshold)
        log.info("fold %d test%s: %s", fold.index, f" (mean of {members} members)" if members > 1 else "",
                 _fmt(outcome.metrics))
        outcomes.append(outcome)
    assert spec is not None
    return outcomes, spec


def _probs_on(cfg: ExperimentConfig, model: TransferNet, spec: WeightsSpec, data: PreparedData, indices: np.ndarray,
              bank: list[torch.Tensor] | None) -> np.ndarray:
    """Probabilities of a trained fold model on ``indices`` (validation images), with the run's TTA."""
    if len(indices) == 0:
        return np.zeros((0, len(data.class_names)))
    if bank is not None:
        return head_probs(model.head, [view[indices] for view in bank])
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    return predict_probs(model, _normalizer(spec), data.loaded.images, indices, cfg.train.batch_size * 2,
                         cfg.evaluate.tta, device, False, cfg.train.fast_inference)


@dataclass
class OperatingChoice:
    """The decision rule fixed on validation data: threshold (binary), how it was chosen, temperature."""

    threshold: float
    rule: dict
    temperature: float | None = None


def choose_operating_point(cfg: ExperimentConfig, data: PreparedData, outcomes: list[FoldOutcome]) -> OperatingChoice:
    """Fit temperature scaling and choose the threshold on the pooled validation predictions only.

    Test probabilities are rescaled with the fitted temperature and every fold's metrics are
    recomputed at the chosen threshold, so nothing about the test images informs either choice.
    """
    ev = cfg.evaluate
    val_idx = np.concatenate([o.fold.val for o in outcomes]).astype(np.int64)
    val_probs = np.concatenate([o.val_probs for o in outcomes]) if len(val_idx) else None
    temperature = None
    if ev.temperature_scaling:
        if val_probs is None:
            raise MedtlError("evaluate.temperature_scaling needs validation data (data.split.val_fraction > 0)")
        temperature = fit_temperature(val_probs, data.labels[val_idx], kind="probs")
        for o in outcomes:
            o.probs = apply_temperature(o.probs, temperature)
            o.val_probs = apply_temperature(o.val_probs, temperature) if len(o.val_probs) else o.val_probs
        val_probs = apply_temperature(val_probs, temperature)
        log.info("temperature scaling on %d validation predictions: T = %.3f", len(val_idx), temperature)
    pos = data.positive_index
    if ev.threshold_rule == "fixed" or pos is None or len(data.class_names) != 2:
        rule = {"rule": "fixed", "threshold": ev.threshold}
        threshold = ev.threshold
    else:
        if val_probs is None:
            raise MedtlError(f"evaluate.threshold_rule '{ev.threshold_rule}' needs validation data "
                             "(data.split.val_fraction > 0)")
        op = operating_point(data.labels[val_idx] == pos, val_probs[:, pos], ev.threshold_rule, ev.threshold_target)
        threshold, rule = op.threshold, op.to_dict()
        log.info("operating point from %d validation predictions: %s", len(val_idx), op.describe())
    for o in outcomes:
        o.metrics = compute_metrics(data.labels[o.fold.test], o.probs, pos, threshold)
    return OperatingChoice(threshold, rule, temperature)


def build_model(cfg: ExperimentConfig, num_classes: int) -> tuple[TransferNet, WeightsSpec]:
    """The configured model (truncated for ``transfer.strategy: truncated``)."""
    truncate_at = cfg.transfer.truncate_at if cfg.transfer.strategy == "truncated" else None
    return create_model(cfg.model.backbone, cfg.model.weights, num_classes, cfg.model.head, cfg.model.drop_rate,
                        cfg.model.drop_path_rate, truncate_at)


def _probe_first(cfg: ExperimentConfig) -> bool:
    """Start the head from a linear probe (LP-FT) — not for random (scratch) features."""
    return cfg.transfer.head_init == "linear_probe" and cfg.transfer.strategy != "scratch"


def _uses_feature_bank(cfg: ExperimentConfig) -> bool:
    """Frozen backbone and no augmentation: the backbone's output never changes, compute it once.

    A classical classifier (logistic regression / SVM on pooled features) always uses the bank.
    """
    if cfg.transfer.strategy != "feature_extraction":
        return False
    return cfg.transfer.classifier != "head" or (not cfg.data.augment.active and not cfg.data.strategy.expand)


def _fit_classical(model: TransferNet, cfg: ExperimentConfig, data: PreparedData, fold: Fold,
                   bank: list[torch.Tensor], seed: int) -> tuple[FitResult, np.ndarray]:
    """Feature-extraction baseline: logistic regression or a Platt-scaled linear SVM on pooled features,
    fitted on train + validation (nothing to stop early), stored as the linear head."""
    feats = bank[0]
    idx = np.concatenate([fold.train, fold.val])
    method = cfg.transfer.classifier
    if not init_head(model.head, feats[idx], data.labels[idx], len(data.class_names), cfg.transfer.probe_c, seed,
                     method):
        raise MedtlError(f"transfer.classifier '{method}' needs a linear head: set model.head.hidden: []")
    if cfg.data.augment.active:
        log.warning("transfer.classifier '%s' fits on fixed features: data.augment is not used", method)
    probs = head_probs(model.head, [view[fold.test] for view in bank])
    return FitResult(model=model.eval()), probs


def _probe_head(model: TransferNet, spec: WeightsSpec, cfg: ExperimentConfig, data: PreparedData, fold: Fold,
                bank: list[torch.Tensor] | None, seed: int) -> None:
    """LP-FT: start the head from a logistic regression on the frozen features of the training part."""
    if bank is not None:
        feats = bank[0][fold.train]
    else:
        feats = embed(model.backbone, _normalizer(spec), data.loaded.images, fold.train, fast=cfg.train.fast_inference)
    init_head(model.head, feats, data.labels[fold.train], len(data.class_names), cfg.transfer.probe_c, seed)


def _normalizer(spec: WeightsSpec) -> Normalizer:
    return Normalizer(spec.mean, spec.std)


def _feature_bank(model: TransferNet, spec: WeightsSpec, cfg: ExperimentConfig, data: PreparedData,
                  progress: bool) -> list[torch.Tensor]:
    """Frozen backbone features of every image, one tensor per test-time view (the plain image first)."""
    log.info("feature extraction: computing frozen backbone features once for %d images", len(data.labels))
    idx = np.arange(len(data.labels))
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    return [embed(model.backbone, _normalizer(spec), data.loaded.images, idx, view=view, device=device,
                  progress=progress, fast=cfg.train.fast_inference) for view in TTA_VIEWS[cfg.evaluate.tta]]


def _fit_head(model: TransferNet, cfg: ExperimentConfig, data: PreparedData, fold: Fold,
              bank: list[torch.Tensor], seed: int,
              progress: bool) -> tuple[FitResult, np.ndarray]:
    feats = bank[0]
    labels = torch.from_numpy(data.labels)
    head = model.head
    module = ClassifierModule(head, cfg.train, data.positive_index, _class_weights(cfg, data, fold))
    train = TensorDataset(feats[fold.train], labels[fold.train])
    val = TensorDataset(feats[fold.val], labels[fold.val]) if len(fold.val) else None
    result = fit(module, train, val, cfg.train, seed, progress)
    probs = head_probs(result.model, [view[fold.test] for view in bank])
    model.head = result.model
    result.model = model
    return result, probs


def _fit_full(model: TransferNet, spec: WeightsSpec, cfg: ExperimentConfig, data: PreparedData,
              fold: Fold, seed: int, progress: bool, out_dir: Path) -> tuple[FitResult, np.ndarray]:
    if cfg.train.prefix_cache:
        cached = _fit_cached(model, spec, cfg, data, fold, seed, progress, out_dir)
        if cached is not None:
            return cached
        if _probe_first(cfg):
            _probe_head(model, spec, cfg, data, fold, None, seed)
    normalizer = _normalizer(spec)
    images = data.loaded.images
    gradual = cfg.transfer.strategy == "gradual"
    module = ClassifierModule(model, cfg.train, data.positive_index, _class_weights(cfg, data, fold),
                              prepare=normalizer, include_frozen=gradual,
                              lr_mults=step_lr_mults(model, cfg.transfer.schedule, cfg.train.lr) if gradual else None)
    train = training_dataset(images, data.labels, data.groups, fold, cfg.data, data.class_names, seed)
    val = ImageArrayDataset(images, data.labels, fold.val) if len(fold.val) else None
    callbacks = [GradualUnfreeze(cfg.transfer.schedule)] if gradual else []
    try:
        result = fit(module, train, val, cfg.train, seed, progress, callbacks)
    except TrainingError as exc:
        raise TrainingError(f"{exc} (fold {fold.index}); {_save_last_good(exc, out_dir, fold)}") from None
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    probs = predict_probs(result.model, normalizer, images, fold.test, cfg.train.batch_size * 2,
                          cfg.evaluate.tta, device, progress, cfg.train.fast_inference)
    return result, probs


def _fit_cached(model: TransferNet, spec: WeightsSpec, cfg: ExperimentConfig, data: PreparedData, fold: Fold,
                seed: int, progress: bool, out_dir: Path) -> tuple[FitResult, np.ndarray] | None:
    """Train only the part above the frozen prefix, on cached prefix activations (``train.prefix_cache``).

    Returns None (the caller trains the whole network) when nothing is frozen or offline augmented
    copies (``data.strategy``) are in use.
    """
    from medtl.data.transforms import build_augment
    from medtl.transfer import prefix_cache as pc

    cut = pc.cache_cut(model.backbone, cfg.transfer)
    if cut in (None, "head") or cfg.data.strategy.expand:
        log.info("train.prefix_cache: nothing frozen to cache here (cut %s); training the whole network", cut)
        return None
    split = pc.split_at(model.backbone, cut)
    pre = preprocessing_for(spec, cfg.data.image_size, data.loaded.color, cfg.data.resize, cfg.data.crop)
    key = pc.prefix_key(split, cfg.model.backbone, pre, cfg.data.augment, seed=cfg.train.seed)
    augment = build_augment(cfg.data.augment)
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    cache = pc.ActivationCache(dtype=cfg.train.cache_dtype)
    images, normalizer = data.loaded.images, _normalizer(spec)
    fast = cfg.train.fast_inference
    views = pc.prefix_views(cache, split, key, images, normalizer, range(cfg.train.cache_views if augment else 1),
                            augment, device=device, progress=progress, fast=fast)
    tta = [views[0], *pc.prefix_views(cache, split, key, images, normalizer, TTA_VIEWS[cfg.evaluate.tta][1:],
                                      device=device, fast=fast)]
    if _probe_first(cfg):  # LP-FT on the cached activations: only the suffix runs
        feats = pc.run_cached(split.suffix, views[0], fold.train, device=device).cpu()
        init_head(model.head, feats, data.labels[fold.train], len(data.class_names), cfg.transfer.probe_c, seed)
    net = TransferNet(split.suffix, model.head)
    net.freeze_bn_stats = model.freeze_bn_stats
    gradual = cfg.transfer.strategy == "gradual"
    module = ClassifierModule(net, cfg.train.model_copy(update={"lr_mults": _suffix_mults(net, cfg)}),
                              data.positive_index, _class_weights(cfg, data, fold), prepare=pc.activation_prepare,
                              include_frozen=gradual,
                              lr_mults=step_lr_mults(net, cfg.transfer.schedule, cfg.train.lr) if gradual else None)
    train = pc.PrefixViewsDataset(views, fold.train, data.labels, seed)
    val = pc.PrefixViewsDataset(views[:1], fold.val, data.labels) if len(fold.val) else None
    callbacks = [*([GradualUnfreeze(cfg.transfer.schedule)] if gradual else []), pc.ViewEpoch(train)]
    log.info("prefix cache: layers below %s run once per image (%d view(s)); training the rest", cut, len(views))
    try:
        result = fit(module, train, val, cfg.train, seed, progress, callbacks)
    except TrainingError as exc:
        raise TrainingError(f"{exc} (fold {fold.index}); {_save_last_good(exc, out_dir, fold)}") from None
    probs = pc.predict_cached(result.model, tta, fold.test, device=device)
    result.model = model.to("cpu").eval()  # suffix and head are shared with the full model
    return result, probs


def _suffix_mults(net: TransferNet, cfg: ExperimentConfig) -> dict[str, float]:
    """``train.lr_mults`` entries that name layers of the trainable suffix (the prefix is frozen)."""
    from medtl.transfer.cuts import cut_points

    points = cut_points(net.backbone)
    return {k: v for k, v in cfg.train.lr_mults.items() if any(p == k or p.startswith(k + ".") for p in points)}


def _save_last_good(exc: TrainingError, out_dir: Path, fold: Fold) -> str:
    state = getattr(exc, "last_good", None)
    if not state:
        return "no epoch had finished, so there is no checkpoint to keep"
    path = out_dir / artifact.MODEL_DIR / f"fold{fold.index}.last_good.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return f"the weights of the last good epoch are in {path}"


def _class_weights(cfg: ExperimentConfig, data: PreparedData, fold: Fold) -> torch.Tensor | None:
    return class_weights_for(data.labels[fold.train], len(data.class_names), cfg.train.class_weights)


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
    metrics["data"] = {"source": cfg.data.source, "location": str(cfg.data.location),
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
    if cfg.train.ensemble > 1:
        metrics["ensemble"] = {"members": cfg.train.ensemble, "seed_stride": ENSEMBLE_SEED_STRIDE,
                               "epochs_trained": [[len(f.history) for f in o.members] for o in outcomes]}
    metrics["seconds"] = round(seconds, 1)
    metrics["name"] = cfg.name
    return metrics


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
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    _write_predictions(out_dir / "predictions.csv", data, [(o.fold.index, o.fold.test, o.probs) for o in outcomes],
                       choice.threshold)
    _write_predictions(out_dir / "val_predictions.csv", data,
                       [(o.fold.index, o.fold.val, o.val_probs) for o in outcomes], choice.threshold)
    _write_history(out_dir / "history.csv", outcomes)
    pre = preprocessing_for(spec, cfg.data.image_size, data.loaded.color, cfg.data.resize, cfg.data.crop)
    lineage = [*spec.lineage, {"stage": cfg.name, "weights": spec.name, "weights_sha256": spec.sha256,
                               "data": str(cfg.data.location), "strategy": cfg.transfer.strategy,
                               "splits_sha256": _sha256(out_dir / "splits.csv")}]
    meta = artifact.ModelMeta(
        backbone=cfg.model.backbone, head=cfg.model.head.model_dump(), class_names=data.class_names,
        positive_index=data.positive_index, preprocessing=pre.__dict__ | {"mean": list(pre.mean),
                                                                          "std": list(pre.std)},
        threshold=choice.threshold, threshold_rule=choice.rule, temperature=choice.temperature, tta=cfg.evaluate.tta,
        folds=[name for o in outcomes for name in o.files], lineage=lineage,
        config=cfg.model_dump(mode="json"))
    artifact.save_meta(out_dir, meta)
    log.info("trainable parameters at the end: %s", f"{count(outcomes[-1].fit.model, True):,}")


def _write_predictions(path: Path, data: PreparedData, parts: list[tuple[int, np.ndarray, np.ndarray]],
                       threshold: float) -> None:
    """One row per (fold, image): labels, group, probabilities and the decision at ``threshold``."""
    names = data.class_names
    samples = data.loaded.table.samples
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "fold", "label", "class_name", "group", *[f"prob_{n}" for n in names],
                         "pred"])
        for fold, indices, probs in parts:
            for i, p in zip(indices, probs, strict=True):
                writer.writerow([samples[i].id, samples[i].path, fold, int(data.labels[i]),
                                 names[data.labels[i]], data.groups[i], *[f"{v:.9g}" for v in p],
                                 names[_predict(p, data.positive_index, threshold)]])


def _predict(p: np.ndarray, positive_index: int | None, threshold: float) -> int:
    if len(p) == 2 and positive_index is not None:
        return positive_index if p[positive_index] >= threshold else 1 - positive_index
    return int(np.argmax(p))


def _write_history(path: Path, outcomes: list[FoldOutcome]) -> None:
    """Per-epoch rows of every fold; a ``member`` column when a fold has several ensemble members."""
    keys = ["fold", "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr"]
    ensemble = any(len(o.members) > 1 for o in outcomes)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*keys, "member"] if ensemble else keys, extrasaction="ignore")
        writer.writeheader()
        for o in outcomes:
            for member, fit_result in enumerate(o.members or [o.fit]):
                for row in fit_result.history:
                    writer.writerow({"fold": o.fold.index, **row, "member": member})


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))


class _run_log:
    """Context manager that mirrors medtl's and Lightning's log records into the run's log file."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.loggers = [logging.getLogger("medtl"), logging.getLogger("lightning")]

    def __enter__(self) -> _run_log:
        for logger in self.loggers:
            logger.addHandler(self.handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        self.handler.close()
