"""Typed experiment configuration: YAML in, validated pydantic models out.

A config file is YAML with five blocks (``data``, ``model``, ``transfer``, ``train``,
``evaluate``). ``${VAR}`` references are expanded from the environment; ``${MEDTL_DATA}``
defaults to ``../shared/datasets`` next to the repository. Unknown keys and mistyped option
values raise :class:`~medtl.errors.ConfigError` with a did-you-mean suggestion.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtl.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def data_root() -> Path:
    """Where the shared datasets live: ``$MEDTL_DATA`` or ``<repo>/../shared/datasets``."""
    env = os.environ.get("MEDTL_DATA")
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT.parent / "shared" / "datasets").resolve()


class StrictModel(BaseModel):
    """Base for all config blocks: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(StrictModel):
    """How samples are split. ``predefined`` uses the source's own split (MedMNIST, CSV column)."""

    method: Literal["kfold", "holdout", "predefined"] = "kfold"
    folds: int = Field(5, ge=2, le=50)
    seed: int = 0
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    near_duplicates: int | None = Field(2, ge=0, le=32)


def _ordered_pair(value: tuple[float, float], low: float, high: float, what: str) -> tuple[float, float]:
    """``value`` as ``(a, b)`` with ``low <= a <= b <= high``, else a ValueError saying so."""
    a, b = value
    if a > b:
        raise ValueError(f"{what}: the first value ({a}) must not exceed the second ({b}); write [low, high]")
    if a < low or b > high:
        raise ValueError(f"{what}: [{a}, {b}] must lie within [{low}, {high}]")
    return value


class AugmentFamily(StrictModel):
    """One albumentations family of ``data.augment``: ``p`` is the chance that it is applied to an image."""

    p: float = Field(0.3, ge=0.0, le=1.0)


class ElasticAugment(AugmentFamily):
    """Elastic deformation (albumentations ``ElasticTransform``): a random displacement field per image,
    smoothed by a Gaussian of ``sigma`` pixels and scaled by ``alpha`` (bigger alpha, larger warp).

    The defaults move pixels by about 1.7 px on average (95th percentile 3.5 px) at 224 px; alpha 30,
    sigma 5 moves them by about 0.5 px, which is barely visible.
    """

    alpha: float = Field(120.0, gt=0.0, le=1000.0)
    sigma: float = Field(6.0, gt=0.0, le=100.0)


class GridAugment(AugmentFamily):
    """Grid distortion (``GridDistortion``): a ``steps`` x ``steps`` grid whose cells are stretched or
    shrunk by up to ``limit`` (a fraction of the cell)."""

    steps: int = Field(5, ge=1, le=32)
    limit: float = Field(0.3, gt=0.0, lt=1.0)


class GammaAugment(AugmentFamily):
    """Random gamma (``RandomGamma``): pixel intensities ``I/255`` raised to a power drawn from ``range``."""

    range: tuple[float, float] = (0.7, 1.5)

    @field_validator("range")
    @classmethod
    def _range_is_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, 0.05, 5.0, "gamma range")


class NoiseAugment(AugmentFamily):
    """Additive Gaussian noise (``GaussNoise``), its standard deviation drawn from ``std`` (fractions of 255)."""

    p: float = Field(0.2, ge=0.0, le=1.0)
    std: tuple[float, float] = (0.01, 0.05)

    @field_validator("std")
    @classmethod
    def _std_is_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, 0.0, 1.0, "noise std")


class BlurAugment(AugmentFamily):
    """Gaussian blur (``GaussianBlur``), its sigma in pixels drawn from ``sigma`` (kernel size from sigma)."""

    p: float = Field(0.2, ge=0.0, le=1.0)
    sigma: tuple[float, float] = (0.1, 1.5)

    @field_validator("sigma")
    @classmethod
    def _sigma_is_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, 0.01, 20.0, "blur sigma")


class ClaheAugment(AugmentFamily):
    """Local contrast equalisation (``CLAHE``) with clip limit ``clip`` on a ``tiles`` x ``tiles`` grid
    (RGB images: on the L channel of LAB)."""

    clip: float = Field(2.0, ge=1.0, le=40.0)
    tiles: int = Field(8, ge=1, le=64)


class ErasingAugment(AugmentFamily):
    """Random erasing (``Erasing``): one rectangle covering ``area`` (a fraction of the image, drawn from the
    range; aspect ratio 0.3–3.3) set to black."""

    p: float = Field(0.25, ge=0.0, le=1.0)
    area: tuple[float, float] = (0.02, 0.15)

    @field_validator("area")
    @classmethod
    def _area_is_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, 0.001, 0.9, "erasing area")


