"""Grouped, stratified train/val/test splits that are checked for leakage.

Samples are first joined into groups (:func:`assign_groups`): images of one patient, and images
with identical pixels, always share a group, and a group never straddles train/val/test
(:func:`check_folds` asserts this after every split). Within those constraints the class ratios of
every role are kept close to the whole data set's.

Group ids are deterministic strings:

* ``patient:<id>`` for a group containing a patient id (the smallest id when duplicate images link
  several patients),
* ``dup:<first 12 hex chars of the pixel hash>`` for identical images without patient ids,
* ``img:<sample id>`` for a single image without patient id or duplicate.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medtl.config import SplitConfig
from medtl.data.samples import Sample, SampleTable
from medtl.data.storage import take
from medtl.errors import DataError

logger = logging.getLogger(__name__)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # set bits per byte

ROLES: tuple[str, ...] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "fold", "role", "id", "path", "label", "class_name", "patient", "group", "meta"
)
"""Columns of ``splits.csv``; ``meta`` is ``Sample.meta`` as JSON (DICOM study/series/view/slice), else empty."""
_MAX_LISTED = 5
_HASH_BATCH = 256  # images read at once for perceptual hashing


@dataclass
class Fold:
    """One split of the samples; the arrays hold sorted int indices into the samples.

    Attributes:
        index: Fold number, from 0.
        train: Training indices.
        val: Validation indices (may be empty).
        test: Test indices.
    """

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def role(self, name: str) -> np.ndarray:
        """Indices of ``train``, ``val`` or ``test``."""
        if name not in ROLES:
            raise ValueError(f"unknown role '{name}'; choose one of {ROLES}")
        return getattr(self, name)


# ---------------------------------------------------------------- groups


class _UnionFind:
    """Disjoint sets over ``0..n-1``; the smallest index is each set's root."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_groups(samples: list[Sample], hashes: list[str],
                  links: list[tuple[int, int]] | None = None) -> list[str]:
    """Group samples that share a patient or identical pixels (connected components).

    Args:
        samples: The samples (e.g. ``LoadedImages.table.samples``).
        hashes: Pixel hash per sample, same order.
        links: Extra index pairs that must share a group (e.g. near-duplicate images).

    Returns:
        One group id per sample (see the module docstring for the format).

    Raises:
        DataError: ``samples`` and ``hashes`` differ in length.
    """
    if len(samples) != len(hashes):
        raise DataError(
            f"assign_groups: {len(samples)} samples but {len(hashes)} hashes; pass one hash per sample"
        )
    if not any(s.patient is not None for s in samples):
        logger.warning(
            "no patient ids: grouping by duplicate image content only; "
            "images of one patient may straddle splits"
        )
    components = _components(samples, hashes, links or [])
    _warn_suspicious(samples, hashes, components)
    groups = [""] * len(samples)
    for members in components:
        name = _group_name(samples, hashes, members)
        for i in members:
            groups[i] = name
    logger.info("%d samples in %d groups", len(samples), len(components))
    return groups


