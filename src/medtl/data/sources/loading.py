"""The two entry points of every data source: :func:`load_table` and :func:`load_images`.

:func:`load_table` lists the samples through the registered source (:func:`~medtl.data.sources.base.get_source`)
without decoding any image, then applies the checks shared by every source (unique ids, class counts,
positive class, ``data.strategy``, ``data.max_per_class``). :func:`load_images` resolves
``data.color: auto`` from the data, decodes, hashes and resizes the samples through the source, and
skips (and reports) what cannot be decoded.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track

from medtl.config import DataConfig
from medtl.data.images import IMAGE_EXTENSIONS, carries_color, find_image_files
from medtl.data.samples import MAX_LISTED, LoadedImages, Sample, SampleTable, cell, read_csv, require_dir, require_file
from medtl.data.sources.base import DataSource, Result, get_source
from medtl.data.storage import DiskStore, choose_storage, chunk_size
from medtl.data.strategy import apply_strategy
from medtl.errors import DataError

logger = logging.getLogger(__name__)

COLOR_SAMPLE = 64
"""How many decoded images ``data.color: auto`` looks at (spread evenly over the table)."""


# ---------------------------------------------------------------- the table


def load_table(cfg: DataConfig) -> SampleTable:
    """List the samples of the configured source without decoding images.

    Args:
        cfg: The ``data`` block of an experiment config.

    Returns:
        The sample table (limited to ``cfg.max_per_class`` per class when set).

    Raises:
        DataError: Missing files or folders, missing CSV columns, unknown or empty labels or split values,
            fewer than two classes, or an unknown or inapplicable ``positive_class``.
    """
    if cfg.classes is not None:
        _check_class_list(cfg.classes)
    listing = get_source(cfg.source).list_samples(cfg)
    samples, class_names = apply_strategy(listing.samples, listing.class_names, cfg.strategy)
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
        bad=listing.bad,
    )
    logger.info("%s %s: %d samples, classes %s", cfg.source, cfg.location, len(samples), table.class_counts())
    return table


UNLABELLED_SOURCES = ("csv", "folder")
"""Sources :func:`load_unlabelled_table` lists without labels."""


def load_unlabelled_table(cfg: DataConfig) -> SampleTable:
    """List images whose labels are not to be known (domain adaptation's target images).

    ``csv``: one sample per row, from the path column alone (a label column may be absent; it is never
    read); ``folder``: every image file under ``data.root``, recursively (subfolders are not classes).
    Every sample's label is -1 and the table has one class name, ``unlabelled``.

    Raises:
        DataError: Another source, a missing file, folder or path column, or no image at all.
    """
    if cfg.source not in UNLABELLED_SOURCES:
        raise DataError(f"data.source '{cfg.source}' needs labels to list its images; unlabelled images come from "
                        f"a {' or '.join(UNLABELLED_SOURCES)} source")
    if cfg.source == "csv":
        csv_path = require_file(cfg.csv, "csv")
        header, rows = read_csv(csv_path)
        if cfg.path_column not in header:
            raise DataError(f"{csv_path}: column '{cfg.path_column}' (data.path_column) not found; the header is "
                            f"{header}: set data.path_column to one of these")
        written = [cell(row, cfg.path_column) for _, row in rows]
        files = [(w, Path(w) if Path(w).is_absolute() else csv_path.parent / w) for w in written if w]
        missing = [str(f) for _, f in files if not f.is_file()]
        if missing:
            raise DataError(f"{csv_path}: {len(missing)} rows name files that do not exist (e.g. "
                            f"{missing[:MAX_LISTED]}); paths are relative to the CSV's folder")
    else:
        root = require_dir(cfg.root, "root")
        files = [(f.relative_to(root).as_posix(), f) for f in find_image_files(root)[0]]
    if not files:
        raise DataError(f"{cfg.location}: no images found ({' '.join(sorted(IMAGE_EXTENSIONS))})")
    samples = [Sample(id=sid, path=str(path.absolute()), label=-1, patient=None, split=None) for sid, path in files]
    _check_unique_ids(samples, cfg.location)
    logger.info("%s %s: %d unlabelled images", cfg.source, cfg.location, len(samples))
    return SampleTable(samples=samples, class_names=["unlabelled"], positive_index=None, source=cfg.source,
                       location=str(cfg.location), has_patients=False)


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
            f"{location}: {len(repeated)} sample ids occur more than once (e.g. {repeated[:MAX_LISTED]}); "
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
    if positive is None:
        return 1 if len(class_names) == 2 else None
    if positive not in class_names:
        raise DataError(
            f"data.positive_class '{positive}' is not one of the classes {class_names}; "
            "set it to one of them (or remove it to use the second class)"
        )
    if len(class_names) > 2:
        raise DataError(
            f"data.positive_class '{positive}' applies to two-class tasks, but there are {len(class_names)} "
            f"classes {class_names}; remove data.positive_class (metrics are then macro averages over the "
            f"classes), or merge the other classes into one (data.strategy.merge) for '{positive}' versus the rest"
        )
    return class_names.index(positive)


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


# ---------------------------------------------------------------- decoding


def load_images(table: SampleTable, cfg: DataConfig, progress: bool = True) -> LoadedImages:
    """Decode, hash and resize every sample; undecodable files are skipped and reported.

    Args:
        table: Samples from :func:`load_table`.
        cfg: The ``data`` block (``image_size``, ``color`` — ``auto`` is decided from the data —, ``resize``,
            ``crop``, ``max_bad_fraction``, ``cache``: files of ``folder`` and ``csv`` sources go through
            :mod:`medtl.data.decoded_cache`; ``storage``: ``disk`` streams the decoded images into a
            read-only memmap chunk by chunk, see :mod:`medtl.data.storage`).
        progress: Show a progress bar.

    Returns:
        The decoded images, their pixel hashes, the samples that failed and the colour used.

    Raises:
        DataError: More than ``data.max_bad_fraction`` of the samples (or all of them) failed.
    """
    source = get_source(table.source)
    color = resolve_color(source, table, cfg)
    shape = (cfg.image_size, cfg.image_size, 1 if color == "grayscale" else 3)
    storage = choose_storage(cfg.storage, len(table.samples), shape)
    concrete = cfg.model_copy(update={"color": color, "storage": storage})
    if storage == "disk":
        return _stream_to_disk(source, table, concrete, shape, progress)
    results = source.decode_all(table, concrete, progress)
    return _assemble(table, results, concrete)


def resolve_color(source: DataSource, table: SampleTable, cfg: DataConfig) -> str:
    """``cfg.color``, or for ``auto`` the colour decided from up to :data:`COLOR_SAMPLE` images.

    The sampled images (spread evenly over the table) are decoded as RGB through the source's
    :meth:`~medtl.data.sources.base.DataSource.decode_all`, so the decoded cache serves them on later
    runs. An image carries colour when its channels differ beyond a small tolerance
    (:func:`~medtl.data.images.carries_color`), so grey images stored as RGB stay grayscale; the set is
    ``rgb`` when at least half of the sampled images carry colour (a few tinted scans do not make a grey
    set colour).
    """
    if cfg.color != "auto":
        return cfg.color
    fixed = source.fixed_color(cfg)
    if fixed is not None:
        logger.info("data.color auto: %s (fixed by the %s source's settings)", fixed, table.source)
        return fixed
    n = len(table.samples)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(COLOR_SAMPLE, n))}) if n else []
    sampled = replace(table, samples=[table.samples[i] for i in picks])
    results = source.decode_all(sampled, cfg.model_copy(update={"color": "rgb"}), False)
    arrays = [r[0] for r in results if not isinstance(r, str)]  # failures are reported when all are decoded
    colored = sum(carries_color(Image.fromarray(a)) for a in arrays)
    color = "rgb" if arrays and 2 * colored >= len(arrays) else "grayscale"
    detail = "kept as RGB" if color == "rgb" else "replicated to 3 channels"
    logger.info("data.color auto: %d of %d sampled images carry colour -> %s (%s)", colored, len(arrays), color,
                detail)
    return color


def _stream_to_disk(source: DataSource, table: SampleTable, cfg: DataConfig, shape: tuple[int, int, int],
                    progress: bool) -> LoadedImages:
    """Decode ``table`` one chunk at a time into a :class:`~medtl.data.storage.DiskStore` (never all in RAM)."""
    step = chunk_size(shape)
    store = DiskStore(len(table.samples), shape)
    kept: list[Sample] = []
    hashes: list[str] = []
    bad: list[tuple[str, str]] = list(table.bad)
    starts = range(0, len(table.samples), step)
    try:
        for start in track(starts, description="decoding images to disk", disable=not progress or len(starts) < 2,
                           transient=True):
            chunk = replace(table, samples=table.samples[start:start + step])
            results = source.decode_all(chunk, cfg, False)
            arrays, chunk_kept, chunk_hashes = _split_results(chunk.samples, results, bad)
            store.append(arrays)
            kept += chunk_kept
            hashes += chunk_hashes
        _check_bad(bad, len(table.samples) + len(table.bad), cfg.max_bad_fraction, table.location)
    except BaseException:
        store.abort()
        raise
    images = store.finish()
    has_patients = any(s.patient is not None for s in kept)
    return LoadedImages(replace(table, samples=kept, has_patients=has_patients), images, hashes, bad, cfg.color)


def _split_results(samples: list[Sample], results: list[Result],
                   bad: list[tuple[str, str]]) -> tuple[list[np.ndarray], list[Sample], list[str]]:
    """Arrays, samples and hashes of the decoded results; failures are logged and appended to ``bad``."""
    arrays: list[np.ndarray] = []
    kept: list[Sample] = []
    hashes: list[str] = []
    for sample, result in zip(samples, results, strict=True):
        if isinstance(result, str):
            logger.warning("skipping %s: %s", sample.id, result)
            bad.append((sample.id, result))
            continue
        kept.append(sample)
        arrays.append(result[0])
        hashes.append(result[1])
    return arrays, kept, hashes


def _assemble(table: SampleTable, results: list[Result], cfg: DataConfig) -> LoadedImages:
    bad: list[tuple[str, str]] = list(table.bad)
    arrays, kept, hashes = _split_results(table.samples, results, bad)
    _check_bad(bad, len(table.samples) + len(table.bad), cfg.max_bad_fraction, table.location)
    channels = 1 if cfg.color == "grayscale" else 3
    empty = np.zeros((0, cfg.image_size, cfg.image_size, channels), dtype=np.uint8)
    images = np.stack(arrays) if arrays else empty
    has_patients = any(s.patient is not None for s in kept)
    return LoadedImages(replace(table, samples=kept, has_patients=has_patients), images, hashes, bad, cfg.color)


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