AUGMENT_FAMILIES = ("elastic", "grid", "gamma", "clahe", "blur", "noise", "erasing")
"""The albumentations families of ``data.augment``, in the order they are applied (after the torchvision ops)."""


class AugmentConfig(StrictModel):
    """Train-only augmentation. Angles in degrees, the others as fractions.

    The first seven keys are torchvision v2 ops (always applied first, unchanged); the nested blocks
    (``elastic``, ``grid``, ``gamma``, ``clahe``, ``blur``, ``noise``, ``erasing``) are albumentations
    families, each with its own probability ``p`` and strength, off unless given.
    """

    hflip: bool = False
    vflip: bool = False
    rotate: float = Field(0.0, ge=0.0, le=180.0)
    zoom: float = Field(0.0, ge=0.0, lt=1.0)
    shift: float = Field(0.0, ge=0.0, lt=0.5)
    brightness: float = Field(0.0, ge=0.0, lt=1.0)
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    elastic: ElasticAugment | None = None
    grid: GridAugment | None = None
    gamma: GammaAugment | None = None
    clahe: ClaheAugment | None = None
    blur: BlurAugment | None = None
    noise: NoiseAugment | None = None
    erasing: ErasingAugment | None = None

    @property
    def families(self) -> dict[str, AugmentFamily]:
        """The albumentations families that can fire (given, with ``p > 0``), in application order."""
        found = {name: getattr(self, name) for name in AUGMENT_FAMILIES}
        return {name: fam for name, fam in found.items() if fam is not None and fam.p > 0}

    @property
    def active(self) -> bool:
        """True when any augmentation is switched on (a torchvision op or a family with ``p > 0``)."""
        torchvision_ops = self.model_dump(exclude=set(AUGMENT_FAMILIES)).values()
        return any(bool(v) for v in torchvision_ops) or bool(self.families)


WindowPreset = Literal["brain", "subdural", "bone", "lung", "mediastinum"]
"""Named CT windows (center/width in HU): brain 40/80, subdural 75/215, bone 600/2800, lung -600/1500,
mediastinum 50/350 (values in :data:`medtl.data.dicom.WINDOW_PRESETS`)."""


class DicomConfig(StrictModel):
    """How DICOM pixels become 8-bit images and how files are keyed (``data.source: dicom``).

    The Modality LUT (RescaleSlope/Intercept) is applied first, then ``window``: ``file`` (the
    file's own VOI LUT or window; min-max when it has none), ``minmax``, a CT preset, or ``custom``
    with ``center``/``width``. MONOCHROME1 is always inverted. ``channels: replicate`` keeps one
    gray channel; ``windows`` stacks the three ``channel_windows`` as RGB (needs ``data.color: rgb``).
    Labels come from ``data.csv`` keyed by ``label_key`` (column ``key_column``, default the key's
    name); without ``data.csv`` the subfolders of ``data.root`` are the classes.
    """

    window: Literal["file", "minmax", "custom", "brain", "subdural", "bone", "lung", "mediastinum"] = "file"
    center: float | None = None
    width: float | None = Field(None, gt=0)
    channels: Literal["replicate", "windows"] = "replicate"
    channel_windows: list[WindowPreset] = Field(default_factory=lambda: ["brain", "subdural", "bone"])
    patient_tag: str = "PatientID"
    label_key: Literal["PatientID", "StudyInstanceUID", "SOPInstanceUID", "path"] = "PatientID"
    key_column: str | None = None

    @model_validator(mode="after")
    def _window_is_complete(self) -> DicomConfig:
        custom = self.center is not None and self.width is not None
        if self.window == "custom" and not custom:
            raise ValueError("data.dicom.window 'custom' needs data.dicom.center and data.dicom.width")
        if self.window != "custom" and (self.center is not None or self.width is not None):
            raise ValueError("data.dicom.center/width are used only with data.dicom.window: custom; set it")
        if len(self.channel_windows) != 3:
            raise ValueError("data.dicom.channel_windows must name exactly three windows (R, G, B)")
        return self


class NiftiIntensity(StrictModel):
    """How a NIfTI volume's values (after scl_slope/scl_inter) become 8-bit (``data.nifti.intensity``).

    ``percentile``: the volume's ``low``..``high`` percentiles map to 0..255 (per volume, e.g. MR);
    ``window``: a fixed ``center``/``width`` (e.g. CT in HU); ``minmax``: the volume's range.
    """

    method: Literal["percentile", "window", "minmax"] = "percentile"
    low: float = Field(0.5, ge=0.0, le=100.0)
    high: float = Field(99.5, ge=0.0, le=100.0)
    center: float | None = None
    width: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _method_is_complete(self) -> NiftiIntensity:
        window = self.center is not None and self.width is not None
        if self.method == "window" and not window:
            raise ValueError("data.nifti.intensity.method 'window' needs center and width (e.g. 40 and 80 for CT)")
        if self.method != "window" and (self.center is not None or self.width is not None):
            raise ValueError("data.nifti.intensity.center/width are used only with method: window; set it")
        if self.low >= self.high:
            raise ValueError(f"data.nifti.intensity.low ({self.low}) must be below high ({self.high})")
        return self


