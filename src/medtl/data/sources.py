"""Where samples come from: class folders, CSV label files and MedMNIST ``.npz`` files.

:func:`load_table` lists the samples (id, file, label, patient, predefined split) without decoding
any image; :func:`load_images` then decodes, hashes and resizes them, skipping (and reporting)
files that cannot be decoded. Files of folder and CSV sources are decoded once per content and
size policy and reused (:mod:`medtl.data.decoded_cache`, ``data.cache``).

Sample ids are stable and readable: the path relative to the class-folder root (``yes/Y1.jpg``),
the path as written in the CSV, or ``train[115]`` for MedMNIST.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import track

from medtl.config import DataConfig, data_root
from medtl.data.decoded_cache import DecodedCache
from medtl.data.images import IMAGE_EXTENSIONS, array_hash, open_image, pixel_hash, to_array
from medtl.data.medmnist import MEDMNIST_FILES
from medtl.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_MEDMNIST_REF = re.compile(r"^(train|val|test)\[(\d+)\]$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        id: Unique, stable, human-readable id (relative path, CSV path or ``train[115]``).
        path: Absolute file path; for MedMNIST ``"<abs npz path>::train[115]"``.
        label: Index into :attr:`SampleTable.class_names`.
        patient: Patient id, ``None`` when the source has none.
        split: ``train``/``val``/``test`` when the source defines it, else ``None``.
        meta: Extra facts about the image (DICOM: file, study, series, view, slice, ...); empty else.
    """

    id: str
    path: str
    label: int
    patient: str | None
    split: str | None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class SampleTable:
    """All samples of a data source plus what is known about the classes.

    Attributes:
        samples: The samples, in a deterministic order.
        class_names: Class names; ``Sample.label`` indexes this list.
        positive_index: Index of the positive class for binary tasks (``data.positive_class``,
            default the second class); ``None`` for > 2 classes without a positive class.
        source: ``folder``, ``csv`` or ``medmnist``.
        location: The folder, CSV or ``.npz`` file read.
        has_patients: Whether any sample carries a patient id.
        bad: ``(file, reason)`` for files the source found but could not list (DICOM headers).
    """

    samples: list[Sample]
    class_names: list[str]
    positive_index: int | None
    source: str
    location: str
    has_patients: bool
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """Labels of all samples as an int64 array."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name (every class listed, also empty ones)."""
        counts = Counter(s.label for s in self.samples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}


@dataclass
class LoadedImages:
    """Decoded images of a table.

    Attributes:
        table: The table restricted to the samples that decoded (order preserved).
        images: uint8 array ``(N, size, size, C)`` with C = 1 (grayscale) or 3 (rgb).
        hashes: Pixel hash per kept sample (:func:`~medtl.data.images.pixel_hash` /
            :func:`~medtl.data.images.array_hash`).
        bad: ``(sample id, reason)`` for every sample that failed to decode.
    """

    table: SampleTable
    images: np.ndarray
    hashes: list[str]
    bad: list[tuple[str, str]]


# ---------------------------------------------------------------- the table


def load_table(cfg: DataConfig) -> SampleTable:
    """List the samples of the configured source without decoding images.

    Args:
        cfg: The ``data`` block of an experiment config.

    Returns:
        The sample table (limited to ``cfg.max_per_class`` per class when set).

    Raises:
        DataError: Missing files or folders, missing CSV columns, unknown labels or split values,
            fewer than two classes, or an unknown ``positive_class``.
    """
    loaders = {"folder": _folder_samples, "csv": _csv_samples, "medmnist": _medmnist_samples}
    if cfg.classes is not None:
        _check_class_list(cfg.classes)
    bad: list[tuple[str, str]] = []
    if cfg.source == "dicom":
        from medtl.data.dicom import dicom_samples  # pydicom is imported only for DICOM sources

        samples, class_names, bad = dicom_samples(cfg)
    elif cfg.source == "nifti":
        from medtl.data.nifti import NiftiSource  # nibabel is imported only for NIfTI sources

        listing = NiftiSource().list_samples(cfg)
        samples, class_names, bad = listing.samples, listing.class_names, listing.bad
    else:
        samples, class_names = loaders[cfg.source](cfg)
    from medtl.data.strategy import apply_strategy

    samples, class_names = apply_strategy(samples, class_names, cfg.strategy)
    _check_unique_ids(samples, cfg.location)
    _check_class_counts(samples, class_names, cfg.location)
    samples = _limit_per_class(samples, len(class_names), cfg.max_per_class, cfg.split.seed)
    table = SampleTable(
        samples=samples,
        class_names=class_names,
        positive_index=_positive_index(class_names, cfg.positive_class),
        source=cfg.source,
        location=str(cfg.location),
        has_patients=any(s.patient is not None for s in samples),
        bad=bad,
    )
    logger.info("%s %s: %d samples, classes %s", cfg.source, cfg.location, len(samples), table.class_counts())
    return table


