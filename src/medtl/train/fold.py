"""Train one fold: build the model, pick how it is fitted (in one place), fit it, predict its held-out images.

:func:`choose_fit` is the single decision between the four ways medtl fits a fold's model:

==============  ===============================================================================
``classical``   logistic regression / linear SVM on frozen pooled features (``transfer.classifier``)
``bank``        the head alone, trained on frozen features computed once (feature extraction, no
                augmentation)
``cached``      the layers above the frozen prefix, trained on cached prefix activations
                (``train.prefix_cache``)
``full``        the whole network, frozen parts excluded from the optimiser (every other case)
==============  ===============================================================================

Each is a small :class:`FitPath` object with the same ``fit`` signature; the fold trainer never
branches on the strategy itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from medtl.config import ExperimentConfig
from medtl.data.sources import LoadedImages
from medtl.data.splits import Fold
from medtl.data.strategy import training_dataset
from medtl.data.synthetic import SyntheticSet, check_fingerprints, load_fold_synthetic
from medtl.data.transforms import TTA_VIEWS, ImageArrayDataset, Normalizer, build_augment
from medtl.errors import MedtlError, TrainingError
from medtl.models.cuts import cut_points
from medtl.models.network import TransferNet, create_model, preprocessing_for
from medtl.models.registry import WeightsSpec
from medtl.train import adapt as adaptation
from medtl.train.device import resolve_device
from medtl.train.distributed import is_rank_zero
from medtl.train.engine import ClassifierModule, FitResult, class_weights_for, fit
from medtl.train.inference import embed, head_probs, predict_probs
from medtl.transfer import prefix_cache as pc
from medtl.transfer.freeze import apply_strategy
from medtl.transfer.gradual import GradualUnfreeze, step_lr_mults
from medtl.transfer.probe import init_head

log = logging.getLogger(__name__)

__all__ = ["ENSEMBLE_SEED_STRIDE", "FIT_PATHS", "FitPath", "FoldOutcome", "FoldTrainer", "PreparedData", "build_model",
           "choose_fit", "member_seed", "probe_first", "uses_feature_bank",
           "resolve_device"]

ENSEMBLE_SEED_STRIDE = 1000
"""Member m of a fold trains with seed ``train.seed + fold + 1000·m`` (member 0: the single-model seed)."""


@dataclass
class PreparedData:
    """Decoded images with labels, groups and folds."""

    loaded: LoadedImages
    labels: np.ndarray
    groups: list[str]
    folds: list[Fold]
    target: adaptation.AdaptTarget | None = None
    """The unlabelled target images of domain adaptation (``adapt:``); None: no adaptation."""

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
    member_probs: list[np.ndarray] = field(default_factory=list)
    """Each member's test probabilities (their mean is ``probs``)."""
    synthetic: dict[str, int] = field(default_factory=dict)
    """Synthetic training images per class (``data.synthetic``); empty without."""


class MemberStore(Protocol):
    """Where a run keeps what lets it resume: epoch checkpoints and the record of finished members
    (implemented by :class:`medtl.rundir.Checkpoints`)."""

    def epoch_checkpoint(self, fold: int, member: int) -> Path:
        """The resumable checkpoint of a member in training."""

    def finished(self, fold: int, member: int) -> dict[str, Any] | None:
        """A finished member's record (``model_path``, ``file``, ``history``, ``best_epoch``, ``best_score``,
        ``stopped_early``, ``test``, ``val``), or None."""

    def record(self, fold: int, member: int, file: str, result: FitResult, test: np.ndarray,
               val: np.ndarray) -> None:
        """Keep a finished member (its weights are already saved as ``file``)."""

    def live_history(self, fold: int, member: int, rows: list[dict[str, float]]) -> None:
        """The history of the member in training so far (the run's history.csv grows epoch by epoch)."""


def member_seed(cfg: ExperimentConfig, fold: Fold, member: int) -> int:
    """The training seed of ``member`` of ``fold``."""
    return cfg.train.seed + fold.index + ENSEMBLE_SEED_STRIDE * member


def build_model(cfg: ExperimentConfig, num_classes: int) -> tuple[TransferNet, WeightsSpec]:
    """The configured model (truncated for ``transfer.strategy: truncated``)."""
    truncate_at = cfg.transfer.truncate_at if cfg.transfer.strategy == "truncated" else None
    return create_model(cfg.model.backbone, cfg.model.weights, num_classes, cfg.model.head, cfg.model.drop_rate,
                        cfg.model.drop_path_rate, truncate_at)


