"""Synthetic training images (``data.synthetic``): the folder ``medtl synth`` writes, read back for one fold.

``medtl synth`` (:mod:`medtl.synth`) writes, for an experiment's folds::

    DIR/synth.json                 provenance: config hash, per fold the training-set fingerprint and ids
    DIR/manifest.csv               file, fold, class, seed, index (one row per image)
    DIR/fold{k}/<class>/*.png      images made by the generator trained on fold k's training images only

A run with ``data.synthetic: {dir: DIR, fraction: f}`` checks at its start that every fold's
fingerprint in ``synth.json`` equals its own fold's training set (:func:`check_fingerprints`), then
mixes ``round(f × n_real)`` of fold k's images into fold k's training set alone
(:func:`load_fold_synthetic`), in the real training set's class proportions: the model sees the same
class prior with and without synthetic images, so the fraction axis measures "more images" and not
"rebalanced classes".
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtl.config import SyntheticConfig
from medtl.data.images import open_image, to_array
from medtl.data.samples import Sample
from medtl.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "MANIFEST_COLUMNS", "SYNTH_JSON", "SyntheticSet", "check_fingerprints", "class_quota",
           "fold_dir", "load_fold_synthetic", "read_manifest", "read_synth_json", "train_fingerprint", "train_ids"]

SYNTH_JSON = "synth.json"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "fold", "class", "seed", "index")


def fold_dir(root: Path, fold: int) -> Path:
    """The folder of fold ``fold``'s images (one subfolder per class)."""
    return Path(root) / f"fold{fold}"


def train_ids(samples: list[Sample], indices: np.ndarray) -> list[str]:
    """The sorted sample ids of ``indices`` (a fold's training part)."""
    return sorted(samples[int(i)].id for i in indices)


def train_fingerprint(samples: list[Sample], indices: np.ndarray) -> str:
    """SHA-256 of a fold's training set: its sorted sample ids, one per line."""
    return hashlib.sha256("\n".join(train_ids(samples, indices)).encode()).hexdigest()


def read_synth_json(root: Path) -> dict:
    """``root/synth.json``, or a :class:`ConfigError` saying how to make it."""
    path = Path(root) / SYNTH_JSON
    if not path.is_file():
        raise ConfigError(f"data.synthetic.dir {root}: no {SYNTH_JSON} there; make the folder with "
                          "`medtl synth EXPERIMENT.yaml --out DIR` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data.synthetic.dir: {path} is not valid JSON ({exc}); rerun medtl synth") from None


def check_fingerprints(cfg: SyntheticConfig, samples: list[Sample], folds: list, class_names: list[str]) -> dict:
    """Refuse a synthetic folder made for another split: every fold's training fingerprint must match.

    Args:
        cfg: The ``data.synthetic`` block.
        samples: The run's samples.
        folds: The run's folds (:class:`medtl.data.splits.Fold`).
        class_names: The run's class names.

    Returns:
        The parsed ``synth.json``.

    Raises:
        ConfigError: No ``synth.json``, other classes, another number of folds, or a fold whose training
            set differs from the one the generator was trained on.
    """
    meta = read_synth_json(cfg.dir)
    if meta.get("class_names") != list(class_names):
        raise ConfigError(f"data.synthetic.dir {cfg.dir}: made for classes {meta.get('class_names')}, this run has "
                          f"{class_names}; rerun medtl synth with this experiment")
    made = {int(f["fold"]): f["train_fingerprint"] for f in meta.get("folds", [])}
    for fold in folds:
        mine = train_fingerprint(samples, fold.train)
        if made.get(fold.index) != mine:
            raise ConfigError(
                f"data.synthetic.dir {cfg.dir}: made for a different split — fold {fold.index}'s training set "
                f"(fingerprint {mine[:12]}) is not the one its generator was trained on "
                f"({str(made.get(fold.index))[:12]}); same data, data.split and data.train_fraction are needed. "
                "Rerun `medtl synth` with this experiment's config")
    return meta


def class_quota(real_labels: np.ndarray, n_classes: int, fraction: float) -> np.ndarray:
    """Synthetic images per class: ``fraction × n_real`` (rounded half up) in all, in the real class proportions.

    The split uses largest remainders, so the per-class counts add up to the total exactly.
    """
    counts = np.bincount(np.asarray(real_labels, dtype=np.int64), minlength=n_classes)
    total = int(np.floor(fraction * counts.sum() + 0.5))
    exact = total * counts / max(counts.sum(), 1)
    quota = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - quota), kind="stable")[: total - int(quota.sum())]:
        quota[c] += 1
    return quota


@dataclass
class SyntheticSet:
    """One fold's synthetic training images, decoded like real images.

    Attributes:
        images: uint8 ``(M, size, size, C)``, the run's image size and colour.
        labels: Class index per image.
        files: Paths relative to the synthetic folder.
    """

    images: np.ndarray
    labels: np.ndarray
    files: list[str]

    def counts(self, class_names: list[str]) -> dict[str, int]:
        """Images per class name."""
        return {name: int((self.labels == c).sum()) for c, name in enumerate(class_names)}


def load_fold_synthetic(cfg: SyntheticConfig, fold: int, real_labels: np.ndarray, class_names: list[str],
                        size: int, color: str, resize: str) -> SyntheticSet:
    """Fold ``fold``'s share of synthetic images (the first ones of each class, in file order).

    Args:
        cfg: The ``data.synthetic`` block (its fingerprints already checked).
        fold: The fold index.
        real_labels: Labels of the fold's real training images (they set the count per class).
        class_names: The run's class names (the subfolders).
        size: ``data.image_size``.
        color: The colour the real images were decoded to (``grayscale`` or ``rgb``).
        resize: ``data.resize``.

    Raises:
        ConfigError: A class has fewer synthetic images than its quota.
    """
    quota = class_quota(real_labels, len(class_names), cfg.fraction)
    files: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(class_names):
        folder = fold_dir(cfg.dir, fold) / name
        found = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if len(found) < quota[c]:
            raise ConfigError(f"data.synthetic: {folder} holds {len(found)} images, fraction {cfg.fraction} needs "
                              f"{quota[c]}; lower data.synthetic.fraction or rerun medtl synth with a larger "
                              "--per-class")
        files += [str(p.relative_to(cfg.dir)) for p in found[: quota[c]]]
        labels += [c] * int(quota[c])
    channels = 1 if color == "grayscale" else 3
    images = np.zeros((len(files), size, size, channels), dtype=np.uint8)
    for i, rel in enumerate(files):
        images[i] = to_array(open_image(Path(cfg.dir) / rel), size, color, resize)
    log.info("data.synthetic: fold %d trains on %d synthetic images (%s) from %s", fold, len(files),
             ", ".join(f"{n} {name}" for n, name in zip(quota, class_names, strict=True)), cfg.dir)
    return SyntheticSet(images, np.array(labels, dtype=np.int64), files)


def read_manifest(root: Path) -> list[dict[str, str]]:
    """The rows of ``root/manifest.csv``."""
    with (Path(root) / MANIFEST).open(newline="") as handle:
        return list(csv.DictReader(handle))