def _check_class_list(classes: list[str]) -> None:
    duplicated = sorted(name for name, n in Counter(classes).items() if n > 1)
    if duplicated:
        raise DataError(f"data.classes lists {duplicated} more than once; list every class once")
    if len(classes) < 2:
        raise DataError(
            f"data.classes {classes} has fewer than two classes; classification needs at least two"
        )


def _check_unique_ids(samples: list[Sample], location: Path) -> None:
    repeated = [sid for sid, n in Counter(s.id for s in samples).items() if n > 1]
    if repeated:
        raise DataError(
            f"{location}: {len(repeated)} sample ids occur more than once (e.g. {repeated[:_MAX_LISTED]}); "
            "list every image once"
        )


def _check_class_counts(samples: list[Sample], class_names: list[str], location: Path) -> None:
    counts = Counter(s.label for s in samples)
    empty = [name for i, name in enumerate(class_names) if counts.get(i, 0) == 0]
    if len(class_names) - len(empty) < 2:
        raise DataError(
            f"{location}: samples of fewer than two classes found (classes {class_names}, empty {empty}); "
            "classification needs at least two classes with images"
        )
    if empty:
        logger.warning("%s: classes %s have no samples", location, empty)


def _positive_index(class_names: list[str], positive: str | None) -> int | None:
    if positive is not None:
        if positive not in class_names:
            raise DataError(
                f"data.positive_class '{positive}' is not one of the classes {class_names}; "
                "set it to one of them (or remove it to use the second class)"
            )
        return class_names.index(positive)
    return 1 if len(class_names) == 2 else None


def _limit_per_class(samples: list[Sample], n_classes: int, limit: int | None, seed: int) -> list[Sample]:
    """Keep at most ``limit`` random samples per class (seeded), preserving the order."""
    if limit is None:
        return samples
    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    keep: set[int] = set()
    for label in range(n_classes):
        idx = np.flatnonzero(labels == label)
        chosen = rng.choice(idx, size=limit, replace=False) if len(idx) > limit else idx
        keep.update(int(i) for i in chosen)
    logger.info("data.max_per_class=%d: keeping %d of %d samples", limit, len(keep), len(samples))
    return [s for i, s in enumerate(samples) if i in keep]


def _missing_location(key: str, path: Path | None, what: str) -> DataError:
    return DataError(
        f"data.{key} {path} does not exist or is not a {what}; fix data.{key} in the config, or set the "
        f"environment variable MEDTL_DATA to the folder that holds the shared datasets (now {data_root()})"
    )


def _require_dir(path: Path | None, key: str) -> Path:
    if path is None or not path.is_dir():
        raise _missing_location(key, path, "folder")
    return path.absolute()


def _require_file(path: Path | None, key: str) -> Path:
    if path is None or not path.is_file():
        raise _missing_location(key, path, "file")
    return path.absolute()


# ---------------------------------------------------------------- folder source


def _folder_samples(cfg: DataConfig) -> tuple[list[Sample], list[str]]:
    """One subfolder per class under ``cfg.root``; files found recursively inside each."""
    root = _require_dir(cfg.root, "root")
    folders = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    _note_loose_files(root)
    class_names = _folder_classes(sorted(folders), cfg.classes, root)
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        files = _class_files(folders[name])
        if not files:
            raise DataError(
                f"{folders[name]}: class folder '{name}' has no image files "
                f"({' '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        samples += [_folder_sample(f, root, label) for f in files]
    return samples, class_names


def _folder_sample(file: Path, root: Path, label: int) -> Sample:
    return Sample(id=file.relative_to(root).as_posix(), path=str(file), label=label, patient=None, split=None)


def _folder_classes(found: list[str], classes: list[str] | None, root: Path) -> list[str]:
    if not found:
        raise DataError(
            f"{root}: no class subfolders; data.source 'folder' expects one subfolder of images per class"
        )
    if classes is None:
        return found
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"data.classes names {missing} but {root} has no such subfolder; subfolders: {found}")
    extra = [f for f in found if f not in classes]
    if extra:
        logger.warning("%s: ignoring subfolders %s that are not listed in data.classes", root, extra)
    return list(classes)