def _components(samples: list[Sample], hashes: list[str], links: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of 'same patient', 'same hash' or linked, each sorted, in order of first member."""
    sets = _UnionFind(len(samples))
    for a, b in links:
        sets.union(a, b)
    first: dict[tuple[str, str], int] = {}
    for i, (sample, digest) in enumerate(zip(samples, hashes, strict=True)):
        keys = [("hash", digest)] + ([("patient", sample.patient)] if sample.patient is not None else [])
        for key in keys:
            sets.union(first.setdefault(key, i), i)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(samples)):
        members[sets.find(i)].append(i)
    return list(members.values())


def _group_name(samples: list[Sample], hashes: list[str], members: list[int]) -> str:
    patients = sorted({samples[i].patient for i in members if samples[i].patient is not None})
    if patients:
        return f"patient:{patients[0]}"
    if len(members) > 1:
        return f"dup:{hashes[members[0]][:12]}"
    return f"img:{samples[members[0]].id}"


def _warn_suspicious(samples: list[Sample], hashes: list[str], components: list[list[int]]) -> None:
    """Log duplicates that link different patients or carry different labels."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(hashes):
        by_hash[digest].append(i)
    dups = [idx for idx in by_hash.values() if len(idx) > 1]
    conflicting = [[samples[i].id for i in idx] for idx in dups if len({samples[i].label for i in idx}) > 1]
    if conflicting:
        logger.warning(
            "%d sets of identical images carry different labels: %s",
            len(conflicting),
            conflicting[:_MAX_LISTED],
        )
    linked = [sorted({samples[i].patient for i in c} - {None}) for c in components]
    linked = [p for p in linked if len(p) > 1]
    if linked:
        logger.warning(
            "identical images link different patients, who are kept together: %s", linked[:_MAX_LISTED]
        )
    logger.info("%d sets of identical images (%d redundant)", len(dups), sum(len(d) - 1 for d in dups))


# ---------------------------------------------------------------- folds


def make_folds(
    labels: np.ndarray,
    groups: list[str],
    predefined: list[str | None],
    cfg: SplitConfig,
    train_fraction: float = 1.0,
    *,
    class_names: list[str] | None = None,
) -> list[Fold]:
    """Build grouped, stratified folds and check them for leakage.

    ``kfold`` gives ``cfg.folds`` folds whose test parts partition the samples; ``holdout`` and
    ``predefined`` give one fold. Validation is carved from the non-test part with
    ``cfg.val_fraction`` of it (groups kept whole, class ratios kept close). For ``predefined``,
    samples of a group that also occurs in a later role (train < val < test) are dropped from the
    earlier role, with a warning, so the given test set stays as published.

    Args:
        labels: Class index per sample.
        groups: Group id per sample (:func:`assign_groups`).
        predefined: Split given by the source per sample (``train``/``val``/``test`` or None).
        cfg: The ``data.split`` block.
        train_fraction: Keep this fraction of each fold's training groups (learning curves).
        class_names: Names used in error messages.

    Returns:
        The folds, checked by :func:`check_folds`.

    Raises:
        DataError: Too few groups for the folds, missing predefined splits, or failed checks.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise DataError("make_folds: no samples to split; check the data source and data.max_per_class")
    if not len(labels) == len(groups) == len(predefined):
        raise DataError(
            f"make_folds: {len(labels)} labels, {len(groups)} groups, {len(predefined)} predefined splits; "
            "pass one of each per sample"
        )
    codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].reshape(-1)
    if cfg.method == "kfold":
        folds = _kfold(labels, codes, cfg, class_names)
    elif cfg.method == "holdout":
        folds = _holdout(labels, codes, cfg)
    else:
        folds = _predefined(labels, codes, groups, predefined, cfg)
    if train_fraction < 1.0:
        folds = [_reduce_train(f, labels, codes, train_fraction, cfg.seed) for f in folds]
    check_folds(folds, labels, groups, int(labels.max()) + 1, class_names=class_names)
    _log_folds(folds, labels)
    return folds


def _rng(seed: int, fold: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**32, fold, purpose])


def _carve(
    idx: np.ndarray, labels: np.ndarray, codes: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held): ``fraction`` of it in held, whole groups, per-class counts close.

    Groups are visited in random order and taken when that brings the held per-class counts
    closer (L1) to ``fraction`` of the per-class counts of ``idx``.
    """
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    if fraction <= 0 or len(idx) == 0:
        return idx, np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(codes[idx], return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.zeros((int(inverse.max()) + 1, int(labels.max()) + 1))
    np.add.at(counts, (inverse, labels[idx]), 1)
    target = fraction * counts.sum(axis=0)
    held_counts = np.zeros_like(target)
    chosen = np.zeros(len(counts), dtype=bool)
    for g in rng.permutation(len(counts)):
        candidate = held_counts + counts[g]
        if np.abs(candidate - target).sum() < np.abs(held_counts - target).sum():
            chosen[g], held_counts = True, candidate
    held = chosen[inverse]
    return idx[~held], idx[held]


def _kfold(
    labels: np.ndarray, codes: np.ndarray, cfg: SplitConfig, class_names: list[str] | None
) -> list[Fold]:
    _check_enough_groups(labels, codes, cfg.folds, class_names)
    splitter = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed % 2**32)
    folds = []
    for k, (rest, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, codes)):
        train, val = _carve(rest, labels, codes, cfg.val_fraction, _rng(cfg.seed, k, 1))
        folds.append(Fold(k, train, val, np.sort(test)))
    return folds