class NiftiConfig(StrictModel):
    """How NIfTI volumes become 2-D slices (``data.source: nifti``).

    Slices are cut along ``axis`` (0, 1 or 2 of the voxel array); ``slices`` keeps ``all``, the
    ``middle`` one, ``every_k`` (every ``k``-th, from 0) or those where a ``mask`` volume is non-zero
    (the file named by ``mask_suffix`` next to each volume, e.g. ``_mask`` for ``a_mask.nii.gz``, or
    by a ``mask_column`` cell of ``data.csv``). 4-D volumes use volume ``volume_index``.
    """

    axis: int = Field(2, ge=0, le=2)
    slices: Literal["all", "middle", "every_k", "mask"] = "all"
    k: int | None = Field(None, ge=1)
    mask_suffix: str | None = None
    mask_column: str = "mask"
    volume_index: int = Field(0, ge=0)
    intensity: NiftiIntensity = NiftiIntensity()

    @model_validator(mode="after")
    def _slices_are_complete(self) -> NiftiConfig:
        if (self.slices == "every_k") != (self.k is not None):
            raise ValueError("data.nifti.k is needed with, and only with, data.nifti.slices: every_k")
        return self


class StrategyConfig(StrictModel):
    """Data strategies (as in the breast tomosynthesis study), applied to the sample table in this order.

    1. ``merge`` classes (``{tumor: [benign, malignant]}``) and ``drop`` classes (``[actionable]``);
    2. ``slices``: ``all_slices``, ``one_per_volume`` or ``one_per_patient`` (the slice named in
       ``slice_csv`` with columns ``patient_id``, ``slice`` and optional ``view``, else the middle slice);
    3. ``subsample``: keep this fraction of each named class's patients (``{normal: 0.15}``), seeded.

    ``expand`` (``{tumor: 4}``) adds K augmented copies (``expand_augment``) of each *training* sample
    of a class after splitting, inside training only, so copies can never reach validation or test.
    """

    slices: Literal["all_slices", "one_per_volume", "one_per_patient"] = "all_slices"
    slice_csv: Path | None = None
    merge: dict[str, list[str]] = Field(default_factory=dict)
    drop: list[str] = Field(default_factory=list)
    subsample: dict[str, float] = Field(default_factory=dict)
    expand: dict[str, int] = Field(default_factory=dict)
    expand_augment: AugmentConfig = AugmentConfig(hflip=True, rotate=15.0, zoom=0.1, brightness=0.1)
    seed: int = 0

    @model_validator(mode="after")
    def _values_in_range(self) -> StrategyConfig:
        bad = {k: v for k, v in self.subsample.items() if not 0.0 < v <= 1.0}
        if bad:
            raise ValueError(f"data.strategy.subsample fractions must be in (0, 1]; got {bad}")
        bad = {k: v for k, v in self.expand.items() if v < 1}
        if bad:
            raise ValueError(f"data.strategy.expand copies must be at least 1; got {bad}")
        return self


LOCATION_KEYS: dict[str, str] = {"folder": "root", "csv": "csv", "medmnist": "path", "dicom": "root", "nifti": "root"}
"""The ``data`` key that holds each source's location (the folder, CSV or file it reads).

Kept here rather than on the source classes: the sources import this module, so the config cannot import
them (the one per-source fact the schema needs)."""


class SyntheticConfig(StrictModel):
    """Synthetic training images made by ``medtl synth`` (``data.synthetic``), mixed into each fold's training set.

    Fold k's training set gets ``round(fraction × its real training images)`` synthetic images from
    ``dir/fold{k}``, in the real training set's class proportions, resized like the real images. They
    are training-only extras: never in validation, test, predictions, splits.csv or the audit. The run
    refuses a ``dir`` made for another split (``dir/synth.json`` holds each fold's training-set
    fingerprint; see :mod:`medtl.data.synthetic`).
    """

    dir: Path  # the --out folder of `medtl synth` (relative paths: against the config file's folder)
    fraction: float = Field(0.5, ge=0.0, le=20.0)  # synthetic images per real training image