# ---------------------------------------------------------------- the fold trainer


@dataclass
class FoldTrainer:
    """Trains the folds of one run; holds what folds share (the frozen-feature bank, the weights spec).

    With several processes (``train.strategy: ddp``) every process runs the same fold trainer: the fits
    are collective, the feature bank and the test / validation predictions are computed by every
    process in full (identical; no broadcast needed), and only rank 0's run directory writer keeps them.
    """

    cfg: ExperimentConfig
    data: PreparedData
    out_dir: Path
    progress: bool = True
    device: str = "cpu"
    bank: list[torch.Tensor] | None = None
    spec: WeightsSpec | None = None
    store: MemberStore | None = None
    """Resumable runs: finished members are read back, members in training continue from their last epoch."""
    checkpoint: Path | None = None
    """The epoch checkpoint of the member being trained (None: not checkpointed)."""
    on_epoch: Any = None
    """Called with the member's history after each epoch (None: nothing to tell)."""
    logger_for: Any = None
    """``(fold, member) -> Lightning logger or None`` (``train.logger``); None: no tracker."""
    logger: Any = None
    """The tracker of the member being trained."""
    callbacks: list[L.Callback] = field(default_factory=list)
    """Extra Lightning callbacks of every epoch-wise fit (e.g. ``medtl tune``'s pruning report)."""
    synthetic: SyntheticSet | None = None
    """The synthetic training images of the fold being trained (``data.synthetic``), or None."""
    source_val: np.ndarray | None = None
    """Validation probabilities a fit path computed before test-time adaptation (``adapt.method: tent``)."""

    def normalizer(self) -> Normalizer:
        assert self.spec is not None
        return Normalizer(self.spec.mean, self.spec.std)

    def train_fold(self, fold: Fold, save: callable) -> FoldOutcome:
        """Every ensemble member of ``fold``; ``save(fold_index, model, member)`` stores a member's weights
        and returns its file name."""
        started = time.perf_counter()
        self.synthetic = self.fold_synthetic(fold)
        fits, test_probs, val_probs, files = [], [], [], []
        for member in range(self.cfg.train.ensemble):
            done = self.store.finished(fold.index, member) if self.store else None
            if done is not None:
                result, probs, val = self.restore_member(fold, member, done)
                files.append(done["file"])
            else:
                result, probs, val = self.train_member(fold, member)
                files.append(save(fold.index, result.model, member))
                if self.store:
                    self.store.record(fold.index, member, files[-1], result, probs, val)
            fits.append(result)
            test_probs.append(probs)
            val_probs.append(val)
        return FoldOutcome(fold, np.mean(test_probs, axis=0), fits[0], time.perf_counter() - started,
                           val_probs=np.mean(val_probs, axis=0), members=fits, files=files,
                           member_probs=test_probs,
                           synthetic=self.synthetic.counts(self.data.class_names) if self.synthetic else {})

    def fold_synthetic(self, fold: Fold) -> SyntheticSet | None:
        """Fold ``fold``'s synthetic training images (``data.synthetic``), after checking they were made from
        exactly this fold's training set; None without ``data.synthetic`` or at fraction 0."""
        cfg = self.cfg.data.synthetic
        if cfg is None or cfg.fraction == 0:
            return None
        check_fingerprints(cfg, self.data.loaded.table.samples, [fold], self.data.class_names)
        return load_fold_synthetic(cfg, fold.index, self.data.labels[fold.train], self.data.class_names,
                                   self.cfg.data.image_size, self.data.loaded.color, self.cfg.data.resize)

    def training_labels(self, fold: Fold) -> np.ndarray:
        """Labels of the fold's training set: the real training images, then the synthetic ones."""
        real = self.data.labels[fold.train]
        return real if self.synthetic is None else np.concatenate([real, self.synthetic.labels])

    def synthetic_features(self, model: TransferNet) -> torch.Tensor | None:
        """Frozen backbone features of the fold's synthetic images (the plain view), or None."""
        if self.synthetic is None:
            return None
        return embed(model.backbone, self.normalizer(), self.synthetic.images, np.arange(len(self.synthetic.labels)),
                     device=self.device, fast=self.cfg.train.fast_inference)

    def train_member(self, fold: Fold, member: int) -> tuple[FitResult, np.ndarray, np.ndarray]:
        """One model: seed, build, freeze, fit by the chosen path; its test and validation probabilities."""
        seed = member_seed(self.cfg, fold, member)
        L.seed_everything(seed, workers=True, verbose=False)
        model, self.spec = build_model(self.cfg, len(self.data.class_names))
        apply_strategy(model, self.cfg.transfer)
        path = choose_fit(self.cfg, model)
        if path.uses_bank and self.bank is None:
            self.bank = self.feature_bank(model)
        resumable = self.store is not None and self.cfg.transfer.strategy != "gradual"  # unfreezing is not saved
        self.checkpoint = self.store.epoch_checkpoint(fold.index, member) if resumable else None
        store = self.store
        self.on_epoch = (lambda rows: store.live_history(fold.index, member, rows)) if store else None
        self.logger = self.logger_for(fold.index, member) if self.logger_for else None
        self.source_val = None
        try:
            result, probs = path.fit(self, model, fold, seed)
        except TrainingError as exc:
            raise TrainingError(f"{exc} (fold {fold.index}); {self.keep_last_good(exc, fold)}") from None
        if self.source_val is not None:  # test-time adaptation: validation (threshold choice) stays un-adapted
            return result, probs, self.source_val
        bank = self.bank if path.uses_bank else None
        return result, probs, self.probs_on(result.model, fold.val, bank)

    def restore_member(self, fold: Fold, member: int, done: dict[str, Any]) -> tuple[FitResult, np.ndarray, np.ndarray]:
        """A member finished before an interruption: its weights, history and predictions, not retrained."""
        from safetensors.torch import load_file

        model, self.spec = build_model(self.cfg, len(self.data.class_names))
        model.load_state_dict(load_file(str(done["model_path"])), strict=True)
        log.info("fold %d member %d: finished before the interruption; kept (%s)", fold.index, member, done["file"])
        result = FitResult(model=model.eval(), history=done["history"], best_epoch=done["best_epoch"],
                           best_score=done["best_score"], stopped_early=done["stopped_early"])
        return result, done["test"], done["val"]

    def feature_bank(self, model: TransferNet) -> list[torch.Tensor]:
        """Frozen backbone features of every image, one tensor per test-time view (the plain image first)."""
        n = len(self.data.labels)
        log.info("feature extraction: computing frozen backbone features once for %d images", n)
        return [embed(model.backbone, self.normalizer(), self.data.loaded.images, np.arange(n), view=view,
                      device=self.device, progress=self.progress, fast=self.cfg.train.fast_inference)
                for view in TTA_VIEWS[self.cfg.evaluate.tta]]

    def probs_on(self, model: TransferNet, indices: np.ndarray, bank: list[torch.Tensor] | None) -> np.ndarray:
        """Probabilities of a trained model on ``indices`` (validation images), with the run's TTA."""
        if len(indices) == 0:
            return np.zeros((0, len(self.data.class_names)))
        if bank is not None:
            return head_probs(model.head, [view[indices] for view in bank])
        return predict_probs(model, self.normalizer(), self.data.loaded.images, indices,
                             self.cfg.train.batch_size * 2, self.cfg.evaluate.tta, self.device, False,
                             self.cfg.train.fast_inference)

    def fit(self, module: ClassifierModule, train: Dataset, val: Dataset | None, seed: int,
            callbacks: list | None = None) -> FitResult:
        """:func:`medtl.train.engine.fit` with the trainer's callbacks, the member's epoch checkpoint and history
        hook."""
        return fit(module, train, val, self.cfg.train, seed, self.progress, [*self.callbacks, *(callbacks or [])],
                   checkpoint=self.checkpoint, on_epoch=self.on_epoch, logger=self.logger)

    def module(self, target: adaptation.TargetRows | None, seed: int, *args: object,
               **kwargs: object) -> ClassifierModule:
        """The fit's Lightning module (``ClassifierModule`` arguments): it aligns features with ``target``
        when ``adapt.method`` is ``dann`` or ``coral``."""
        return adaptation.classifier_module(self.cfg.adapt, target, seed, *args, **kwargs)

    def test_time_adapt(self, net: TransferNet, full: TransferNet, fold: Fold, target: adaptation.TargetRows | None,
                        prepare: object, seed: int) -> None:
        """``adapt.method: tent``: keep the un-adapted validation probabilities of ``full`` (the whole model),
        then adapt ``net`` (the trained part, sharing its layers with ``full``) to ``target``."""
        if self.cfg.adapt is None or self.cfg.adapt.method != "tent":
            return
        assert target is not None
        self.source_val = self.probs_on(full, fold.val, None)
        adaptation.tent(net, target, prepare, self.cfg.adapt.tent, self.cfg.train.batch_size, seed, self.device)

    def class_weights(self, fold: Fold) -> torch.Tensor | None:
        return class_weights_for(self.training_labels(fold), len(self.data.class_names), self.cfg.train.class_weights)

    def probe(self, model: TransferNet, fold: Fold, seed: int, feats: torch.Tensor | None = None) -> None:
        """LP-FT: start the head from a logistic regression on frozen features of the training part.

        ``feats``: the features of the training set (real images, then synthetic ones); None: computed here.
        """
        if feats is None:
            feats = embed(model.backbone, self.normalizer(), self.data.loaded.images, fold.train,
                          fast=self.cfg.train.fast_inference)
            extra = self.synthetic_features(model)
            feats = feats if extra is None else torch.cat([feats, extra])
        init_head(model.head, feats, self.training_labels(fold), len(self.data.class_names),
                  self.cfg.transfer.probe_c, seed)

    def keep_last_good(self, exc: TrainingError, fold: Fold) -> str:
        """Save the last good epoch's weights of a fold whose training diverged; say where they are."""
        from safetensors.torch import save_file

        state = getattr(exc, "last_good", None)
        if not state:
            return "no epoch had finished, so there is no checkpoint to keep"
        if not is_rank_zero():
            return f"rank 0 keeps the weights of the last good epoch in {self.out_dir / 'model'}"
        path = self.out_dir / "model" / f"fold{fold.index}.last_good.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return f"the weights of the last good epoch are in {path}"


