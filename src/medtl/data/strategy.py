"""Data strategies for imbalanced, multi-image-per-patient data (``data.strategy``).

The breast tomosynthesis study that motivates these options merged benign and malignant into one
``tumor`` class, dropped the ``actionable`` group, kept 15% of the normal patients, and compared
training on every slice with training on one slice per patient, expanding the small positive class
with augmented copies. Everything that changes *which samples exist* (:func:`apply_strategy`) runs
on the sample table before splitting. Augmented copies (:func:`training_dataset`) are made after
splitting, from the training indices of one fold only, so they can never reach validation or test.

Slice selection reads ``Sample.meta``: ``volume`` (the multi-frame file or the series), ``slice``
(frame index or InstanceNumber) and ``view`` (e.g. ``LCC``). Sources without that metadata are
treated as one volume per patient whose slices are the patient's images in id order.
"""

from __future__ import annotations

import csv
import difflib
import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from medtl.config import AugmentConfig, DataConfig, StrategyConfig
from medtl.data.samples import Sample
from medtl.data.splits import Fold
from medtl.data.storage import take_one
from medtl.data.transforms import ImageArrayDataset, build_augment
from medtl.errors import DataError

logger = logging.getLogger(__name__)

SLICE_CSV_COLUMNS: tuple[str, ...] = ("patient_id", "slice")
"""Required columns of ``data.strategy.slice_csv`` (an optional ``view`` column narrows the volume)."""


# ---------------------------------------------------------------- before splitting


def apply_strategy(
    samples: list[Sample], class_names: list[str], cfg: StrategyConfig
) -> tuple[list[Sample], list[str]]:
    """Merge/drop classes, select slices and subsample classes by patient.

    Args:
        samples: The source's samples.
        class_names: Their class names (``Sample.label`` indexes this list).
        cfg: The ``data.strategy`` block.

    Returns:
        The remaining samples (labels re-indexed) and the new class names.

    Raises:
        DataError: A class named in the strategy does not exist, or ``one_per_patient`` without patient ids.
    """
    samples, class_names = map_classes(samples, class_names, cfg.merge, cfg.drop)
    _check_class_names(list(cfg.subsample) + list(cfg.expand), class_names, "subsample/expand")
    if cfg.slices != "all_slices":
        samples = select_slices(samples, cfg.slices, cfg.slice_csv)
    if cfg.subsample:
        samples = subsample_patients(samples, class_names, cfg.subsample, cfg.seed)
    return samples, class_names


def map_classes(
    samples: list[Sample], class_names: list[str], merge: dict[str, list[str]], drop: list[str]
) -> tuple[list[Sample], list[str]]:
    """Merge classes into new ones and drop classes; the samples of dropped classes are removed.

    The merged class takes the place of its first member in the class order.

    Args:
        samples: Samples labelled by index into ``class_names``.
        class_names: Current class names.
        merge: ``{new name: [old names]}``.
        drop: Class names whose samples are removed.

    Returns:
        The kept samples, relabelled, and the new class names.

    Raises:
        DataError: Unknown class names, a class merged twice, or a class both merged and dropped.
    """
    if not merge and not drop:
        return samples, class_names
    members = [name for olds in merge.values() for name in olds]
    _check_class_names(members + list(drop), class_names, "merge/drop")
    twice = sorted({n for n in members if members.count(n) > 1} | (set(members) & set(drop)))
    if twice:
        raise DataError(f"data.strategy: classes {twice} are merged twice or both merged and dropped; "
                        "name every class at most once in merge and drop")
    target = {old: new for new, olds in merge.items() for old in olds}
    new_names: list[str] = []
    for name in class_names:
        mapped = target.get(name, name)
        if name not in drop and mapped not in new_names:
            new_names.append(mapped)
    index = {old: new_names.index(target.get(old, old)) for old in class_names if old not in drop}
    kept = [replace(s, label=index[class_names[s.label]]) for s in samples if class_names[s.label] in index]
    logger.info("data.strategy: classes %s -> %s (%d of %d samples kept)", class_names, new_names,
                len(kept), len(samples))
    return kept, new_names


def _check_class_names(names: list[str], class_names: list[str], what: str) -> None:
    for name in names:
        if name not in class_names:
            hint = difflib.get_close_matches(name, class_names, n=1, cutoff=0.5)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
            raise DataError(f"data.strategy {what}: class '{name}' does not exist.{suggestion} "
                            f"Classes (after merging): {class_names}")