def _check_enough_groups(
    labels: np.ndarray, codes: np.ndarray, folds: int, class_names: list[str] | None
) -> None:
    for label in np.unique(labels):
        n_groups = len(np.unique(codes[labels == label]))
        if n_groups < folds:
            name = _class_name(int(label), class_names)
            raise DataError(
                f"class '{name}' has {n_groups} patient/image groups but data.split.folds is {folds}: "
                "every test fold needs each class; lower data.split.folds, use method holdout, or add data"
            )


def _holdout(labels: np.ndarray, codes: np.ndarray, cfg: SplitConfig) -> list[Fold]:
    rest, test = _carve(np.arange(len(labels)), labels, codes, cfg.test_fraction, _rng(cfg.seed, 0, 0))
    train, val = _carve(rest, labels, codes, cfg.val_fraction, _rng(cfg.seed, 0, 1))
    return [Fold(0, train, val, test)]


def _predefined(
    labels: np.ndarray, codes: np.ndarray, groups: list[str], predefined: list[str | None], cfg: SplitConfig
) -> list[Fold]:
    roles = _predefined_roles(predefined)
    parts = {role: np.flatnonzero(roles == role) for role in ROLES}
    for role in ("train", "test"):
        if len(parts[role]) == 0:
            raise DataError(
                f"data.split.method is 'predefined' but no sample has split '{role}'; "
                "add it to the source's split column or use data.split.method kfold or holdout"
            )
    parts = _drop_straddling(parts, codes, groups)
    if len(parts["val"]) == 0:
        logger.info("no predefined 'val': carving %.0f%% of train as validation", 100 * cfg.val_fraction)
        parts["train"], parts["val"] = _carve(
            parts["train"], labels, codes, cfg.val_fraction, _rng(cfg.seed, 0, 1)
        )
    return [Fold(0, parts["train"], parts["val"], parts["test"])]


def _predefined_roles(predefined: list[str | None]) -> np.ndarray:
    missing = [i for i, role in enumerate(predefined) if role is None]
    if missing:
        raise DataError(
            f"data.split.method is 'predefined' but {len(missing)} samples have no split "
            f"(e.g. sample indices {missing[:_MAX_LISTED]}); fill the source's split column for every "
            "row or use data.split.method kfold or holdout"
        )
    unknown = sorted({str(role) for role in predefined} - set(ROLES))
    if unknown:
        raise DataError(
            f"predefined split values {unknown} are not train/val/test; fix the source's split column"
        )
    return np.asarray(predefined, dtype=str)


def _drop_straddling(
    parts: dict[str, np.ndarray], codes: np.ndarray, groups: list[str]
) -> dict[str, np.ndarray]:
    """Drop samples whose group also occurs in a later role (test wins over val, val over train)."""
    later: set[int] = set(codes[parts["test"]].tolist())
    for role in ("val", "train"):
        idx = parts[role]
        leaking = np.isin(codes[idx], list(later))
        if leaking.any():
            names = sorted({groups[i] for i in idx[leaking]})
            logger.warning(
                "predefined split: %d %s samples share a patient or identical image with a later split "
                "and are left out of %s to avoid leakage (groups %s)",
                int(leaking.sum()),
                role,
                role,
                names[:_MAX_LISTED],
            )
        parts[role] = idx[~leaking]
        later |= set(codes[parts[role]].tolist())
    return parts


def _reduce_train(fold: Fold, labels: np.ndarray, codes: np.ndarray, fraction: float, seed: int) -> Fold:
    _, kept = _carve(fold.train, labels, codes, fraction, _rng(seed, fold.index, 2))
    logger.info(
        "fold %d: train_fraction %.2f keeps %d of %d training samples",
        fold.index,
        fraction,
        len(kept),
        len(fold.train),
    )
    return Fold(fold.index, kept, fold.val, fold.test)