class DataConfig(StrictModel):
    """Where the images are, how they are labelled, split, resized and augmented."""

    source: Literal["folder", "csv", "medmnist", "dicom", "nifti"]  # each a class in medtl.data.sources.base.SOURCES
    root: Path | None = None
    csv: Path | None = None
    path: Path | None = None
    path_column: str = "path"
    label_column: str = "label"
    patient_column: str | None = "patient_id"
    split_column: str | None = "split"
    classes: list[str] | None = None
    positive_class: str | None = None
    drop_unlabelled: bool = False  # leave out (and count) CSV rows with an empty label instead of refusing them
    image_size: int = Field(224, ge=8, le=2048)
    # auto: RGB when the images carry colour, else grayscale replicated to 3 channels (decided from the data
    # in medtl.data.sources.load_images, logged, and recorded in model.json's preprocessing)
    color: Literal["auto", "grayscale", "rgb"] = "auto"
    resize: Literal["squash", "pad", "crop"] = "squash"
    crop: Literal["none", "foreground"] = "none"
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    max_per_class: int | None = Field(None, ge=1)
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    dicom: DicomConfig = DicomConfig()
    nifti: NiftiConfig = NiftiConfig()
    strategy: StrategyConfig = StrategyConfig()
    # Decoded images are kept (memory + `$MEDTL_CACHE/decoded`) and reused by later runs and study cells;
    # false decodes every file (medtl.data.decoded_cache; folder and csv sources).
    cache: bool = True
    # Where decoded images live: one in-RAM array (memory), or a read-only memory-mapped file filled chunk by
    # chunk (disk: RSS does not grow with the number of images); auto = memory up to 2 GiB decoded
    # ($MEDTL_STORAGE_MEMORY_GB), disk above (medtl.data.storage).
    storage: Literal["auto", "memory", "disk"] = "auto"
    # GAN-made training images of each fold (`medtl synth`); None: real images only
    synthetic: SyntheticConfig | None = None

    @model_validator(mode="after")
    def _source_has_location(self) -> DataConfig:
        if self.source == "dicom" and self.dicom.channels == "windows" and self.color == "grayscale":
            raise ValueError("data.dicom.channels 'windows' stacks three windows as RGB: set data.color: rgb")
        if self.source == "nifti" and self.root is None and self.csv is None:
            raise ValueError("data.source 'nifti' needs data.root (class folders of volumes) or data.csv")
        needed = self._location_key()
        if getattr(self, needed) is None:
            raise ValueError(f"data.source '{self.source}' needs data.{needed}")
        return self

    @property
    def location(self) -> Path:
        """The folder, CSV or .npz file the data comes from."""
        return getattr(self, self._location_key())

    def _location_key(self) -> str:
        """The key holding this source's location (NIfTI volumes come from class folders or a CSV)."""
        return "csv" if self.source == "nifti" and self.csv is not None else LOCATION_KEYS[self.source]


class HeadConfig(StrictModel):
    """Classification head: linear when ``hidden`` is empty, else an MLP."""

    hidden: list[int] = []
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batchnorm: bool = False