def _patient_key(sample: Sample) -> str:
    return sample.patient if sample.patient is not None else f"img:{sample.id}"


def _volume_key(sample: Sample) -> tuple[str, str]:
    return str(sample.meta.get("view", "")), str(sample.meta.get("volume", _patient_key(sample)))


def _slice_of(sample: Sample, order: int) -> int:
    return int(sample.meta.get("slice", order))


def select_slices(samples: list[Sample], mode: str, slice_csv: Path | None = None) -> list[Sample]:
    """Keep one slice per volume or per patient (the one named in ``slice_csv``, else the middle one).

    Args:
        samples: Samples with ``meta`` ``volume``/``slice``/``view`` (see the module docstring).
        mode: ``one_per_volume`` or ``one_per_patient``.
        slice_csv: Optional CSV (columns ``patient_id``, ``slice``, optional ``view``) naming the
            slice to keep for a patient, e.g. the radiologist's reviewed slice.

    Returns:
        The selected samples, in their original order.

    Raises:
        DataError: No patient ids for ``one_per_patient``, or a named slice that does not exist.
    """
    if mode == "one_per_patient" and all(s.patient is None for s in samples):
        raise DataError("data.strategy.slices 'one_per_patient' needs patient ids, and the source has none; "
                        "use one_per_volume or a source with patient ids")
    named = _read_slice_csv(slice_csv) if slice_csv is not None else {}
    by_unit: dict[object, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_unit[_patient_key(s) if mode == "one_per_patient" else (_patient_key(s), _volume_key(s))].append(i)
    chosen = [_choose(samples, idx, named) for idx in by_unit.values()]
    logger.info("data.strategy.slices %s: %d of %d samples kept (%d named in %s)", mode, len(chosen),
                len(samples), sum(1 for i in chosen if _patient_key(samples[i]) in named), slice_csv)
    return [samples[i] for i in sorted(chosen)]


def _choose(samples: list[Sample], idx: list[int], named: dict[str, tuple[int, str | None]]) -> int:
    patient = _patient_key(samples[idx[0]])
    if patient in named:
        return _named_slice(samples, idx, patient, *named[patient])
    first_volume = min(_volume_key(samples[i]) for i in idx)
    volume = [i for i in idx if _volume_key(samples[i]) == first_volume]
    volume.sort(key=lambda i: (_slice_of(samples[i], i), samples[i].id))
    return volume[len(volume) // 2]


def _named_slice(samples: list[Sample], idx: list[int], patient: str, slice_no: int, view: str | None) -> int:
    hits = [i for i in idx if _slice_of(samples[i], i) == slice_no
            and (view is None or str(samples[i].meta.get("view", "")) == view)]
    if not hits:
        raise DataError(f"data.strategy.slice_csv names slice {slice_no}{f' of view {view}' if view else ''} "
                        f"for patient '{patient}', but that patient has no such slice; fix the row")
    return min(hits, key=lambda i: _volume_key(samples[i]))


def _read_slice_csv(path: Path) -> dict[str, tuple[int, str | None]]:
    if not path.is_file():
        raise DataError(f"data.strategy.slice_csv {path} does not exist; fix the path")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SLICE_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: columns {missing} missing (header {reader.fieldnames}); "
                            f"data.strategy.slice_csv needs {list(SLICE_CSV_COLUMNS)} and optionally 'view'")
        rows = list(reader)
    try:
        return {r["patient_id"].strip(): (int(r["slice"]), (r.get("view") or "").strip() or None) for r in rows}
    except ValueError as exc:
        raise DataError(f"{path}: a 'slice' cell is not an integer ({exc}); slices are 0-based indices") from None


def subsample_patients(
    samples: list[Sample], class_names: list[str], fractions: dict[str, float], seed: int
) -> list[Sample]:
    """Keep a seeded random fraction of the patients of some classes (all their images or none).

    Args:
        samples: Samples (patients from ``Sample.patient``; images without one count as their own patient).
        class_names: Class names.
        fractions: ``{class name: fraction of its patients to keep}``.
        seed: Random seed.

    Returns:
        The kept samples, order preserved.
    """
    rng = np.random.default_rng(seed)
    patients: dict[int, set[str]] = defaultdict(set)
    for s in samples:
        patients[s.label].add(_patient_key(s))
    dropped: set[str] = set()
    for name, fraction in sorted(fractions.items()):
        label = class_names.index(name)
        pool = sorted(patients[label] - set().union(*(p for k, p in patients.items() if k != label)))
        keep = max(1, round(fraction * len(pool))) if pool else 0
        dropped |= set(pool) - set(rng.choice(pool, size=keep, replace=False).tolist() if pool else [])
        logger.info("data.strategy.subsample: class '%s' keeps %d of %d patients", name, keep, len(pool))
    return [s for s in samples if _patient_key(s) not in dropped]


# ---------------------------------------------------------------- after splitting


@dataclass
class ExpandedTrain:
    """Augmented copies of training samples.

    Attributes:
        images: uint8 ``(M, S, S, C)`` copies.
        labels: Their labels.
        groups: Their groups: always the group of the sample they were made from.
        source: Index of the source sample of each copy (into the full sample list).
    """

    images: np.ndarray
    labels: np.ndarray
    groups: list[str]
    source: np.ndarray


def expand_training(
    images: np.ndarray,
    labels: np.ndarray,
    groups: list[str],
    fold: Fold,
    copies: dict[int, int],
    augment: AugmentConfig,
    seed: int,
) -> ExpandedTrain:
    """Make ``copies[label]`` augmented copies of every training sample of a class (offline augmentation).

    Only ``fold.train`` is read, and every copy keeps its source's group; the result is checked so
    that no copy's group is in the fold's validation or test part.

    Args:
        images: All decoded images, uint8 ``(N, S, S, C)``.
        labels: All labels.
        groups: Group id per sample.
        fold: The fold whose training part is expanded.
        copies: ``{label index: number of copies per sample}``.
        augment: The augmentation that makes each copy.
        seed: Seed of the copies' random transforms.

    Returns:
        The copies.

    Raises:
        DataError: A copy's group occurs in validation or test (cannot happen unless ``fold`` leaks).
    """
    source = np.array([i for i in fold.train for _ in range(copies.get(int(labels[i]), 0))], dtype=np.int64)
    pipeline = build_augment(augment)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        made = [_augment_one(take_one(images, i), pipeline) for i in source]
    shape = (0, *images.shape[1:])
    out = ExpandedTrain(np.stack(made) if made else np.zeros(shape, np.uint8), labels[source],
                        [groups[i] for i in source], source)
    check_expansion(out, fold, groups)
    logger.info("fold %d: %d augmented training copies added (%s per sample by label)", fold.index,
                len(source), copies)
    return out


def _augment_one(image: np.ndarray, pipeline: torch.nn.Module | None) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if pipeline is not None:
        x = pipeline(x)
    return x.permute(1, 2, 0).numpy()


def check_expansion(expanded: ExpandedTrain, fold: Fold, groups: list[str]) -> None:
    """Raise unless every copy comes from ``fold.train`` and no copy's group is in val or test.

    Raises:
        DataError: A copy came from outside the training part or shares a group with val/test.
    """
    outside = np.setdiff1d(expanded.source, fold.train)
    if len(outside):
        raise DataError(f"fold {fold.index}: augmented copies made from non-training samples {outside[:5].tolist()}")
    held_out = {groups[i] for i in np.concatenate([fold.val, fold.test])}
    leaking = sorted(set(expanded.groups) & held_out)
    if leaking:
        raise DataError(f"leakage: augmented copies of group '{leaking[0]}' while that group is in "
                        f"validation/test of fold {fold.index}; build folds with make_folds")


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    groups: list[str],
    fold: Fold,
    cfg: DataConfig,
    class_names: list[str],
    seed: int,
) -> Dataset:
    """The training set of one fold: its samples, plus augmented copies when ``data.strategy.expand`` is set.

    Args:
        images: All decoded images.
        labels: All labels.
        groups: Group id per sample.
        fold: The fold.
        cfg: The ``data`` block (``augment`` for on-line augmentation, ``strategy.expand`` for copies).
        class_names: Class names (``expand`` is keyed by name).
        seed: Seed of the copies.

    Returns:
        A dataset of ``(uint8 CHW tensor, label)`` items.
    """
    online = build_augment(cfg.augment)
    base = ImageArrayDataset(images, labels, fold.train, online)
    if not cfg.strategy.expand:
        return base
    copies = {class_names.index(name): k for name, k in cfg.strategy.expand.items()}
    extra = expand_training(images, labels, groups, fold, copies, cfg.strategy.expand_augment, seed)
    if not len(extra.labels):
        return base
    copies_ds = ImageArrayDataset(extra.images, extra.labels, np.arange(len(extra.labels)), online)
    return ConcatDataset([base, copies_ds])
