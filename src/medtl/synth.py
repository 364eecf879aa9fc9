"""``medtl synth``: a class-conditional GAN per fold, trained on that fold's training images only.

The experiment's data and folds are prepared exactly as ``medtl train`` prepares them
(:func:`medtl.experiment.prepare_data`: same source, grouping, split and seed). For each fold k a
conditional DCGAN (:mod:`medtl.models.gan`, trained by :mod:`medtl.train.gan`) learns from fold k's
**training** images alone — never its validation or test images — downsized to ``size`` px, in the
data's colour. It then writes per class as many images as the class has real training images (or
``per_class``) to ``OUT/fold{k}/<class>/``, with ``OUT/manifest.csv`` and the provenance in
``OUT/synth.json``: the experiment config and its hash, per fold the training-set fingerprint and the
ids of the images used, the generator's architecture and hyper-parameters, steps, seed, times and
the medtl version (:mod:`medtl.data.synthetic` reads the folder back for ``data.synthetic``).

Quality per fold (``synth.json`` and the printed table), on pooled EfficientNet-Lite0 ImageNet
features (:mod:`medtl.evaluate.generative`; the real images are taken at the generator's size too,
so only the generator differs):

* ``fd_synthetic_vs_train`` — "FD (Lite0 features)" between the synthetic and the real training images;
* ``fd_val_vs_train`` — the same distance between two *real* sets (the fold's validation and training
  images): what a generator indistinguishable from real data would get at these sample sizes;
* ``precision`` / ``recall`` of the synthetic set against the training set (k = 3), with the
  validation-vs-training pair as the reference.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.table import Table

from medtl import rundir
from medtl.config import ExperimentConfig, dump_config
from medtl.data.splits import Fold
from medtl.data.synthetic import MANIFEST, MANIFEST_COLUMNS, SYNTH_JSON, fold_dir, train_fingerprint, train_ids
from medtl.data.transforms import Normalizer
from medtl.errors import ConfigError
from medtl.evaluate.generative import frechet_distance, precision_recall
from medtl.experiment import prepare_data
from medtl.models.gan import GanSpec
from medtl.models.network import create_model
from medtl.train.device import environment
from medtl.train.fold import PreparedData
from medtl.train.gan import GanTraining, sample_images, train_gan
from medtl.train.inference import embed

log = logging.getLogger(__name__)

__all__ = ["FEATURES", "SIZES", "SynthOptions", "fold_training_images", "lite0_features", "quality", "resize_images",
           "run_synth", "synth_table"]

SIZES: tuple[int, ...] = (32, 64, 128)
"""Generator sizes (32 px only for quick tests)."""
FEATURES = "FD (Lite0 features)"
FEATURE_BACKBONE, FEATURE_WEIGHTS, FEATURE_SIZE = "tf_efficientnet_lite0", "packaged:efficientnet_lite0", 224
PR_K = 3


@dataclass(frozen=True)
class SynthOptions:
    """What ``medtl synth`` trains and writes.

    Attributes:
        size: Generator image size (64 or 128; 32 for tests).
        steps: Generator (and discriminator) updates per fold.
        batch_size: Real images per step.
        lr: Adam learning rate of both networks.
        width: Base channel width of the networks.
        z_dim: Noise dimension.
        per_class: Images written per class and fold; None: as many as the class's real training images
            of the fold (enough for ``data.synthetic.fraction`` up to 1).
        seed: Seed of fold 0 (fold k uses ``seed + k``); None: the experiment's ``train.seed``.
        quality: Compute the FD / precision / recall report (a few seconds of Lite0 features per fold).
    """

    size: int = 64
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    width: int = 32
    z_dim: int = 64
    per_class: int | None = None
    seed: int | None = None
    quality: bool = True

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"--size {self.size}: use one of {', '.join(map(str, SIZES))}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.width < 4 or self.z_dim < 1:
            raise ConfigError("medtl synth: --steps, --batch-size, --width and --z-dim must be positive, "
                              "--lr above 0 (width at least 4)")
        if self.per_class is not None and self.per_class < 1:
            raise ConfigError(f"--per-class {self.per_class}: write at least 1 image per class")


def run_synth(cfg: ExperimentConfig, out_dir: Path, options: SynthOptions, progress: bool = True) -> dict:
    """Train one generator per fold of ``cfg`` and write the synthetic folder ``out_dir``.

    Returns:
        The provenance and quality summary (also ``out_dir/synth.json``, written last).

    Raises:
        ConfigError: ``out_dir`` already holds a synthetic set, or the experiment has no training images.
    """
    out_dir = Path(out_dir)
    if (out_dir / SYNTH_JSON).exists():
        raise ConfigError(f"--out {out_dir}: it already holds a synthetic set ({SYNTH_JSON}); choose another "
                          "folder or delete it")
    started = time.perf_counter()
    data = prepare_data(cfg, progress)
    seed = cfg.train.seed if options.seed is None else options.seed
    channels = data.loaded.images.shape[-1]
    spec = GanSpec(options.size, channels, len(data.class_names), options.z_dim, options.width)
    hp = GanTraining(options.steps, options.batch_size, options.lr)
    features = FeatureExtractor() if options.quality else None
    out_dir.mkdir(parents=True, exist_ok=True)
    folds, rows = [], []
    for fold in data.folds:
        summary, fold_rows = synth_fold(data, fold, spec, hp, seed + fold.index, options, out_dir, features, progress)
        folds.append(summary)
        rows += fold_rows
    rundir.write_csv(out_dir / MANIFEST, MANIFEST_COLUMNS, [[r[c] for c in MANIFEST_COLUMNS] for r in rows])
    config_text = dump_config(cfg)
    summary = {"experiment": cfg.name, "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
               "config": cfg.model_dump(mode="json"), "class_names": data.class_names, "color": data.loaded.color,
               "size": options.size, "seed": seed, "generator": spec.as_dict(), "training": hp.as_dict(),
               "options": asdict(options), "features": {"name": FEATURES, "backbone": FEATURE_BACKBONE,
                                                        "weights": FEATURE_WEIGHTS, "input_size": FEATURE_SIZE,
                                                        "precision_recall_k": PR_K},
               "folds": folds, "n_images": len(rows), "seconds": round(time.perf_counter() - started, 1),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment("cpu")}
    rundir.write_json(out_dir / SYNTH_JSON, summary)
    return summary


def synth_fold(data: PreparedData, fold: Fold, spec: GanSpec, hp: GanTraining, seed: int, options: SynthOptions,
               out_dir: Path, features: FeatureExtractor | None, progress: bool) -> tuple[dict, list[dict]]:
    """Train fold ``fold``'s generator on its training images, write its images; its summary and manifest rows."""
    samples = data.loaded.table.samples
    images, labels = fold_training_images(data, fold, spec.size), data.labels[fold.train]
    log.info("fold %d: training the generator on its %d training images (%d steps, %d px)", fold.index,
             len(images), hp.steps, spec.size)
    result = train_gan(images, labels, spec, hp, seed, progress)
    counts = np.bincount(labels, minlength=len(data.class_names))
    per_class = [options.per_class or int(n) for n in counts]
    wanted = np.repeat(np.arange(len(per_class)), per_class)
    fake = sample_images(result.generator, wanted, seed=seed + 10_000)
    rows = _write_images(out_dir, fold.index, fake, wanted, data.class_names, seed)
    summary = {"fold": fold.index, "seed": seed, "train_fingerprint": train_fingerprint(samples, fold.train),
               "train_ids": train_ids(samples, fold.train), "n_train": int(len(fold.train)),
               "train_class_counts": dict(zip(data.class_names, map(int, counts), strict=True)),
               "generated_per_class": dict(zip(data.class_names, per_class, strict=True)), "steps": hp.steps,
               "seconds": round(result.seconds, 1), "losses": result.losses}
    if features is not None:
        val = fold_images(data, fold.val, spec.size)
        summary["quality"] = quality(features, images, fake, val)
        log.info("fold %d: %s", fold.index, _quality_line(summary["quality"]))
    return summary, rows


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, S, S, C)`` → ``(N, size, size, C)``, antialiased bilinear."""
    if images.shape[1] == size:
        return np.ascontiguousarray(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    out = [F.interpolate(x[i:i + 64], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
           for i in range(0, len(x), 64)]
    y = torch.cat(out) if out else x.new_zeros((0, x.shape[1], size, size))
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def fold_images(data: PreparedData, indices: np.ndarray, size: int) -> np.ndarray:
    """The decoded images at ``indices``, resized to ``size``."""
    return resize_images(np.asarray(data.loaded.images[np.asarray(indices, dtype=np.int64)]), size)


def fold_training_images(data: PreparedData, fold: Fold, size: int) -> np.ndarray:
    """What fold ``fold``'s generator learns from: its training images (never validation or test), at ``size``."""
    return fold_images(data, fold.train, size)


