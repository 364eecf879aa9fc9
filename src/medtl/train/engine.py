"""The training engine: a Lightning module around any classifier, best-weights early stopping,
warm-up + cosine learning-rate schedule, class weights, the focal loss, a class-balanced sampler and a NaN guard.

Lightning is the engine so that the same code runs on a laptop CPU, one GPU (AMP) or several
processes (``train.strategy: ddp``; :mod:`medtl.train.distributed`). With several processes every one
validates its share of the images; the outputs are gathered and each image counted once, so every
process computes the same metrics and makes the same early-stopping decision.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import sklearn
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import Logger
from sklearn.metrics import accuracy_score, roc_auc_score
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset, WeightedRandomSampler

from medtl.config import TrainConfig
from medtl.errors import TrainingError
from medtl.train.device import resolve_device
from medtl.train.distributed import IndexedDataset, gather_unique, per_process_batch, world_size
from medtl.train.losses import make_losses

log = logging.getLogger(__name__)

_MODES = {"val_auc": "max", "val_accuracy": "max", "val_loss": "min"}


@dataclass
class FitResult:
    """What :func:`fit` returns: the model with its best weights restored and the epoch history."""

    model: nn.Module | None
    """None once a run has saved it and needs it no more (``medtl.experiment`` keeps the last fold's only)."""
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float | None = None
    stopped_early: bool = False


class ClassifierModule(L.LightningModule):
    """Training of ``model`` by ``train.loss`` (cross-entropy or focal); ``prepare`` maps a raw batch to model input."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, positive_index: int | None,
                 class_weights: torch.Tensor | None = None,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 include_frozen: bool = False, lr_mults: dict[str, float] | None = None) -> None:
        """``include_frozen``: put frozen parameters into the optimizer too (gradual unfreezing);
        ``lr_mults``: extra per-cut-point learning-rate multipliers on top of ``train.lr_mults``."""
        super().__init__()
        self.include_frozen = include_frozen
        self.lr_mults = lr_mults or {}
        self.model = model
        self.cfg = cfg
        self.positive_index = positive_index
        self.prepare = prepare or (lambda x: x)
        # Mixed batches carry soft targets that already include the label smoothing (soft_loss_fn).
        self.loss_fn, self.soft_loss_fn = make_losses(cfg, class_weights)
        self.mixer: Mixup | None = None
        self.history: list[dict[str, float]] = []
        self.epoch_hook: Callable[[list[dict[str, float]]], None] | None = None
        """Called with the history after every epoch (a run's history.csv grows as it trains)."""
        self._train: list[tuple[float, int, int]] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # The weights validation and best-weights selection use (an EMA copy when ``train.ema_decay``);
        # a plain attribute, not a submodule, so it stays out of the optimizer and the state dict.
        object.__setattr__(self, "eval_model", None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["medtl_history"] = [dict(row) for row in self.history]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [dict(row) for row in checkpoint.get("medtl_history", [])]

    def evaluated(self) -> nn.Module:
        """The network that validation scores and early stopping keeps: the EMA copy, else the model."""
        return self.eval_model if self.eval_model is not None else self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = self.prepare(x)
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            x, target = self._mix(x, y)
            logits = self.classify(x)
            loss = self.soft_loss_fn(logits.float(), target)
            y = target.argmax(1)  # training accuracy against the dominant label of each mixed image
        else:
            logits = self.classify(x)
            loss = self.loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}; "
                "lower train.lr, switch train.optimizer, or check the input images")
        correct = int((logits.argmax(1) == y).sum())
        self._train.append((float(loss.detach()) * len(y), correct, len(y)))
        return loss

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a prepared training batch (a subclass may keep intermediate features)."""
        return self.model(x)

    def extra_param_groups(self) -> list[dict]:
        """Optimizer groups of parameters outside the model (e.g. a domain classifier); none here."""
        return []

    def epoch_extras(self) -> dict[str, float]:
        """Extra figures of the training epoch for its history row (none here)."""
        return {}

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup / CutMix of a training batch (timm ``Mixup``): mixed inputs and soft targets.

        timm mixes an even batch with its reverse; an odd batch's last image stays unmixed (one-hot
        target, smoothed), so no image is dropped from an epoch.
        """
        if self.mixer is None:
            if self.cfg.cutmix > 0 and x.dim() != 4:
                raise TrainingError(f"train.cutmix needs image-shaped input, got a batch of shape {tuple(x.shape)} "
                                    "(a head trained on frozen features); use train.mixup there, or cutmix: 0")
            self.mixer = Mixup(mixup_alpha=self.cfg.mixup, cutmix_alpha=self.cfg.cutmix, prob=self.cfg.mix_prob,
                               label_smoothing=self.cfg.label_smoothing, num_classes=_num_outputs(self.model))
        n = len(y) - len(y) % 2
        if n == 0:
            return x, mixup_target(y, self.mixer.num_classes, 1.0, self.cfg.label_smoothing)
        x = x.clone()
        x[:n], mixed = self.mixer(x[:n], y[:n])
        if n == len(y):
            return x, mixed
        rest = mixup_target(y[n:], self.mixer.num_classes, 1.0, self.cfg.label_smoothing)
        return x, torch.cat([mixed, rest])

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """A validation batch ``(x, y, index)`` (:class:`IndexedDataset`); a plain ``(x, y)`` is numbered by
        its position, which is only right in a single process."""
        x, y, *index = batch
        if not index:
            start = sum(len(v[1]) for v in self._val)
            index = [torch.arange(start, start + len(y))]
        self._val.append((self.evaluated()(self.prepare(x)).float().detach().cpu(), y.detach().cpu(),
                          index[0].detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val or self.trainer.sanity_checking:
            self._val.clear()
            return
        _, logits, y = gather_unique(*(torch.cat([v[k] for v in self._val]) for k in (2, 0, 1)))
        self._val.clear()
        probs = logits.softmax(1).numpy()
        with sklearn.config_context(skip_parameter_validation=True):  # per epoch: validated inputs, no overhead
            accuracy, auc = validation_scores(y.numpy(), probs, self.positive_index)
        self._log_gathered("val_loss", float(nn.functional.cross_entropy(logits, y)))
        self._log_gathered("val_accuracy", accuracy)
        self._log_gathered("val_auc", _nan_to(auc, 0.0))
        self._log_gathered("val_auc_se", auc_standard_error(_nan_to(auc, 0.5), y.numpy(), self.positive_index))
        self._log_gathered("val_accuracy_se", math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / len(y)))

    def _log_gathered(self, name: str, value: float) -> None:
        """Log a metric of the gathered validation set: the same value in every process (synchronised with
        ``max``, which keeps it exactly, so Lightning knows it is global)."""
        many = self.trainer.world_size > 1
        self.log(name, value, sync_dist=many, reduce_fx="max" if many else "mean")

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, n = (sum(v) for v in zip(*self._train, strict=True)) if self._train else (0, 0, 0)
        self._train.clear()
        if self.trainer.world_size > 1:  # every process's share of the epoch (padding repeats included)
            total = torch.tensor([loss_sum, correct, n], dtype=torch.float64, device=self.device)
            loss_sum, correct, n = self.trainer.strategy.reduce(total, reduce_op="sum").tolist()
        row = {"epoch": self.current_epoch, "train_loss": loss_sum / max(n, 1),
               "train_accuracy": correct / max(n, 1), "lr": self.optimizers().param_groups[0]["lr"],
               **self.epoch_extras()}
        for key in ("val_loss", "val_accuracy", "val_auc"):
            if key in self.trainer.callback_metrics:
                row[key] = float(self.trainer.callback_metrics[key])
        self.history.append(row)
        if self.logger is not None:  # train.logger: the epoch's training figures (validation ones are logged)
            self.logger.log_metrics({k: float(v) for k, v in row.items() if k.startswith("train_") or k == "lr"},
                                    step=self.current_epoch)
        if self.epoch_hook is not None:
            self.epoch_hook(self.history)
        log.info("epoch %d: %s", self.current_epoch,
                 ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))

    def configure_optimizers(self) -> dict:
        optimizer = make_optimizer(self.model, self.cfg, self.include_frozen, self.lr_mults)
        for group in self.extra_param_groups():  # scheduled like the model's groups
            optimizer.add_param_group(group)
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        schedule = warmup_cosine(int(self.cfg.warmup_epochs * steps_per_epoch), int(total),
                                 cosine=self.cfg.scheduler == "cosine")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _num_outputs(model: nn.Module) -> int:
    """Classes a classifier predicts: the output width of its last linear layer."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise TrainingError("train.mixup / train.cutmix: the model has no linear output layer to size the targets")
    return linear[-1].out_features


def validation_scores(y: np.ndarray, probs: np.ndarray, positive_index: int | None) -> tuple[float, float]:
    """Accuracy and AUC of one validation pass, as :func:`medtl.evaluate.metrics.compute_metrics` defines them.

    Binary (two columns): predicted positive iff ``probs[:, positive] >= 0.5`` (positive 1 by default),
    ROC AUC of that column. More classes: argmax accuracy, macro one-vs-rest AUC over the classes
    present. The AUC is nan when fewer than two classes are present. (Computed here with scikit-learn
    so that training does not depend on the evaluation layer; a test checks both agree.)

    Args:
        y: Class indices, shape (n,).
        probs: Class probabilities, shape (n, K).
        positive_index: Positive class of a binary problem (None: class 1); ignored for K > 2.

    Returns:
        ``(accuracy, auc)``.
    """
    p = np.asarray(probs, dtype=float)
    labels = np.asarray(y).astype(int)
    if p.shape[1] == 2:
        pos = 1 if positive_index is None else positive_index
        truth, scores = (labels == pos).astype(int), p[:, pos]
        pred = (scores >= 0.5).astype(int)
        auc = float(roc_auc_score(truth, scores)) if np.unique(truth).size == 2 else math.nan
        return float(accuracy_score(truth, pred)), auc
    present = np.unique(labels)
    auc = float(np.mean([roc_auc_score(labels == c, p[:, c]) for c in present])) if present.size > 1 else math.nan
    return float(accuracy_score(labels, np.argmax(p, axis=1))), auc


def auc_standard_error(auc: float, y: np.ndarray, positive_index: int | None) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from the class sizes.

    For more than two classes the smallest class is taken as the positive side (conservative).
    """
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2:
        return 0.0
    if positive_index is not None and len(np.bincount(y)) > positive_index and len(counts) == 2:
        n1 = int((y == positive_index).sum())
        n2 = len(y) - n1
    else:
        n1, n2 = int(counts.min()), int(len(y) - counts.min())
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n2 - 1) * (q2 - auc * auc)) / (n1 * n2)
    return math.sqrt(max(var, 0.0))