# ---------------------------------------------------------------- the four fit paths


def probe_first(cfg: ExperimentConfig) -> bool:
    """Start the head from a linear probe (LP-FT) — not for random (scratch) features."""
    return cfg.transfer.head_init == "linear_probe" and cfg.transfer.strategy != "scratch"


def uses_feature_bank(cfg: ExperimentConfig) -> bool:
    """Frozen backbone and no augmentation: the backbone's output never changes, compute it once.

    A classical classifier (logistic regression / SVM on pooled features) always uses the bank.
    """
    if cfg.transfer.strategy != "feature_extraction":
        return False
    return cfg.transfer.classifier != "head" or (not cfg.data.augment.active and not cfg.data.strategy.expand)


class FitPath:
    """One way of fitting a fold's model: returns the fit and the test probabilities."""

    name: ClassVar[str]
    uses_bank: ClassVar[bool] = False

    def fit(self, t: FoldTrainer, model: TransferNet, fold: Fold, seed: int) -> tuple[FitResult, np.ndarray]:
        raise NotImplementedError


class ClassicalFit(FitPath):
    """Logistic regression or a Platt-scaled linear SVM on pooled features, fitted on train + validation
    (nothing to stop early), stored as the linear head."""

    name, uses_bank = "classical", True

    def fit(self, t: FoldTrainer, model: TransferNet, fold: Fold, seed: int) -> tuple[FitResult, np.ndarray]:
        assert t.bank is not None
        idx = np.concatenate([fold.train, fold.val])
        method = t.cfg.transfer.classifier
        feats, labels = t.bank[0][idx], t.data.labels[idx]
        extra = t.synthetic_features(model)
        if extra is not None:  # synthetic images join the training part (never the held-out parts)
            feats, labels = torch.cat([feats, extra]), np.concatenate([labels, t.synthetic.labels])
        if not init_head(model.head, feats, labels, len(t.data.class_names),
                         t.cfg.transfer.probe_c, seed, method):
            raise MedtlError(f"transfer.classifier '{method}' needs a linear head: set model.head.hidden: []")
        if t.cfg.data.augment.active:
            log.warning("transfer.classifier '%s' fits on fixed features: data.augment is not used", method)
        return FitResult(model=model.eval()), head_probs(model.head, [view[fold.test] for view in t.bank])


