"""Where decoded images live: one in-RAM array, or a read-only memory-mapped file on disk (``data.storage``).

``memory`` stacks every decoded image into one uint8 array ``(N, S, S, C)``: the fastest to index, and
the right choice for the small sets most users start with. ``disk`` writes the images one chunk at a
time into a raw uint8 file and hands out a read-only :class:`numpy.memmap` of it, so the decoded set
never sits in RAM as a whole: consumers index it exactly like the in-RAM array and only the batches
they touch are read. ``auto`` (the default) picks ``memory`` up to :data:`AUTO_DISK_ABOVE` decoded
bytes (2 GiB, overridable with ``$MEDTL_STORAGE_MEMORY_GB``) and ``disk`` above, and logs the choice.

Why a plain memory-mapped file and not WebDataset or LitData shards: every consumer of medtl (the
fold trainer, k-fold cross-validation, the prefix cache, test-time views, near-duplicate hashing)
needs random access by sample index, which a memmap gives for free and which tar-shard formats
trade for sequential streaming; the decoded pixels are already uniform uint8 rows, so a shard format
would add a dependency and a serialisation step without saving anything. One file per load keeps
the write path trivial: it is filled in chunks, flushed, reopened read-only and unlinked at once
(the mapping stays valid until the array is freed), so a killed run leaves no file behind.

The file goes to ``$MEDTL_CACHE/stream`` (default ``~/.cache/medtl/stream``), next to the decoded
cache: a folder a user sizes for the data, whereas ``/tmp`` is often a RAM-backed tmpfs, which would
defeat the purpose.

Reading a memmap maps its pages into the process, and resident file pages count towards RSS until
the kernel needs them back. :func:`take` copies the requested rows and then tells the kernel that
this process no longer needs those pages (``madvise(MADV_DONTNEED)``: they stay in the page cache,
so a re-read is cheap), which keeps peak RSS flat however many images a pass reads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medtl.data.decoded_cache import cache_home

logger = logging.getLogger(__name__)

AUTO_DISK_ABOVE = 2 * 2**30
"""``data.storage: auto`` keeps decoded sets up to this many bytes in memory (``$MEDTL_STORAGE_MEMORY_GB``)."""
THRESHOLD_ENV = "MEDTL_STORAGE_MEMORY_GB"
STORE_DIR_ENV = "MEDTL_STREAM_DIR"
CHUNK_BYTES = 32 * 2**20
"""Decoded bytes held at once while a disk store is filled (at least :data:`MIN_CHUNK` images)."""
MIN_CHUNK = 64


def auto_threshold() -> int:
    """Decoded bytes above which ``data.storage: auto`` chooses ``disk``."""
    raw = os.environ.get(THRESHOLD_ENV, "").strip()
    if not raw:
        return AUTO_DISK_ABOVE
    try:
        return max(0, int(float(raw) * 2**30))
    except ValueError:
        logger.warning("$%s=%r is not a number of GiB; using %.1f GiB", THRESHOLD_ENV, raw, AUTO_DISK_ABOVE / 2**30)
        return AUTO_DISK_ABOVE


def choose_storage(setting: str, n_images: int, shape: tuple[int, int, int]) -> str:
    """``memory`` or ``disk`` for ``data.storage`` = ``setting`` and ``n_images`` decoded images of ``shape``.

    Args:
        setting: ``auto``, ``memory`` or ``disk``.
        n_images: How many images will be decoded.
        shape: ``(size, size, channels)`` of one decoded image.

    Returns:
        The storage used (``auto`` decided by size and logged).
    """
    if setting != "auto":
        return setting
    total = n_images * int(np.prod(shape))
    limit = auto_threshold()
    choice = "disk" if total > limit else "memory"
    logger.info("data.storage auto: %d images of %s are %.2f GiB decoded, %s %.2f GiB -> %s", n_images,
                "x".join(map(str, shape)), total / 2**30, "above" if choice == "disk" else "within", limit / 2**30,
                choice)
    return choice


def store_dir() -> Path:
    """The folder of disk stores: ``$MEDTL_STREAM_DIR``, else ``$MEDTL_CACHE/stream``."""
    explicit = os.environ.get(STORE_DIR_ENV, "").strip()
    return Path(explicit).expanduser() if explicit else cache_home() / "stream"


def chunk_size(shape: tuple[int, int, int]) -> int:
    """Images decoded per chunk while a disk store is filled (:data:`CHUNK_BYTES`, at least :data:`MIN_CHUNK`)."""
    return max(MIN_CHUNK, CHUNK_BYTES // max(1, int(np.prod(shape))))


class DiskStore:
    """A raw uint8 file filled row by row, then opened read-only as a memmap (and unlinked).

    Args:
        capacity: The most rows that will be written.
        shape: ``(size, size, channels)`` of one row.
        folder: Where the file is created (default :func:`store_dir`).
    """

    def __init__(self, capacity: int, shape: tuple[int, int, int], folder: Path | None = None) -> None:
        self.shape = shape
        self.rows = 0
        folder = folder or store_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"images-{os.getpid()}-{uuid.uuid4().hex[:12]}.u8"
        self._file = open(self.path, "wb")  # noqa: SIM115  (closed by finish)
        self._capacity = capacity

    def append(self, arrays: Iterable[np.ndarray]) -> None:
        """Write ``arrays`` (each ``shape``, uint8) after the rows written so far."""
        for arr in arrays:
            if arr.shape != self.shape or arr.dtype != np.uint8:
                raise ValueError(f"image of shape {arr.shape} {arr.dtype}, expected {self.shape} uint8")
            self._file.write(np.ascontiguousarray(arr).tobytes())
            self.rows += 1

    def finish(self) -> np.ndarray:
        """The rows written, as a read-only memmap ``(rows, *shape)``; the file itself is unlinked."""
        self._file.close()
        try:
            if self.rows == 0:
                return np.zeros((0, *self.shape), dtype=np.uint8)
            images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.rows, *self.shape))
        finally:
            self.path.unlink(missing_ok=True)  # the mapping keeps the data until the array is freed
        logger.info("data.storage disk: %d images (%.2f GiB) memory-mapped from %s (unlinked; freed with the run)",
                    self.rows, images.nbytes / 2**30, self.path.parent)
        return images

    def abort(self) -> None:
        """Close and remove the file (a failed load)."""
        self._file.close()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading


def is_mapped(images: np.ndarray) -> bool:
    """True when ``images`` is (a view of) a memory-mapped store."""
    return isinstance(images, np.memmap)


def take(images: np.ndarray, indices: np.ndarray | list[int] | slice) -> np.ndarray:
    """``images[indices]`` as an in-RAM array; for a memmap the pages read are released afterwards.

    Args:
        images: The decoded images (in-RAM array or memmap).
        indices: Row indices (any order) or a slice.

    Returns:
        A copy of the rows (a plain ndarray).
    """
    rows = images[indices]
    if not is_mapped(images):
        return rows
    out = np.array(rows, copy=True)
    if isinstance(indices, slice):
        start, stop, _ = indices.indices(len(images))
        release(images, range(start, stop))
    else:
        release(images, np.asarray(indices).reshape(-1))
    return out


def take_one(images: np.ndarray, index: int) -> np.ndarray:
    """One row of ``images`` as an in-RAM array (pages of a memmap released after the copy)."""
    return take(images, slice(int(index), int(index) + 1))[0]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if hasattr(mmap, "MADV_DONTNEED") else None
_PAGE = mmap.PAGESIZE


def release(images: np.ndarray, rows: Iterable[int]) -> None:
    """Tell the kernel this process no longer needs the pages of ``rows`` of a memmap (Linux; else nothing).

    The file pages stay in the page cache, so reading them again costs a page fault, not a disk read.
    """
    if _LIBC is None or not is_mapped(images) or images.ndim == 0 or len(images) == 0:
        return
    row_bytes = images.strides[0]
    base = images.ctypes.data
    spans = _merge(sorted({int(r) for r in rows}))
    for first, last in spans:
        start = base + first * row_bytes
        end = base + (last + 1) * row_bytes
        aligned = start - start % _PAGE
        length = (end - aligned) // _PAGE * _PAGE  # whole pages only: a page shared with a neighbour stays
        if length > 0:
            _LIBC.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), mmap.MADV_DONTNEED)


def _merge(rows: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``(first, last)`` of sorted row numbers."""
    spans: list[tuple[int, int]] = []
    for r in rows:
        if spans and r == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], r)
        else:
            spans.append((r, r))
    return spans