def _nan_to(value: float, default: float) -> float:
    return default if value is None or math.isnan(value) else value


def make_optimizer(model: nn.Module, cfg: TrainConfig, include_frozen: bool = False,
                   extra_mults: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over trainable parameters (all parameters with ``include_frozen``).

    No weight decay on biases and norms. With ``train.layer_decay`` the backbone's cut points get
    learning rates ``lr · decay^k`` (k = cut points above it), so early, generic layers move least;
    ``train.backbone_lr_mult`` and ``train.lr_mults`` scale the backbone / named cut points.
    """
    mults = dict(cfg.lr_mults)
    for key, value in (extra_mults or {}).items():
        mults[key] = mults.get(key, 1.0) * value
    groups = []
    for mult, params in lr_multipliers(model, cfg.layer_decay, cfg.backbone_lr_mult, mults):
        trainable = [p for p in params if p.requires_grad or include_frozen]
        groups += [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": cfg.weight_decay,
                    "lr": cfg.lr * mult},
                   {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0, "lr": cfg.lr * mult}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise TrainingError("no trainable parameters: check transfer.strategy / transfer.unfreeze_from")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    factory = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return factory(groups, lr=cfg.lr)


def lr_multipliers(model: nn.Module, decay: float | None, backbone_mult: float = 1.0,
                   mults: dict[str, float] | None = None) -> list[tuple[float, list[nn.Parameter]]]:
    """(multiplier, parameters) per cut point of a TransferNet's backbone, then the rest (the head).

    A cut point's multiplier is ``backbone_mult · decay^k`` (k = cut points above it) times the
    ``mults`` entry naming it or a parent (``blocks`` covers ``blocks.3``). Models without a
    ``backbone`` (or with no multipliers at all) get one group.
    """
    backbone = getattr(model, "backbone", None)
    mults = mults or {}
    if backbone is None or (decay is None and backbone_mult == 1.0 and not mults):
        return [(1.0, list(model.parameters()))]
    from medtl.models.cuts import cut_points

    points = cut_points(backbone)
    unknown = [k for k in mults if not any(p == k or p.startswith(k + ".") for p in points)]
    if unknown:
        raise TrainingError(f"train.lr_mults: {unknown} name no cut point of this backbone; "
                            f"valid: {', '.join(points)} (see `medtl layers`)")
    seen: set[int] = set()
    out = []
    for depth, name in enumerate(points):
        params = list(backbone.get_submodule(name).parameters())
        seen.update(id(p) for p in params)
        mult = backbone_mult * (decay ** (len(points) - depth) if decay else 1.0)
        for key, value in mults.items():
            if name == key or name.startswith(key + "."):
                mult *= value
        out.append((mult, params))
    stray = [p for name, p in backbone.named_parameters() if id(p) not in seen]  # e.g. a final conv_head
    seen.update(id(p) for p in stray)
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [*out, (backbone_mult, stray), (1.0, rest)]


def warmup_cosine(warmup_steps: int, total_steps: int, cosine: bool = True) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 1% to 1, then cosine decay to 1% (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class WeightEma(L.Callback):
    """An exponential moving average of the weights, updated after every optimizer step.

    timm's ``ModelEmaV3`` with its decay warm-up (decay ``1 - (1 + t)^(-2/3)`` capped at ``decay``),
    so a run of a few dozen steps averages its recent steps rather than the random start. The EMA
    copy becomes the module's ``eval_model``: validation, early stopping and the returned weights use it.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from timm.utils.model_ema import ModelEmaV3

        self.ema = ModelEmaV3(pl_module.model, decay=self.decay, use_warmup=True)
        object.__setattr__(pl_module, "eval_model", self.ema.module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.ema.update(pl_module.model, step=trainer.global_step)


class EpochCheckpoint(Checkpoint):
    """After every epoch, an atomic, resumable checkpoint: weights, optimizer, scheduler, loop position,
    early-stopping state, history, every RNG state and the data order.

    A Lightning ``Checkpoint`` callback, so it runs after the module's own epoch-end hook (the history row
    of the epoch is in it). Loading it later restores the RNG states and the shuffling generator at the
    epoch boundary, so a resumed fit continues exactly as the uninterrupted one would have.
    """

    def __init__(self, path: Path, generator: torch.Generator) -> None:
        self.path = Path(path)
        self.generator = generator

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every process calls save_checkpoint (it synchronises them); Lightning writes on global rank 0 only.
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        # The full state. False is Lightning's default too; saying so keeps it from logging
        # "`weights_only` was not set" after every epoch.
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        py_state = random.getstate()
        return {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        self.generator.set_state(state_dict["generator"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class BestWeights(L.Callback):
    """Keep the best weights by a validation metric (and the last good ones); stop on patience.

    For ``val_auc`` / ``val_accuracy`` on small validation sets the metric saturates and jumps by
    one case at a time, so an early, poorly calibrated epoch can win by a hair. Epochs whose score
    is within ``tie_tolerance`` of the best are treated as ties. ``ties='later'``: a tie takes the
    place of the kept weights and resets patience, so training goes on while validation cannot tell
    the epochs apart and the later (lower-LR, more converged) one is kept; ``ties='lower_loss'``: only
    a tie with a lower validation loss replaces them. ``tie_tolerance=None`` uses one standard error
    of the best score (Hanley–McNeil for AUC, binomial for accuracy). Measured in docs/results.md.
    """

    def __init__(self, monitor: str | None, patience: int | None, min_delta: float = 0.0,
                 tie_tolerance: float | None = 0.0, min_epochs: int = 0, ties: str = "later") -> None:
        self.monitor = monitor
        self.ties = ties
        self.min_epochs = min_epochs
        self.mode = _MODES.get(monitor or "", "max")
        self.patience = patience
        self.min_delta = min_delta
        self.tie_tolerance = tie_tolerance if monitor != "val_loss" else 0.0
        self.best_se = 0.0
        self.best_score: float | None = None
        self.best_loss = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_good: dict[str, torch.Tensor] | None = None
        self.wait = 0
        self.stopped = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluated = pl_module.evaluated() if hasattr(pl_module, "evaluated") else pl_module.model
        state = _cpu_state(evaluated)
        self.last_good = state
        score = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if score is None:
            self.best_state, self.best_epoch = state, trainer.current_epoch
            return
        score, loss = float(score), float(trainer.callback_metrics.get("val_loss", math.inf))
        se = float(trainer.callback_metrics.get(f"{self.monitor}_se", 0.0))
        if self._improved(score) or self._better_tie(score, loss):
            if self._improved(score):
                self.best_score, self.best_se = score, se
            self.best_loss, self.best_epoch, self.best_state, self.wait = loss, trainer.current_epoch, state, 0
            return
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience and trainer.current_epoch + 1 >= self.min_epochs:
            self.stopped = trainer.should_stop = True
            log.info("early stopping at epoch %d: %s has not improved for %d epochs (best %.4f at %d)",
                     trainer.current_epoch, self.monitor, self.wait, self.best_score, self.best_epoch)

    def state_dict(self) -> dict:
        """What a resumed fit needs (weights-only types: tensors, numbers, None)."""
        return {k: getattr(self, k) for k in ("best_se", "best_score", "best_loss", "best_epoch", "best_state",
                                              "last_good", "wait", "stopped")}

    def load_state_dict(self, state_dict: dict) -> None:
        for key, value in state_dict.items():
            setattr(self, key, value)

    def _improved(self, score: float) -> bool:
        if self.best_score is None:
            return True
        if self.mode == "max":
            return score > self.best_score + self.min_delta
        return score < self.best_score - self.min_delta

    def _better_tie(self, score: float, loss: float) -> bool:
        tolerance = self.best_se if self.tie_tolerance is None else self.tie_tolerance
        if self.best_score is None or not tolerance:
            return False
        if abs(score - self.best_score) > tolerance:
            return False
        return self.ties == "later" or loss < self.best_loss


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def class_weights_for(labels: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    """``balanced`` weights n / (K · n_k), as scikit-learn computes them; None for ``none``."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def accelerator(cfg: TrainConfig) -> str:
    """Lightning accelerator for ``train.device`` (``auto`` → GPU when one is present)."""
    return "gpu" if resolve_device(cfg.device) == "cuda" else "cpu"


def lightning_precision(cfg: TrainConfig) -> str:
    """Lightning's ``precision`` for ``train.precision`` on the chosen accelerator."""
    gpu = accelerator(cfg) == "gpu"
    if cfg.precision == "auto":
        return "16-mixed" if gpu else "32-true"
    if cfg.precision == "16-mixed" and not gpu:
        raise TrainingError("train.precision '16-mixed' needs a GPU; on CPU use 'bf16' or '32'")
    return {"32": "32-true", "bf16": "bf16-mixed", "16-mixed": "16-mixed"}[cfg.precision]


def loader(dataset: Dataset, cfg: TrainConfig, shuffle: bool, seed: int, batch_size: int | None = None,
           balanced: bool = False) -> DataLoader:
    """A DataLoader sized to the machine: in-process on CPU, workers on GPU; ``batch_size`` (default
    ``train.batch_size``) per process. ``balanced``: draw with :func:`balanced_sampler` instead of shuffling.

    With several processes Lightning replaces a shuffling sampler by a ``DistributedSampler`` seeded from the
    fit's seed (``seed_everything``), so each process reads its share of the images; a balanced sampler it
    wraps in its ``DistributedSamplerWrapper``: every process makes the same draw (same seed) and reads its
    share of it.
    """
    cuda = resolve_device(cfg.device) == "cuda"
    workers = cfg.num_workers if cfg.num_workers is not None else (4 if cuda else 0)
    generator = torch.Generator().manual_seed(seed)
    sampler = balanced_sampler(dataset_targets(dataset), generator) if balanced else None
    return DataLoader(dataset, batch_size=batch_size or cfg.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=workers, generator=generator, drop_last=False,
                      persistent_workers=workers > 0, pin_memory=cuda)


def balanced_sampler(labels: np.ndarray, generator: torch.Generator) -> WeightedRandomSampler:
    """A class-balanced sampler: ``len(labels)`` draws with replacement, each image weighted by 1 / (its class's
    count), so each class present is drawn with equal probability.

    ``generator`` makes the draw (the loader's own, so the epoch checkpoint's generator state covers it).
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.size == 0:
        raise TrainingError("train.sampler 'balanced' needs training images; the training set is empty")
    counts = np.bincount(labels)
    weights = torch.from_numpy(1.0 / counts[labels]).double()
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """The labels of a training set's items, in item order, read without loading the images.

    Understands datasets with a ``targets()`` method (medtl's image and cached-activation datasets),
    ``TensorDataset`` (labels in its last tensor), ``Subset`` and ``ConcatDataset`` of those.

    Raises:
        TrainingError: The dataset's labels cannot be read this way.
    """
    if hasattr(dataset, "targets") and callable(dataset.targets):
        return np.asarray(dataset.targets(), dtype=np.int64)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].numpy().astype(np.int64)
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_targets(d) for d in dataset.datasets])
    raise TrainingError(f"train.sampler 'balanced' cannot read the labels of a {type(dataset).__name__}: give it a "
                        "targets() method returning the label of every item, or use train.sampler: shuffle")


def min_epochs(cfg: TrainConfig) -> int:
    """Epochs before early stopping may stop: ``early_stopping.min_epochs``, by default half of ``epochs``.

    Early on, a small validation set's AUC is noisy and the learning rate is still high; stopping
    there keeps an under-trained, poorly calibrated model (measured in docs/results.md).
    """
    es = cfg.early_stopping
    if es is None:
        return cfg.epochs
    return es.min_epochs if es.min_epochs is not None else math.ceil(cfg.epochs / 2)


def _fit_interruptible(trainer: L.Trainer, module: ClassifierModule, train_loader: DataLoader,
                       val_loader: DataLoader | None, ckpt_path: Path | None = None) -> None:
    """``trainer.fit`` that lets Ctrl-C reach the caller as KeyboardInterrupt.

    Lightning answers Ctrl-C by ignoring SIGINT from then on and calling ``sys.exit(1)``; medtl's run
    wants to say what it kept, and the next Ctrl-C must work again.
    """
    in_main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if in_main and handler is not None:
            signal.signal(signal.SIGINT, handler)


def fit(module: ClassifierModule, train: Dataset, val: Dataset | None, cfg: TrainConfig,
        seed: int, progress: bool = True, callbacks: list[L.Callback] | None = None,
        checkpoint: Path | None = None, on_epoch: Callable[[list[dict[str, float]]], None] | None = None,
        logger: Logger | None = None) -> FitResult:
    """Train ``module``; restore the best weights by ``train.early_stopping.monitor`` on ``val``.

    Without a validation set (or without early stopping) the weights of the last epoch are kept,
    unless a validation set is given, in which case the best epoch by ``val_auc`` is restored.
    ``checkpoint``: write a resumable checkpoint there after every epoch, and continue from it when it
    exists (loaded with ``weights_only=True``); ignored with ``train.ema_decay``, whose average is not
    checkpointed (such a fit restarts from its first epoch). ``on_epoch`` is called with the history after
    every epoch; ``logger`` (a Lightning logger, e.g. :func:`medtl.train.loggers.make_logger`) receives the
    epoch's figures too.
    """
    es = cfg.early_stopping
    monitor = (es.monitor if es else "val_auc") if val is not None and len(val) else None
    keeper = BestWeights(monitor, es.patience if es else None, es.min_delta if es else 0.0,
                         es.tie_tolerance if es else 0.0, min_epochs(cfg),  # None: one standard error
                         es.ties if es else "lower_loss")
    batch = per_process_batch(cfg, world_size(cfg, accelerator(cfg) == "gpu"))
    if cfg.sampler == "balanced" and cfg.class_weights == "balanced":
        log.warning("train.sampler 'balanced' with train.class_weights 'balanced' corrects the class imbalance "
                    "twice (balanced batches, then weights favouring the rarer classes); use one of them unless "
                    "that is intended (docs/imbalance.md)")
    train_loader = loader(train, cfg, shuffle=True, seed=seed, batch_size=batch, balanced=cfg.sampler == "balanced")
    val_loader = loader(IndexedDataset(val), cfg, shuffle=False, seed=seed, batch_size=batch) if monitor else None
    saver = [EpochCheckpoint(checkpoint, train_loader.generator)] if checkpoint and not cfg.ema_decay else []
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=accelerator(cfg), devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, logger=logger if logger is not None else False,
        enable_checkpointing=bool(saver), enable_model_summary=False, num_sanity_val_steps=0,
        enable_progress_bar=progress, deterministic=True,
        callbacks=[*(callbacks or []), *([WeightEma(cfg.ema_decay)] if cfg.ema_decay else []), keeper, *saver],
        gradient_clip_val=cfg.grad_clip,
        precision=lightning_precision(cfg))
    module.epoch_hook = on_epoch
    resume_from = checkpoint if saver and checkpoint.is_file() else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    # Lightning keeps each module's train/eval mode as it finds it; a backbone used for a linear
    # probe or a feature bank is in eval mode, so set the modes the transfer policy asks for.
    module.model.train()
    if cfg.compile:
        module.model.compile()  # in place: parameter names (and saved state dicts) stay the same
    try:
        _fit_interruptible(trainer, module, train_loader, val_loader, resume_from)
    except TrainingError as exc:
        exc.last_good = keeper.last_good  # type: ignore[attr-defined]
        raise
    module.model.load_state_dict(keeper.best_state or _cpu_state(module.model))
    module.model.to("cpu").eval()
    return FitResult(model=module.model, history=module.history, best_epoch=keeper.best_epoch,
                     best_score=keeper.best_score, stopped_early=keeper.stopped)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy (for fold-independent starting points)."""
    return copy.deepcopy(model)