class ModelConfig(StrictModel):
    """Backbone (any timm name) and the weights to start from (``packaged:``, ``hub:``, ``file:``, ``none``)."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str = "packaged:efficientnet_lite0"
    head: HeadConfig = HeadConfig()
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)


class UnfreezeStep(StrictModel):
    """One step of a gradual-unfreezing schedule: from ``epoch`` on, train from ``unfreeze_from`` up.

    ``lr`` (optional) is the learning rate of the layers this step unfreezes.
    """

    epoch: int = Field(ge=0)
    unfreeze_from: str
    lr: float | None = Field(None, gt=0.0)


class TransferConfig(StrictModel):
    """Transfer strategy.

    - ``feature_extraction``: backbone frozen, head (or a classical ``classifier``) trained.
    - ``fine_tune``: all layers, or ``unfreeze_from`` a cut point on (``medtl layers BACKBONE``).
    - ``gradual``: unfreeze step by step following ``schedule``.
    - ``truncated``: keep the backbone up to ``truncate_at`` (TruncatedTL), pool, new head, fine-tune.
    - ``scratch``: random initialisation (``model.weights: none``); any backbone or ``small_cnn``.
    """

    strategy: Literal["feature_extraction", "fine_tune", "gradual", "truncated", "scratch"] = "fine_tune"
    unfreeze_from: str | None = None
    schedule: list[UnfreezeStep] = []
    truncate_at: str | None = None
    classifier: Literal["head", "logistic", "svm"] = "head"
    # Frozen BatchNorm statistics keep the features the linear probe was fitted on (measured:
    # a probe-initialised head under train-mode statistics starts at a loss of 20-40, docs/results.md).
    bn: Literal["train", "frozen"] = "frozen"
    head_init: Literal["zero", "linear_probe"] = "linear_probe"
    probe_c: float = Field(0.1, gt=0.0)

    @model_validator(mode="after")
    def _strategy_options(self) -> TransferConfig:
        s = self.strategy
        if self.schedule and s != "gradual":
            raise ValueError(f"transfer.schedule is for strategy 'gradual', not '{s}'")
        if s == "gradual":
            if not self.schedule:
                raise ValueError("strategy 'gradual' needs transfer.schedule, e.g. [{epoch: 0, unfreeze_from: "
                                 "head}, {epoch: 3, unfreeze_from: blocks.5}]")
            epochs = [step.epoch for step in self.schedule]
            if epochs[0] != 0 or epochs != sorted(set(epochs)):
                raise ValueError("transfer.schedule: epochs must start at 0 and increase strictly")
        if (self.truncate_at is None) == (s == "truncated"):
            raise ValueError("strategy 'truncated' needs transfer.truncate_at (and only it uses it)")
        if self.unfreeze_from not in (None, "head") and s not in ("fine_tune", "truncated"):
            raise ValueError(f"transfer.unfreeze_from is not used by strategy '{s}'"
                             + ("; use transfer.schedule" if s == "gradual" else ""))
        if self.classifier != "head" and s != "feature_extraction":
            raise ValueError("transfer.classifier logistic/svm is a feature_extraction baseline")
        return self


class EarlyStoppingConfig(StrictModel):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; the best weights are restored."""

    monitor: Literal["val_auc", "val_loss", "val_accuracy"] = "val_auc"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    tie_tolerance: float | None = Field(None, ge=0.0, le=0.5)
    # An epoch within ``tie_tolerance`` of the best score is a tie: with 'later' it replaces the kept
    # weights and resets patience (the schedule's later, lower-LR epoch wins what validation cannot
    # separate; measured in docs/results.md); with 'lower_loss' only when its validation loss is lower.
    ties: Literal["later", "lower_loss"] = "later"
    min_epochs: int | None = Field(None, ge=0)