class FeatureExtractor:
    """Pooled EfficientNet-Lite0 ImageNet features (offline weights), images resized to 224 px first."""

    def __init__(self) -> None:
        model, spec = create_model(FEATURE_BACKBONE, FEATURE_WEIGHTS, 2)
        self.backbone = model.backbone.eval()
        self.normalizer = Normalizer(spec.mean, spec.std)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        big = resize_images(images, FEATURE_SIZE)
        return embed(self.backbone, self.normalizer, big, np.arange(len(big)), batch_size=32, fast=False).numpy()


def lite0_features(images: np.ndarray) -> np.ndarray:
    """Pooled Lite0 features of uint8 ``(N, S, S, C)`` images (one-off; :class:`FeatureExtractor` keeps the model)."""
    return FeatureExtractor()(images)


def quality(features: FeatureExtractor, train: np.ndarray, fake: np.ndarray, val: np.ndarray) -> dict:
    """FD (Lite0 features) and precision/recall of ``fake`` against ``train``, with ``val`` as the real reference."""
    f_train, f_fake = features(train), features(fake)
    precision, recall = precision_recall(f_train, f_fake, PR_K)
    report = {"metric": FEATURES, "fd_synthetic_vs_train": round(frechet_distance(f_fake, f_train), 3),
              "precision": round(precision, 4), "recall": round(recall, 4),
              "n_train": len(train), "n_synthetic": len(fake), "n_val": len(val)}
    if len(val) > PR_K:
        f_val = features(val)
        ref_p, ref_r = precision_recall(f_train, f_val, PR_K)
        report |= {"fd_val_vs_train": round(frechet_distance(f_val, f_train), 3),
                   "precision_val": round(ref_p, 4), "recall_val": round(ref_r, 4)}
    return report