class BankFit(FitPath):
    """The head alone, on the frozen features of the bank (started from a linear probe)."""

    name, uses_bank = "bank", True

    def fit(self, t: FoldTrainer, model: TransferNet, fold: Fold, seed: int) -> tuple[FitResult, np.ndarray]:
        assert t.bank is not None
        feats, labels = t.bank[0], torch.from_numpy(t.data.labels)
        train_feats, train_labels = feats[fold.train], labels[fold.train]
        extra = t.synthetic_features(model)
        if extra is not None:
            train_feats = torch.cat([train_feats, extra])
            train_labels = torch.cat([train_labels, torch.from_numpy(t.synthetic.labels)])
        t.probe(model, fold, seed, train_feats)
        module = ClassifierModule(model.head, t.cfg.train, t.data.positive_index, t.class_weights(fold))
        train = TensorDataset(train_feats, train_labels)
        val = TensorDataset(feats[fold.val], labels[fold.val]) if len(fold.val) else None
        result = t.fit(module, train, val, seed)
        probs = head_probs(result.model, [view[fold.test] for view in t.bank])
        model.head = result.model
        result.model = model
        return result, probs


class FullFit(FitPath):
    """The whole network on augmented images; frozen layers stay out of the optimiser."""

    name = "full"

    def fit(self, t: FoldTrainer, model: TransferNet, fold: Fold, seed: int) -> tuple[FitResult, np.ndarray]:
        cfg, data = t.cfg, t.data
        if probe_first(cfg):
            t.probe(model, fold, seed)
        gradual = cfg.transfer.strategy == "gradual"
        target = t.data.target.rows(fold) if t.data.target else None
        module = t.module(target, seed, model, cfg.train, data.positive_index, t.class_weights(fold),
                          prepare=t.normalizer(), include_frozen=gradual,
                          lr_mults=step_lr_mults(model, cfg.transfer.schedule, cfg.train.lr) if gradual else None)
        images = data.loaded.images
        train = training_dataset(images, data.labels, data.groups, fold, cfg.data, data.class_names, seed)
        if t.synthetic is not None:  # augmented like the real training images
            synthetic = t.synthetic
            train = ConcatDataset([train, ImageArrayDataset(synthetic.images, synthetic.labels,
                                                            np.arange(len(synthetic.labels)),
                                                            build_augment(cfg.data.augment))])
        val = ImageArrayDataset(images, data.labels, fold.val) if len(fold.val) else None
        callbacks = [GradualUnfreeze(cfg.transfer.schedule)] if gradual else []
        result = t.fit(module, train, val, seed, callbacks)
        t.test_time_adapt(result.model, result.model, fold, target, t.normalizer(), seed)
        probs = predict_probs(result.model, t.normalizer(), images, fold.test, cfg.train.batch_size * 2,
                              cfg.evaluate.tta, t.device, t.progress, cfg.train.fast_inference)
        return result, probs