class TrainConfig(StrictModel):
    """Optimisation settings. Defaults are the measured ones in docs/results.md."""

    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adamw"
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    scheduler: Literal["cosine", "constant"] = "cosine"
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    # Discriminative learning rates: the backbone trains at ``lr * backbone_lr_mult`` (times the
    # layer decay, and any per-cut-point ``lr_mults`` entry); the new head at ``lr``.
    backbone_lr_mult: float = Field(1.0, gt=0.0, le=1.0)
    lr_mults: dict[str, float] = Field(default_factory=dict)
    grad_clip: float | None = Field(None, gt=0.0)
    # Frozen-prefix cache (fine_tune from a cut point, gradual, truncated): the frozen layers run once
    # per image and view, on disk ($MEDTL_CACHE), and only the trainable suffix trains. With
    # augmentation, training draws one of ``cache_views`` precomputed views per image and epoch
    # (view 0 = the unaugmented image) instead of a fresh random augmentation.
    prefix_cache: bool = False
    cache_views: int = Field(4, ge=1, le=64)
    cache_dtype: Literal["float16", "float32"] = "float16"
    warmup_epochs: float = Field(1.0, ge=0.0)
    # Exponential moving average of the weights (timm's ModelEmaV3, decay warm-up on): validation,
    # early stopping and the saved model use the averaged weights. ``None`` = off.
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    # Models trained per fold, seeds train.seed + fold + 1000·m (member 0 is the single model);
    # validation and test use the mean of their softmax. Costs ``ensemble`` times the training time.
    ensemble: int = Field(1, ge=1, le=50)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Mixup / CutMix (timm ``Mixup``, one mixing coefficient per batch, soft targets): Beta(alpha, alpha)
    # parameters, 0 = off; with both on, each batch uses one of them at random. ``mix_prob``: the share of
    # training batches mixed. The mixing acts on what the trained part receives: images, the cached activation
    # maps at the cut with ``prefix_cache`` (manifold mixup), pooled features for a frozen-feature head
    # (mixup only: CutMix needs image-shaped input).
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, gt=0.0, le=1.0)
    # ``balanced``: per-class loss weights n / (K · n_k) from the fold's training labels (scikit-learn's rule);
    # with ``loss: focal`` they are the focal loss's alpha (alpha-balanced focal loss). docs/imbalance.md.
    class_weights: Literal["none", "balanced"] = "none"
    # ``focal``: the softmax focal loss of Lin et al. (2017), each image's cross-entropy times (1 - p_t)^focal_gamma
    # (p_t: the probability given to its true class), so easy, well-classified images count less; works with
    # label smoothing and Mixup / CutMix soft targets (medtl.train.losses). ``focal_gamma: 0`` is cross-entropy.
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0.0)
    # ``balanced``: each epoch draws len(training set) images with replacement, each with probability
    # proportional to 1 / (its class's count), so every class is drawn about equally often (torch
    # ``WeightedRandomSampler`` on the fit's seeded generator: deterministic and resumable). With ``ddp`` Lightning
    # splits each epoch's draw over the processes. Combined with ``class_weights: balanced`` the minority class
    # is corrected twice (a warning is logged). ``shuffle``: every image once per epoch, in random order.
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    early_stopping: EarlyStoppingConfig | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Where per-epoch figures go besides the run's live history.csv: TensorBoard event files or an MLflow
    # run per fold member (in RUN/logs; MLflow honours MLFLOW_TRACKING_URI).
    logger: Literal["history", "tensorboard", "mlflow"] = "history"
    num_workers: int | None = Field(None, ge=0)
    # Numeric precision of training: ``auto`` = mixed float16 (AMP) on a GPU, float32 on CPU (bf16
    # autocast measured slower on CPUs without native bf16, docs/performance.md); ``bf16`` = bfloat16
    # autocast on either.
    precision: Literal["auto", "32", "bf16", "16-mixed"] = "auto"
    # Frozen work (feature banks, prefix caches, test-time predictions) runs traced and frozen by
    # TorchScript on CPU: BatchNorm folded into the convolutions, 1.45x on Lite0 (medtl.models.fast).
    fast_inference: bool = True
    # ``torch.compile`` the network before training (pays a compile of minutes first; GPU runs gain).
    compile: bool = False
    progress: bool = True
    # Several processes (Lightning's names): ``devices`` per node (``auto``: every GPU, or 1 on CPU), ``num_nodes``
    # machines, ``strategy`` ``ddp`` (one process per device for the whole run; docs/scaling.md). ``batch_size``
    # stays the global batch: each of the devices × num_nodes processes loads an equal share of it.
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> TrainConfig:
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"train.devices must be at least 1 or 'auto' (it is {self.devices})")
        if self.strategy in ("ddp_spawn", "fsdp"):
            why = ("starts fresh processes for each fit only, so the early-stopping state, the history and the "
                   "feature bank would not come back to the run" if self.strategy == "ddp_spawn" else
                   "shards weights that medtl's CNNs fit on one device, and best-weights selection needs them whole")
            raise ValueError(f"train.strategy '{self.strategy}' is not supported: it {why}; use train.strategy: ddp "
                             "(the same processes run the whole experiment; see docs/scaling.md)")
        many = self.devices == "auto" or self.devices > 1 or self.num_nodes > 1
        if many and self.strategy == "auto":
            raise ValueError(f"train.devices {self.devices} × train.num_nodes {self.num_nodes} (may) ask for several "
                             "processes: set train.strategy: ddp")
        if isinstance(self.devices, int) and self.batch_size % (self.devices * self.num_nodes):
            raise ValueError(f"train.batch_size {self.batch_size} is the global batch and must split evenly over "
                             f"train.devices × train.num_nodes = {self.devices * self.num_nodes} processes")
        return self


class PatientLevelConfig(StrictModel):
    """Patient-level evaluation: one score per patient from its slices' (mean / max / top-k mean)."""

    method: Literal["mean", "max", "topk_mean"] = "mean"
    k: int = Field(3, ge=1)


class EvaluateConfig(StrictModel):
    """How results are computed: bootstrap resamples, operating point, calibration, TTA, report."""

    @model_validator(mode="after")
    def _target_for_rule(self) -> EvaluateConfig:
        needs = self.threshold_rule in ("sensitivity", "specificity")
        if needs and self.threshold_target is None:
            raise ValueError(f"evaluate.threshold_rule '{self.threshold_rule}' needs evaluate.threshold_target, "
                             "e.g. 0.95")
        return self

    bootstrap: int = Field(1000, ge=0)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # Operating point chosen on validation data only: 'fixed' uses ``threshold``; 'youden' maximises
    # sensitivity + specificity - 1; 'sensitivity' / 'specificity' reach ``threshold_target``.
    threshold_rule: Literal["fixed", "youden", "sensitivity", "specificity"] = "fixed"
    threshold_target: float | None = Field(None, gt=0.0, le=1.0)
    temperature_scaling: bool = False
    report: bool = True
    # Test-time augmentation: the softmax averaged over the views (medtl.data.transforms.TTA_VIEWS).
    tta: Literal["none", "hflip", "hflip_zoom"] = "hflip"
    # List the images whose held-out prediction contradicts their label (label_issues.csv, cleanlab).
    label_issues: bool = True
    patient_level: PatientLevelConfig | None = None