def _log_folds(folds: list[Fold], labels: np.ndarray) -> None:
    n_classes = int(labels.max()) + 1
    for fold in folds:
        sizes = {role: np.bincount(labels[fold.role(role)], minlength=n_classes).tolist() for role in ROLES}
        logger.info("fold %d: per-class counts %s", fold.index, sizes)


def _class_name(label: int, class_names: list[str] | None) -> str:
    return class_names[label] if class_names and 0 <= label < len(class_names) else str(label)


# ---------------------------------------------------------------- checks


def check_folds(
    folds: list[Fold],
    labels: np.ndarray,
    groups: list[str],
    n_classes: int,
    *,
    class_names: list[str] | None = None,
) -> None:
    """Assert that folds are valid: no leakage, no sample in two roles, every class trained on.

    Checks, per fold: indices in range and unique, train and test non-empty, no sample and no group
    in two roles, every class that occurs in ``labels`` present in train and in a non-empty val.
    With several folds (k-fold), the test parts must partition all samples exactly once.

    Args:
        folds: The folds to check.
        labels: Class index per sample.
        groups: Group id per sample.
        n_classes: Number of classes (labels must be below it).
        class_names: Names used in error messages.

    Raises:
        DataError: The first violated rule, naming the fold, the role and the group or class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels outside 0..{n_classes - 1}; the labels do not match the class list")
    group_arr = np.asarray(groups, dtype=object)
    for fold in folds:
        _check_indices(fold, len(labels))
        _check_disjoint(fold)
        _check_leakage(fold, group_arr)
        _check_fold_classes(fold, labels, np.unique(labels), class_names)
    if len(folds) > 1:
        _check_partition(folds, len(labels))


def _check_indices(fold: Fold, n: int) -> None:
    for role in ROLES:
        idx = fold.role(role)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"fold {fold.index}: {role} holds indices outside 0..{n - 1}")
        if len(np.unique(idx)) != len(idx):
            raise DataError(f"fold {fold.index}: {role} lists a sample more than once")
    for role in ("train", "test"):
        if len(fold.role(role)) == 0:
            raise DataError(f"fold {fold.index}: {role} is empty; add data or change data.split")


def _check_disjoint(fold: Fold) -> None:
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = np.intersect1d(fold.role(a), fold.role(b))
        if len(both):
            raise DataError(
                f"fold {fold.index}: sample index {int(both[0])} is in both {a} and {b} ({len(both)} such)"
            )


def _check_leakage(fold: Fold, groups: np.ndarray) -> None:
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(set(groups[fold.role(a)]) & set(groups[fold.role(b)]))
        if shared:
            raise DataError(
                f"leakage: group '{shared[0]}' is in both {a} and {b} of fold {fold.index} "
                f"({len(shared)} groups shared); a patient's images and identical images must stay in "
                "one role: build folds with make_folds from assign_groups"
            )


def _check_fold_classes(
    fold: Fold, labels: np.ndarray, present: np.ndarray, class_names: list[str] | None
) -> None:
    hint = "lower data.split.folds / raise data.split.val_fraction / add data"
    for role in ("train", "val"):
        idx = fold.role(role)
        if role == "val" and len(idx) == 0:
            continue
        absent = np.setdiff1d(present, labels[idx])
        if len(absent):
            name = _class_name(int(absent[0]), class_names)
            raise DataError(f"class '{name}' absent from {_ROLE_WORDS[role]} of fold {fold.index}: {hint}")
    absent_test = np.setdiff1d(present, labels[fold.test])
    if len(absent_test):
        logger.warning(
            "fold %d: classes %s absent from test",
            fold.index,
            [_class_name(int(c), class_names) for c in absent_test],
        )


_ROLE_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _check_partition(folds: list[Fold], n: int) -> None:
    times = np.bincount(np.concatenate([f.test for f in folds]).astype(np.int64), minlength=n)
    wrong = np.flatnonzero(times != 1)
    if len(wrong):
        raise DataError(
            f"k-fold test parts do not partition the samples: sample index {int(wrong[0])} is in "
            f"{int(times[wrong[0]])} test folds ({len(wrong)} such samples)"
        )


# ---------------------------------------------------------------- manifest


def write_manifest(path: Path, table: SampleTable, groups: list[str], folds: list[Fold]) -> None:
    """Write every (fold, role, sample) as one CSV row (columns :data:`MANIFEST_COLUMNS`).

    Args:
        path: CSV file to write (parent folders are created).
        table: The table the fold indices refer to.
        groups: Group id per sample of ``table``.
        folds: The folds.

    Raises:
        DataError: ``groups`` does not have one entry per sample.
    """
    if len(groups) != len(table.samples):
        raise DataError(
            f"write_manifest: {len(groups)} groups for {len(table.samples)} samples; pass one per sample"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for fold in folds:
            for role in ROLES:
                writer.writerows(
                    _manifest_row(fold.index, role, table, groups, int(i)) for i in fold.role(role)
                )
            # Samples a fold leaves out (cross-split duplicates of a predefined split, train_fraction)
            # are listed too, so nothing disappears from the record silently.
            used = np.concatenate([fold.train, fold.val, fold.test])
            for i in np.setdiff1d(np.arange(len(table.samples)), used):
                writer.writerow(_manifest_row(fold.index, "excluded", table, groups, int(i)))


def _manifest_row(fold: int, role: str, table: SampleTable, groups: list[str], i: int) -> list[Any]:
    s = table.samples[i]
    meta = json.dumps(dict(s.meta), sort_keys=True) if s.meta else ""
    return [fold, role, s.id, s.path, s.label, table.class_names[s.label], s.patient or "", groups[i], meta]


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Read a manifest written by :func:`write_manifest`.

    Args:
        path: The manifest CSV.

    Returns:
        One dict per row; ``fold`` and ``label`` as int, an empty ``patient`` as None.

    Raises:
        DataError: The file is missing or its header is not :data:`MANIFEST_COLUMNS`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found; it is written next to each run's results")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) not in (MANIFEST_COLUMNS, MANIFEST_COLUMNS[:-1]):  # without meta: older runs
            raise DataError(
                f"{path}: header {reader.fieldnames} is not {list(MANIFEST_COLUMNS)}; not a medtl manifest"
            )
        rows: list[dict[str, Any]] = list(reader)
    for row in rows:
        row["fold"], row["label"] = int(row["fold"]), int(row["label"])
        row["patient"] = row["patient"] or None
        row["meta"] = json.loads(row["meta"]) if row.get("meta") else {}
    return rows


def near_duplicate_links(images: np.ndarray, distance: int) -> list[tuple[int, int]]:
    """Pairs of images whose 64-bit perceptual hashes (``imagehash.phash``) differ in ≤ ``distance`` bits.

    Resized or re-encoded copies of one picture are not exact duplicates but leak all the same when
    they straddle splits (brain MRI has several); linking them keeps them in one group.
    """
    import imagehash
    from PIL import Image


    # Near-blank images (empty slices at the ends of a CT or tomosynthesis volume) all share one
    # hash; linking them would chain unrelated patients together, so they are left out.
    keep: list[int] = []
    hashes: list[np.ndarray] = []
    for start in range(0, len(images), _HASH_BATCH):  # batch by batch: a memmap store is never read whole
        batch = take(images, slice(start, start + _HASH_BATCH))
        for offset, img in enumerate(batch):
            if float(img.std()) >= 2.0:
                keep.append(start + offset)
                hashes.append(imagehash.phash(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img))
                              .hash.reshape(-1))
    if len(keep) < 2:
        return []
    pairs = [(keep[a], keep[b]) for a, b in close_pairs(np.packbits(np.stack(hashes).astype(bool), axis=1),
                                                        distance)]
    logger.info("%d near-duplicate image pairs (perceptual hash distance <= %d) kept in one group each",
                len(pairs), distance)
    return pairs


def close_pairs(bits: np.ndarray, distance: int, chunk: int = 512) -> list[tuple[int, int]]:
    """Index pairs ``a < b`` whose packed hashes differ in at most ``distance`` bits."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(bits), chunk):
        block = bits[start:start + chunk]
        dist = _POPCOUNT[block[:, None, :] ^ bits[None, :, :]].sum(axis=2, dtype=np.int32)
        a, b = np.nonzero(dist <= distance)
        a = a + start
        keep = a < b
        pairs += list(zip(a[keep].tolist(), b[keep].tolist(), strict=True))
    return pairs