class CachedFit(FitPath):
    """Only the part above the frozen prefix, on cached prefix activations (``train.prefix_cache``)."""

    name = "cached"

    def fit(self, t: FoldTrainer, model: TransferNet, fold: Fold, seed: int) -> tuple[FitResult, np.ndarray]:
        cfg, data = t.cfg, t.data
        cut = pc.cache_cut(model.backbone, cfg.transfer)
        split = pc.split_at(model.backbone, cut)
        assert t.spec is not None
        pre = preprocessing_for(t.spec, cfg.data.image_size, data.loaded.color, cfg.data.resize, cfg.data.crop)
        key = pc.prefix_key(split, cfg.model.backbone, pre, cfg.data.augment, seed=cfg.train.seed)
        augment = build_augment(cfg.data.augment)
        cache = pc.ActivationCache(dtype=cfg.train.cache_dtype)
        images, normalizer, fast = data.loaded.images, t.normalizer(), cfg.train.fast_inference
        views = pc.prefix_views(cache, split, key, images, normalizer, range(cfg.train.cache_views if augment else 1),
                                augment, device=t.device, progress=t.progress, fast=fast)
        tta = [views[0], *pc.prefix_views(cache, split, key, images, normalizer, TTA_VIEWS[cfg.evaluate.tta][1:],
                                          device=t.device, fast=fast)]
        train_views, train_idx, labels = _with_synthetic(t, views, fold, lambda imgs: pc.prefix_views(
            cache, split, key, imgs, normalizer, range(len(views)), augment, device=t.device, fast=fast))
        if probe_first(cfg):  # LP-FT on the cached activations: only the suffix runs
            t.probe(model, fold, seed, pc.run_cached(split.suffix, train_views[0], train_idx, device=t.device).cpu())
        net = TransferNet(split.suffix, model.head)
        net.freeze_bn_stats = model.freeze_bn_stats
        gradual = cfg.transfer.strategy == "gradual"
        target = _cached_target(t, fold, cache, split, key, views[0])
        module = t.module(target, seed, net, cfg.train.model_copy(update={"lr_mults": _suffix_mults(net, cfg)}),
                          data.positive_index, t.class_weights(fold), prepare=pc.activation_prepare,
                          include_frozen=gradual,
                          lr_mults=step_lr_mults(net, cfg.transfer.schedule, cfg.train.lr) if gradual else None)
        train = pc.PrefixViewsDataset(train_views, train_idx, labels, seed)
        val = pc.PrefixViewsDataset(views[:1], fold.val, data.labels) if len(fold.val) else None
        callbacks = [*([GradualUnfreeze(cfg.transfer.schedule)] if gradual else []), pc.ViewEpoch(train)]
        log.info("prefix cache: layers below %s run once per image (%d view(s)); training the rest", cut, len(views))
        result = t.fit(module, train, val, seed, callbacks)
        t.test_time_adapt(result.model, model, fold, target, pc.activation_prepare, seed)
        probs = pc.predict_cached(result.model, tta, fold.test, device=t.device)
        result.model = model.to("cpu").eval()  # suffix and head are shared with the full model
        return result, probs