class StageConfig(StrictModel):
    """One bridge stage of a multi-stage transfer: its own data and (optionally) strategy and training.

    Blocks left out are taken from the experiment's top level. A bridge stage hands one model on,
    so its split must be ``holdout`` or ``predefined``.
    """

    name: str
    data: DataConfig
    transfer: TransferConfig | None = None
    train: TrainConfig | None = None
    evaluate: EvaluateConfig | None = None

    @model_validator(mode="after")
    def _one_model(self) -> StageConfig:
        if self.data.split.method == "kfold":
            raise ValueError(f"stage '{self.name}': a bridge stage hands one model to the next stage; use "
                             "data.split.method holdout or predefined")
        if self.transfer is not None and self.transfer.strategy == "truncated":
            raise ValueError(f"stage '{self.name}': truncate in the final stage, not in a bridge stage")
        return self


class TentConfig(StrictModel):
    """Test-time entropy minimisation (``adapt.method: tent``, Wang et al. 2021): after training, only the
    BatchNorm affine parameters of the trained layers are optimised (Adam) to make the predictions on the
    target images confident; BatchNorm normalises with target statistics."""

    epochs: int = Field(1, ge=1, le=100)  # passes over the target images
    lr: float = Field(1e-3, gt=0.0)


class AdaptConfig(StrictModel):
    """Unsupervised domain adaptation with unlabelled target-domain images (transductive: every figure of
    such a run says so). Target labels are never read.

    - ``dann``: a domain classifier on the pooled backbone features behind a gradient-reversal layer
      (Ganin & Lempitsky 2015); ``weight`` is the largest λ of the schedule λ_p = weight·(2/(1+e^(-10p))-1).
    - ``coral``: Deep CORAL (Sun & Saenko 2016), the squared Frobenius distance between the source and
      target covariances of the pooled features / 4d², times ``weight``.
    - ``tent``: after training, :class:`TentConfig`.

    ``target``: ``test`` (each fold's own held-out test images) or a data block (``csv`` and ``folder``
    sources need no labels: a CSV's path column, every image under a folder).
    """

    method: Literal["dann", "coral", "tent"]
    target: Literal["test"] | DataConfig = "test"
    weight: float = Field(1.0, gt=0.0)
    # DANN's domain classifier: pooled features → hidden → 1 logit (Ganin's small MLP, one hidden layer).
    domain_hidden: int = Field(256, ge=1)
    tent: TentConfig = TentConfig()


class ExperimentConfig(StrictModel):
    """One experiment: the whole YAML file.

    ``stages`` (multi-stage transfer) lists bridge stages run in order before the main experiment;
    each starts from the previous stage's backbone with a fresh head.
    """

    name: str = "experiment"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    transfer: TransferConfig = TransferConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    stages: list[StageConfig] = []
    adapt: AdaptConfig | None = None  # None: no domain adaptation

    @field_validator("name")
    @classmethod
    def _name_is_filename_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError("name may contain only letters, digits, '.', '_' and '-'")
        return v

    @model_validator(mode="after")
    def _scratch_has_no_weights(self) -> ExperimentConfig:
        if self.transfer.strategy == "scratch" and self.stages:
            raise ValueError("a multi-stage run's final stage starts from the bridge model; it cannot be 'scratch'")
        if self.transfer.strategy == "scratch" and self.model.weights != "none":
            raise ValueError(f"transfer.strategy 'scratch' trains from random initialisation: set model.weights: "
                             f"none (it is '{self.model.weights}')")
        if self.transfer.strategy == "gradual" and self.train.strategy == "ddp":
            raise ValueError("transfer.strategy 'gradual' cannot run with train.strategy 'ddp': DDP fixes the "
                             "trainable parameters when it wraps the model, so layers unfrozen later would not be "
                             "synchronised; use fine_tune, or train.strategy: auto with train.devices: 1")
        self._adapt_is_possible()
        return self

    def _adapt_is_possible(self) -> None:
        if self.adapt is None:
            return
        method = self.adapt.method
        if self.transfer.strategy == "feature_extraction":
            raise ValueError(f"adapt.method '{method}' adapts trainable backbone layers, and transfer.strategy "
                             "'feature_extraction' trains the head alone (its features never change): use "
                             "transfer.strategy fine_tune (e.g. with unfreeze_from), or drop adapt")
        if self.train.strategy != "auto" or self.train.devices != 1 or self.train.num_nodes > 1:
            raise ValueError(f"adapt.method '{method}' runs in one process: set train.strategy: auto, "
                             "train.devices: 1 and train.num_nodes: 1 (several processes are not supported with adapt)")