def _note_loose_files(root: Path) -> None:
    loose = sorted(f.name for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    images = [name for name in loose if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        logger.warning(
            "%s: %d images lie outside any class folder and are ignored: %s",
            root,
            len(images),
            images[:_MAX_LISTED],
        )
    elif loose:
        logger.info("%s: ignoring non-class files %s", root, loose[:_MAX_LISTED])


def _class_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden entries skipped); warn about others."""
    images: list[Path] = []
    others: list[str] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(current) / name
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    if others:
        listed = [p.relative_to(folder).as_posix() for p in others[:_MAX_LISTED]]
        logger.warning(
            "%s: %d files without an image extension are ignored: %s (rename them if they are images)",
            folder,
            len(others),
            listed,
        )
    return images


# ---------------------------------------------------------------- csv source


@dataclass(frozen=True)
class _CsvColumns:
    path: str
    label: str
    patient: str | None
    split: str | None


def _csv_samples(cfg: DataConfig) -> tuple[list[Sample], list[str]]:
    """Rows of a CSV: file path (relative to the CSV's folder), label, optional patient and split."""
    csv_path = _require_file(cfg.csv, "csv")
    header, rows = _read_csv(csv_path)
    cols = _csv_columns(cfg, header, csv_path)
    class_names = cfg.classes or _sorted_labels({_cell(row, cols.label) for _, row in rows})
    index = {name: i for i, name in enumerate(class_names)}
    samples = [_csv_sample(row, line, cols, index, csv_path) for line, row in rows]
    _check_files_exist(samples, [line for line, _ in rows], csv_path)
    _note_missing_patients(samples, cols, csv_path)
    return samples, list(class_names)


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and ``(line number, row)`` pairs of a CSV file."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise DataError(f"{csv_path}: empty CSV; expected a header line with the column names")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise DataError(f"{csv_path}: the CSV has a header but no rows")
    return list(reader.fieldnames), rows


def _csv_columns(cfg: DataConfig, header: list[str], csv_path: Path) -> _CsvColumns:
    for key in ("path_column", "label_column"):
        column = getattr(cfg, key)
        if column not in header:
            raise DataError(
                f"{csv_path}: column '{column}' (data.{key}) not found; the header is {header}: "
                f"set data.{key} to one of these"
            )
    patient = _optional_column(cfg, "patient_column", header, csv_path)
    split = _optional_column(cfg, "split_column", header, csv_path)
    return _CsvColumns(cfg.path_column, cfg.label_column, patient, split)


def _optional_column(cfg: DataConfig, key: str, header: list[str], csv_path: Path) -> str | None:
    """The column if present; an absent column is fine only when the config left the default name."""
    column = getattr(cfg, key)
    if column is None or column in header:
        return column
    if column == DataConfig.model_fields[key].default:
        logger.info("%s: no '%s' column, so no %s information", csv_path, column, key.removesuffix("_column"))
        return None
    raise DataError(
        f"{csv_path}: column '{column}' (data.{key}) not found; the header is {header}: "
        f"set data.{key} to one of these, or to null if the CSV has none"
    )


def _sorted_labels(labels: set[str]) -> list[str]:
    """Distinct labels sorted numerically when all are integers, else alphabetically."""
    if all(re.fullmatch(r"-?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def _csv_sample(
    row: dict[str, Any], line: int, cols: _CsvColumns, index: dict[str, int], csv_path: Path
) -> Sample:
    written = _cell(row, cols.path)
    if not written:
        raise DataError(f"{csv_path} line {line}: empty '{cols.path}' cell; every row needs an image path")
    label = _cell(row, cols.label)
    if label not in index:
        raise DataError(
            f"{csv_path} line {line}: label '{label}' in column '{cols.label}' is not one of the classes "
            f"{list(index)}; fix the row or add the label to data.classes (labels are matched as text)"
        )
    file = Path(written) if Path(written).is_absolute() else csv_path.parent / written
    return Sample(
        id=written,
        path=str(file),
        label=index[label],
        patient=(_cell(row, cols.patient) or None) if cols.patient else None,
        split=_split_value(_cell(row, cols.split), line, cols.split, csv_path) if cols.split else None,
    )


def _split_value(value: str, line: int, column: str | None, csv_path: Path) -> str | None:
    if not value:
        return None
    split = _SPLIT_ALIASES.get(value.lower())
    if split is None:
        raise DataError(
            f"{csv_path} line {line}: split '{value}' in column '{column}' is not one of train/val/test "
            "(validation and valid are read as val); fix the value or set data.split_column: null"
        )
    return split


def _check_files_exist(samples: list[Sample], lines: list[int], csv_path: Path) -> None:
    missing = [(line, s.path) for line, s in zip(lines, samples, strict=True) if not os.path.isfile(s.path)]
    if missing:
        listed = "; ".join(f"line {line}: {path}" for line, path in missing[:_MAX_LISTED])
        raise DataError(
            f"{csv_path}: {len(missing)} rows name files that do not exist ({listed}); paths are relative "
            "to the CSV's folder: fix the paths or remove the rows"
        )


def _note_missing_patients(samples: list[Sample], cols: _CsvColumns, csv_path: Path) -> None:
    if cols.patient is None:
        return
    without = sum(s.patient is None for s in samples)
    if without:
        logger.warning(
            "%s: %d of %d rows have an empty '%s' cell; those images are grouped on their own",
            csv_path,
            without,
            len(samples),
            cols.patient,
        )


# ---------------------------------------------------------------- medmnist source


def _medmnist_samples(cfg: DataConfig) -> tuple[list[Sample], list[str]]:
    """Samples of an official MedMNIST ``.npz`` (keys ``{split}_images`` / ``{split}_labels``)."""
    path = _require_medmnist_file(cfg.path)
    labels = _npz_labels(path)
    class_names = _medmnist_classes(path, labels, cfg.classes)
    samples = [
        Sample(id=f"{split}[{i}]", path=f"{path}::{split}[{i}]", label=int(y), patient=None, split=split)
        for split in SPLITS
        for i, y in enumerate(labels[split])
    ]
    return samples, class_names


def _require_medmnist_file(path: Path | None) -> Path:
    if path is not None and not path.is_file() and path.stem in MEDMNIST_FILES:
        raise DataError(
            f"data.path {path} does not exist; get the official file with "
            f"medtl.data.ensure_medmnist('{path.stem}', Path('{path.parent}')) or download it from "
            f"{MEDMNIST_FILES[path.stem]['url']} to that path"
        )
    return _require_file(path, "path")


def _open_npz(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as .npz ({exc}); use an official MedMNIST file") from None


def _npz_labels(path: Path) -> dict[str, np.ndarray]:
    with _open_npz(path) as npz:
        _check_npz_keys(path, list(npz.keys()))
        return {split: _label_vector(path, split, npz[f"{split}_labels"]) for split in SPLITS}


def _check_npz_keys(path: Path, keys: list[str]) -> None:
    needed = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
    missing = [key for key in needed if key not in keys]
    if missing:
        raise DataError(
            f"{path}: keys {missing} missing (found {sorted(keys)}); expected an official MedMNIST file"
        )


def _label_vector(path: Path, split: str, labels: np.ndarray) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {split}_labels has shape {labels.shape} and dtype {labels.dtype}; medtl supports "
            "single-label MedMNIST files (integer labels shaped (N, 1))"
        )
    return labels.astype(np.int64)


def _medmnist_classes(path: Path, labels: dict[str, np.ndarray], classes: list[str] | None) -> list[str]:
    top = max(int(v.max()) for v in labels.values() if v.size)
    if min(int(v.min()) for v in labels.values() if v.size) < 0:
        raise DataError(f"{path}: negative labels; MedMNIST labels are 0..K-1")
    if classes is None:
        known = MEDMNIST_FILES.get(path.stem, {}).get("classes")
        classes = list(known) if known else [str(i) for i in range(top + 1)]
    if top >= len(classes):
        raise DataError(
            f"{path}: label {top} occurs but only {len(classes)} class names are known ({classes}); "
            "list one name per label in data.classes"
        )
    return list(classes)


# ---------------------------------------------------------------- decoding


Decoder = Callable[[Sample], tuple[Image.Image, str]]
_Result = tuple[np.ndarray, str] | str


def load_images(table: SampleTable, cfg: DataConfig, progress: bool = True) -> LoadedImages:
    """Decode, hash and resize every sample; undecodable files are skipped and reported.

    Args:
        table: Samples from :func:`load_table`.
        cfg: The ``data`` block (``image_size``, ``color``, ``resize``, ``crop``, ``max_bad_fraction``,
            ``cache``: files of ``folder`` and ``csv`` sources go through
            :mod:`medtl.data.decoded_cache`).
        progress: Show a progress bar.

    Returns:
        The decoded images, their pixel hashes, and the samples that failed.

    Raises:
        DataError: More than ``data.max_bad_fraction`` of the samples (or all of them) failed.
    """
    if table.source == "dicom":
        from medtl.data.dicom import decode_samples

        return _assemble(table, decode_samples(table, cfg, progress), cfg)
    if table.source == "nifti":
        from medtl.data.nifti import NiftiSource

        return _assemble(table, NiftiSource().decode_all(table, cfg, progress), cfg)
    if table.source == "medmnist":
        work = partial(_prepare, decode=_array_decoder(table), cfg=cfg)
        return _assemble(table, _map_with_progress(work, table.samples, progress), cfg)
    cache = DecodedCache.for_config(cfg)
    if cache is None:
        results = _map_with_progress(partial(_prepare, decode=_decode_file, cfg=cfg), table.samples, progress)
        logger.info("decoded images: 0 from cache, %d decoded (data.cache is off)", len(results))
    else:
        results = _map_with_progress(partial(_prepare_cached, cfg=cfg, cache=cache), table.samples, progress)
        cache.finish()
        logger.info("decoded images: %d from cache, %d decoded", cache.hits, cache.decoded)
    return _assemble(table, results, cfg)


def _decode_file(sample: Sample) -> tuple[Image.Image, str]:
    img = open_image(sample.path)
    return img, pixel_hash(img)


def _array_decoder(table: SampleTable) -> Decoder:
    """Decoder for MedMNIST references ``<npz>::split[i]`` (arrays loaded once, before threading)."""
    npz_path = Path(table.location).absolute()
    with _open_npz(npz_path) as npz:
        arrays = {split: np.asarray(npz[f"{split}_images"]) for split in SPLITS}

    def decode(sample: Sample) -> tuple[Image.Image, str]:
        match = _MEDMNIST_REF.match(sample.path.rsplit("::", 1)[-1])
        if match is None:
            raise DataError(f"{sample.path}: not a MedMNIST reference '<file>::split[index]'")
        arr = arrays[match.group(1)][int(match.group(2))]
        return Image.fromarray(arr), array_hash(arr)

    return decode


def _prepare(sample: Sample, decode: Decoder, cfg: DataConfig) -> _Result:
    """Array and hash of one sample, or the reason it failed."""
    try:
        img, digest = decode(sample)
        return to_array(img, cfg.image_size, cfg.color, cfg.resize, cfg.crop), digest
    except DataError as exc:
        return str(exc)
    except (OSError, ValueError, IndexError) as exc:
        return f"{sample.path}: cannot convert image ({type(exc).__name__}: {exc})"


def _prepare_cached(sample: Sample, cfg: DataConfig, cache: DecodedCache) -> _Result:
    """:func:`_prepare` of a file through the decoded-image cache (failures are never cached)."""
    return cache.fetch(sample.path, partial(_prepare, sample, _decode_file, cfg))


def _map_with_progress(
    work: Callable[[Sample], _Result], samples: list[Sample], progress: bool
) -> list[_Result]:
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(work, samples)
        return list(
            track(
                results,
                total=len(samples),
                description="decoding images",
                disable=not progress,
                transient=True,
            )
        )


def _assemble(table: SampleTable, results: list[_Result], cfg: DataConfig) -> LoadedImages:
    kept: list[Sample] = []
    arrays: list[np.ndarray] = []
    hashes: list[str] = []
    bad: list[tuple[str, str]] = list(table.bad)
    for sample, result in zip(table.samples, results, strict=True):
        if isinstance(result, str):
            logger.warning("skipping %s: %s", sample.id, result)
            bad.append((sample.id, result))
            continue
        kept.append(sample)
        arrays.append(result[0])
        hashes.append(result[1])
    _check_bad(bad, len(table.samples) + len(table.bad), cfg.max_bad_fraction, table.location)
    channels = 1 if cfg.color == "grayscale" else 3
    empty = np.zeros((0, cfg.image_size, cfg.image_size, channels), dtype=np.uint8)
    images = np.stack(arrays) if arrays else empty
    has_patients = any(s.patient is not None for s in kept)
    return LoadedImages(replace(table, samples=kept, has_patients=has_patients), images, hashes, bad)


def _check_bad(bad: list[tuple[str, str]], total: int, limit: float, location: str) -> None:
    if not bad:
        return
    fraction = len(bad) / total
    if len(bad) == total or fraction > limit:
        first = [sid for sid, _ in bad[:5]]
        raise DataError(
            f"{location}: {len(bad)} of {total} images ({fraction:.1%}) cannot be decoded, more than "
            f"data.max_bad_fraction = {limit}; first: {first} (first reason: {bad[0][1]}); "
            "fix or remove these files, or raise data.max_bad_fraction"
        )
    logger.warning("%s: skipped %d of %d images that cannot be decoded", location, len(bad), total)