def _quality_line(q: dict) -> str:
    ref = (f" (real validation vs training: FD {q['fd_val_vs_train']:.1f}, precision {q['precision_val']:.2f}, "
           f"recall {q['recall_val']:.2f})") if "fd_val_vs_train" in q else ""
    return (f"{FEATURES} synthetic vs training {q['fd_synthetic_vs_train']:.1f}, precision {q['precision']:.2f}, "
            f"recall {q['recall']:.2f}{ref}")


def _write_images(out_dir: Path, fold: int, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                  seed: int) -> list[dict]:
    rows = []
    for i, (img, c) in enumerate(zip(images, labels, strict=True)):
        folder = fold_dir(out_dir, fold) / class_names[c]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"synth-f{fold}-{i:05d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
        rows.append({"file": str(path.relative_to(out_dir)), "fold": fold, "class": class_names[c], "seed": seed,
                     "index": i})
    return rows


def synth_table(summary: dict) -> Table:
    """Per fold: training images, images made, seconds, FD (Lite0 features), precision, recall."""
    table = Table(title=f"medtl synth: {summary['experiment']} ({summary['generator']['size']} px, "
                        f"{summary['training']['steps']} steps)")
    for column in ("fold", "train", "made", "s", f"{FEATURES} syn↔train", "FD val↔train", "precision", "recall",
                   "P/R val"):
        table.add_column(column, justify="right")
    for f in summary["folds"]:
        q = f.get("quality", {})
        ref = f"{q['precision_val']:.2f}/{q['recall_val']:.2f}" if "precision_val" in q else "–"
        table.add_row(str(f["fold"]), str(f["n_train"]), str(sum(f["generated_per_class"].values())),
                      f"{f['seconds']:.0f}", _num(q.get("fd_synthetic_vs_train")), _num(q.get("fd_val_vs_train")),
                      _num(q.get("precision"), 2), _num(q.get("recall"), 2), ref)
    return table


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