# ---------------------------------------------------------------- loading


def expand_vars(value: Any) -> Any:
    """Expand ``${VAR}`` in every string of a parsed YAML tree (``MEDTL_DATA`` has a default)."""
    if isinstance(value, dict):
        return {k: expand_vars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_vars(v) for v in value]
    if isinstance(value, str):
        return _VAR.sub(_lookup_var, value)
    return value


def _lookup_var(match: re.Match[str]) -> str:
    name = match.group(1)
    if name == "MEDTL_DATA":
        return str(data_root())
    if name not in os.environ:
        raise ConfigError(f"${{{name}}} is used in the config but the environment variable {name} is not set")
    return os.environ[name]


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}': expected dotted.key=value, e.g. train.lr=0.001")
    key, raw = assignment.split("=", 1)
    key = ".".join(p for p in key.strip().split(".") if p)
    if not key:
        raise ConfigError(f"--set '{assignment}': empty key")
    if not isinstance(tree, dict):
        raise ConfigError(f"--set '{assignment}': the config's top level is a {type(tree).__name__}, not a mapping "
                          "with data/model/transfer/train blocks; fix the YAML file")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{assignment}': the value is not valid YAML ({' '.join(str(exc).split())}); "
                          "quote it, e.g. --set 'name=\"a: b\"'") from None
    set_dotted(tree, key, value, f"--set '{assignment}'", merge=False)


def set_dotted(tree: dict[str, Any], key: str, value: Any, source: str = "<config>", merge: bool = True) -> None:
    """Set ``a.b.c`` in a nested mapping in place, creating blocks; with ``merge`` mappings merge into mappings."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{key}': '{part}' holds a value ({child!r}), not a block")
        node = child
    leaf = parts[-1]
    if merge and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = _merge(node[leaf], value)
    else:
        node[leaf] = copy.deepcopy(value)


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else copy.deepcopy(value)
    return out


def parse_config(tree: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a YAML tree into an :class:`ExperimentConfig`, with readable errors."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with data/model/transfer/train blocks")
    try:
        return ExperimentConfig.model_validate(expand_vars(tree))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def read_yaml(path: Path, what: str = "file") -> Any:
    """A YAML file's tree (``{}`` when empty), or a :class:`ConfigError` naming the file."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file, apply ``--set`` overrides and validate it.

    Relative data paths are resolved against the config file's folder.
    """
    path = Path(path)
    tree = read_yaml(path, "config file")
    for assignment in overrides or []:
        apply_override(tree, assignment)
    cfg = parse_config(tree, str(path))
    return resolve_paths(cfg, path.parent)


def load_data_config(path: str | Path) -> DataConfig:
    """Read the ``data`` block of a YAML file (an experiment config, or a bare data block).

    Validated like :func:`load_config` (did-you-mean on a misspelt key or option) and with relative
    ``root``/``csv``/``path`` resolved against the YAML file's folder.

    Raises:
        ConfigError: The file is missing, not YAML, or its data block is invalid.
    """
    path = Path(path)
    tree = read_yaml(path, "data file")
    data = tree.get("data", tree) if isinstance(tree, dict) else tree
    return resolve_paths(parse_config({"data": data}, str(path)), path.parent).data


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Make the data location absolute, relative to ``base`` (the config file's folder)."""
    for stage in cfg.stages:
        _resolve_data_paths(stage.data, base)
    _resolve_data_paths(cfg.data, base)
    return cfg


def _resolve_data_paths(data: DataConfig, base: Path) -> None:
    for key in ("root", "csv", "path"):
        value = getattr(data, key)
        if value is not None and not value.is_absolute():
            setattr(data, key, (base / value).resolve())
    if data.strategy.slice_csv is not None and not data.strategy.slice_csv.is_absolute():
        data.strategy.slice_csv = (base / data.strategy.slice_csv).resolve()
    if data.synthetic is not None and not data.synthetic.dir.is_absolute():
        data.synthetic.dir = (base / data.synthetic.dir).resolve()


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  - {loc}: {_explain(err)}")
    return "\n".join(lines)


def _explain(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        fields = _fields_at(err["loc"][:-1])
        hint = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{key}'.{suggestion} Valid keys: {', '.join(fields)}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = difflib.get_close_matches(str(err["input"]), choices, n=1, cutoff=0.4)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        return f"'{err['input']}' is not a valid option.{suggestion} Choose one of: {', '.join(choices)}"
    return err["msg"]


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = ExperimentConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    return sorted(getattr(model, "model_fields", {}).keys())


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