def _with_synthetic(t: FoldTrainer, views: list[np.ndarray], fold: Fold,
                    synthetic_views: callable) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The cached training views, indices and labels of a fold, its synthetic images appended.

    The real images' blocks are shared by every fold; the synthetic images of this fold get their own
    blocks (``synthetic_views(images)``, cached under their own content hash). The training rows of
    the real blocks and the synthetic blocks are stacked (the held-out rows are left out, so only the
    training part is copied into memory), with indices ``0..n_train+n_synthetic-1``.
    """
    if t.synthetic is None:
        return views, fold.train, t.data.labels
    extra = synthetic_views(t.synthetic.images)
    stacked = [np.concatenate([np.asarray(real[fold.train]), syn]) for real, syn in zip(views, extra, strict=True)]
    labels = np.concatenate([t.data.labels[fold.train], t.synthetic.labels])
    return stacked, np.arange(len(labels)), labels


def _cached_target(t: FoldTrainer, fold: Fold, cache: pc.ActivationCache, split: pc.PrefixSplit, key: pc.PrefixKey,
                   own: np.ndarray) -> adaptation.TargetRows | None:
    """The fold's target rows as cached prefix activations: the rows of ``own`` (the run's images, view 0)
    for ``adapt.target: test``, else the target images' own cached block."""
    target = t.data.target
    if target is None:
        return None
    block = own if target.own else pc.prefix_views(cache, split, key, target.images, t.normalizer(), device=t.device,
                                                   progress=t.progress, fast=t.cfg.train.fast_inference)[0]
    return target.rows(fold, block, images=False)


def _suffix_mults(net: TransferNet, cfg: ExperimentConfig) -> dict[str, float]:
    """``train.lr_mults`` entries that name layers of the trainable suffix (the prefix is frozen)."""
    points = cut_points(net.backbone)
    return {k: v for k, v in cfg.train.lr_mults.items() if any(p == k or p.startswith(k + ".") for p in points)}


FIT_PATHS: dict[str, FitPath] = {p.name: p for p in (ClassicalFit(), BankFit(), CachedFit(), FullFit())}


def choose_fit(cfg: ExperimentConfig, model: TransferNet) -> FitPath:
    """The one place that decides how a fold's model is fitted (see the module docstring)."""
    if cfg.transfer.classifier != "head":
        return FIT_PATHS["classical"]
    if uses_feature_bank(cfg):
        return FIT_PATHS["bank"]
    if cfg.train.prefix_cache:
        cut = pc.cache_cut(model.backbone, cfg.transfer)
        if cut not in (None, "head") and not cfg.data.strategy.expand:
            return FIT_PATHS["cached"]
        log.info("train.prefix_cache: nothing frozen to cache here (cut %s); training the whole network", cut)
    return FIT_PATHS["full"]
