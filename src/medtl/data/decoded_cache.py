"""Decoded-image cache: every image file is decoded and resized once per content and policy.

:func:`~medtl.data.sources.load_images` decodes, hashes and resizes each file of a ``folder`` or
``csv`` source. With ``data.cache`` on (the default) the result, a uint8 array ``(S, S, C)`` plus
the file's full-resolution pixel hash, is kept so later epochs, folds, study cells and runs reuse it:

- **Key.** The SHA-256 of the file's bytes (its content: neither its path nor its mtime) and a
  *policy*: ``image_size``, ``color``, ``resize``, ``crop``, :data:`FORMAT_VERSION` and the Pillow
  version (a new decoder may decode the same bytes differently; entries of another version miss).
  Hashing the bytes costs a fraction of a millisecond per file; decoding and resizing a few ms.
- **Memory tier.** A process-wide LRU of ``(content, policy) → (array, pixel hash)``, bounded in
  bytes (``$MEDTL_DECODED_MEMORY_GB``, default 2 GiB): a second study cell in the same process
  decodes nothing and reads nothing from disk.
- **Disk tier.** ``$MEDTL_CACHE/decoded/<policy>/<sha[:2]>/<sha>.npy`` (default root
  ``~/.cache/medtl``, the root of the activation cache), bounded by ``$MEDTL_DECODED_CACHE_GB``
  (default 10 GiB) with least-recently-used eviction after a load that wrote entries; a hit sets
  the file's atime and mtime (the LRU clock). ``MEDTL_DECODED_CACHE=0`` switches the disk tier off.

Entry format: one plain ``.npy`` holding a flat uint8 vector: 32 bytes of pixel hash (the raw
SHA-256 digest), the CRC-32 of the pixels (4 bytes, little endian), then the ``S*S*C`` pixel bytes.
One file per entry means one ``open`` per hit and one atomic ``os.replace`` per write (a pixel file
plus a ``.json`` sidecar needs two of each, and the pair can be torn), and a flat uint8 ``.npy`` loads
faster than a structured-dtype ``.npy`` (longer header to parse) or an ``.npz`` (zip directory);
measured ~130-180 µs vs ~200, ~200-260 (npy + json) and ~360-510 µs per 224² entry. The shape is
implied by the policy and checked on read; the CRC catches silent corruption of the pixels.

Writers fill a temporary file in the entry's folder and publish it with ``os.replace``, so readers
never see a partial entry and concurrent runs are safe. An unreadable, truncated or mismatching
entry is a miss (logged at debug level) and is overwritten by the fresh decode. Errors of the cache
itself never fail a run. Files that fail to decode are never cached, so they are reported exactly as
without the cache.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import re
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from medtl.config import DataConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when decoding or resizing changes (``medtl.data.images``); old entries then simply miss."""
DEFAULT_MEMORY_BYTES = 2 * 2**30
DEFAULT_DISK_BYTES = 10 * 2**30
MEMORY_ENV = "MEDTL_DECODED_MEMORY_GB"
DISK_ENV = "MEDTL_DECODED_CACHE_GB"
SWITCH_ENV = "MEDTL_DECODED_CACHE"

Decoded = tuple[np.ndarray, str]
"""A resized uint8 image ``(S, S, C)`` and the pixel hash of the full-resolution image."""

_HEADER = 36  # 32-byte pixel digest + 4-byte CRC-32 of the pixels
_ENTRY = re.compile(r"^[0-9a-f]{64}\.npy$")
_TMP = re.compile(r"^tmp-[0-9a-f]{16}-\d+-[0-9a-f]{8}\.npy$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_STALE_TMP_NS = 3600 * 10**9  # a temporary file this old belongs to a writer that died


# ---------------------------------------------------------------- settings


def cache_home() -> Path:
    """``$MEDTL_CACHE`` or ``~/.cache/medtl``: the root that holds ``activations/`` and ``decoded/``.

    The same rule as :func:`medtl.transfer.prefix_cache.default_root` (which adds ``activations``);
    it is repeated here because importing that module would import torch and lightning into the data
    layer, and would be circular (it imports ``medtl.data``).
    """
    return Path(os.environ.get("MEDTL_CACHE") or "~/.cache/medtl").expanduser()


def default_root() -> Path:
    """``$MEDTL_CACHE/decoded``, or ``~/.cache/medtl/decoded``."""
    return cache_home() / "decoded"


def disk_enabled() -> bool:
    """False when ``$MEDTL_DECODED_CACHE`` is ``0`` (or ``false``/``no``/``off``)."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def memory_limit() -> int:
    """Bytes the memory tier may hold (``$MEDTL_DECODED_MEMORY_GB``, default 2 GiB)."""
    return _env_bytes(MEMORY_ENV, DEFAULT_MEMORY_BYTES)


def disk_limit() -> int:
    """Bytes the disk tier may hold (``$MEDTL_DECODED_CACHE_GB``, default 10 GiB)."""
    return _env_bytes(DISK_ENV, DEFAULT_DISK_BYTES)


def _env_bytes(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        gib = float(raw)
    except ValueError:
        log.warning("$%s=%r is not a number of GiB; using the default %.1f GiB", name, raw, default / 2**30)
        return default
    return max(0, int(gib * 2**30))


def policy_key(cfg: DataConfig) -> str:
    """The folder name of everything besides the file's bytes that decides the decoded array.

    Args:
        cfg: The ``data`` block (``image_size``, ``color``, ``resize``, ``crop``).

    Returns:
        E.g. ``v1-3fa2c9d1-pil11.0.0-224px-grayscale-squash-none`` (the second part hashes the decoding code).
    """
    pil = re.sub(r"[^A-Za-z0-9.]", "_", PIL.__version__)
    return f"v{FORMAT_VERSION}-{_code_digest()}-pil{pil}-{cfg.image_size}px-{cfg.color}-{cfg.resize}-{cfg.crop}"


@functools.cache
def _code_digest() -> str:
    """Short hash of the decoding code (:mod:`medtl.data.images`): editing it invalidates the entries."""
    from medtl.data import images

    return hashlib.sha256(Path(images.__file__).read_bytes()).hexdigest()[:8]


# ---------------------------------------------------------------- memory tier


class _MemoryTier:
    """Process-wide LRU of ``(content sha, policy) → (read-only array, pixel hash)``, bounded in bytes."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, str], Decoded] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Decoded | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[str, str], item: Decoded, limit: int) -> None:
        if item[0].nbytes > limit:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[0].nbytes
            self._items[key] = item
            self._bytes += item[0].nbytes
            while self._bytes > limit:
                _, (arr, _) = self._items.popitem(last=False)
                self._bytes -= arr.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> tuple[int, int]:
        with self._lock:
            return len(self._items), self._bytes


_MEMORY = _MemoryTier()


def clear_memory() -> None:
    """Empty the process-wide memory tier."""
    _MEMORY.clear()


def memory_info() -> tuple[int, int]:
    """``(entries, bytes)`` held by this process's memory tier."""
    return _MEMORY.stats()


# ---------------------------------------------------------------- one load


class DecodedCache:
    """The cache as one :func:`~medtl.data.sources.load_images` call uses it.

    Thread-safe: :meth:`fetch` runs in the decoding thread pool.

    Args:
        policy: :func:`policy_key` of the data config.
        shape: Shape of every decoded array, ``(size, size, channels)``.
        root: The disk tier's folder, or None to use memory only.
        memory_bytes: Bound of the memory tier (0 switches it off).
        disk_bytes: Bound of the disk tier, enforced by :meth:`finish`.
    """

    def __init__(self, policy: str, shape: tuple[int, int, int], root: Path | None, memory_bytes: int,
                 disk_bytes: int) -> None:
        self.policy = policy
        self.shape = shape
        self.root = root
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self.hits = 0
        self.decoded = 0
        self._written = 0
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, cfg: DataConfig) -> DecodedCache | None:
        """The cache for ``cfg`` under the current environment; None when ``data.cache`` is false.

        With ``data.storage: disk`` the memory tier is not used: a set streamed to disk must not
        collect its decoded images in RAM after all.
        """
        if not cfg.cache:
            return None
        shape = (cfg.image_size, cfg.image_size, 1 if cfg.color == "grayscale" else 3)
        root = default_root() if disk_enabled() else None
        memory = 0 if cfg.storage == "disk" else memory_limit()
        return cls(policy_key(cfg), shape, root, memory, disk_limit())

    def fetch(self, path: str, decode: Callable[[], Decoded | str]) -> Decoded | str:
        """The cached result for the file at ``path``, else ``decode()``'s (stored when it succeeded).

        Args:
            path: The image file.
            decode: Decodes, hashes and resizes the file; returns the reason as a string when it fails.

        Returns:
            ``(array, pixel hash)`` or the reason the file cannot be decoded (never cached).
        """
        try:
            sha, stamp = _content_sha(path)
        except OSError:  # missing or unreadable: the decoder reports it in its own words
            return self._decode(decode)
        hit = self._lookup(sha)
        if hit is not None:
            with self._lock:
                self.hits += 1
            return hit
        result = self._decode(decode)
        if isinstance(result, str):
            return result
        try:
            unchanged = _stamp(os.stat(path)) == stamp
        except OSError:
            unchanged = False
        if unchanged:  # else the file changed while it was decoded: the result may not match ``sha``
            self._store(sha, result)
        else:
            log.debug("decoded cache: %s changed while it was decoded; not caching it", path)
        return result

    def finish(self) -> None:
        """Evict least-recently-used disk entries when this load wrote any and the tier is over its bound."""
        if self.root is None or not self._written:
            return
        try:
            evict(self.root, self.disk_bytes)
        except OSError as exc:
            log.debug("decoded cache: eviction under %s failed (%s)", self.root, exc)

    # -- internals

    def _decode(self, decode: Callable[[], Decoded | str]) -> Decoded | str:
        with self._lock:
            self.decoded += 1
        return decode()

    def _entry(self, sha: str) -> Path:
        assert self.root is not None
        return self.root / self.policy / sha[:2] / f"{sha}.npy"

    def _lookup(self, sha: str) -> Decoded | None:
        use_memory = self.memory_bytes > 0
        if use_memory:
            item = _MEMORY.get((sha, self.policy))
            if item is not None:
                return item
        if self.root is None:
            return None
        item = self._read(sha)
        if item is not None and use_memory:
            _MEMORY.put((sha, self.policy), item, self.memory_bytes)
        return item

    def _read(self, sha: str) -> Decoded | None:
        path = self._entry(sha)
        try:
            flat = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as exc:  # any unreadable entry is a miss, never a failed run
            log.debug("decoded cache: %s is unreadable (%s: %s); decoding again", path, type(exc).__name__, exc)
            return None
        problem = _check(flat, self.shape)
        if problem:
            log.debug("decoded cache: %s is corrupt (%s); decoding again", path, problem)
            return None
        with suppress(OSError):  # evicted meanwhile: the loaded copy is still good
            os.utime(path)  # the LRU clock
        pixels = flat[_HEADER:].reshape(self.shape)
        pixels.flags.writeable = False
        return pixels, flat[:32].tobytes().hex()

    def _store(self, sha: str, item: Decoded) -> None:
        arr, digest = item
        if arr.shape != self.shape or arr.dtype != np.uint8:
            return
        arr = np.ascontiguousarray(arr)
        if self.memory_bytes > 0:
            frozen = arr.copy()
            frozen.flags.writeable = False
            _MEMORY.put((sha, self.policy), (frozen, digest), self.memory_bytes)
        if self.root is not None and _DIGEST.match(digest):
            self._write(sha, arr, digest)

    def _write(self, sha: str, arr: np.ndarray, digest: str) -> None:
        path = self._entry(sha)
        tmp = path.with_name(f"tmp-{sha[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy")
        header = bytes.fromhex(digest) + zlib.crc32(arr).to_bytes(4, "little")
        flat = np.concatenate([np.frombuffer(header, np.uint8), arr.reshape(-1)])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                np.save(handle, flat, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk or a cleared folder costs a decode next time, nothing more
            log.debug("decoded cache: cannot write %s (%s)", path, exc)
            return
        finally:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        with self._lock:
            self._written += 1


def _content_sha(path: str) -> tuple[str, tuple[int, int]]:
    """SHA-256 of the file's bytes and its ``(size, mtime_ns)`` when it was read."""
    with open(path, "rb") as handle:
        stamp = _stamp(os.fstat(handle.fileno()))
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return digest, stamp


def _stamp(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


def _check(flat: np.ndarray, shape: tuple[int, int, int]) -> str | None:
    """Why a loaded entry cannot be used, or None."""
    expected = _HEADER + int(np.prod(shape))
    if flat.dtype != np.uint8 or flat.ndim != 1 or flat.size != expected:
        return f"dtype {flat.dtype} shape {flat.shape}, expected uint8 ({expected},)"
    crc = int.from_bytes(flat[32:_HEADER].tobytes(), "little")
    if zlib.crc32(flat[_HEADER:]) != crc:
        return "pixel checksum mismatch"
    return None


# ---------------------------------------------------------------- the disk tier as a whole


@dataclass(frozen=True)
class DecodedInfo:
    """What ``medtl cache info`` prints about the decoded-image cache.

    Attributes:
        root: The disk tier's folder.
        entries: Number of stored images.
        bytes: Their size on disk.
        max_bytes: The bound (``$MEDTL_DECODED_CACHE_GB``).
        enabled: False when ``$MEDTL_DECODED_CACHE`` switches the disk tier off.
        policies: ``policy → (entries, bytes)``, largest first.
    """

    root: Path
    entries: int
    bytes: int
    max_bytes: int
    enabled: bool
    policies: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class _Stored:
    path: Path
    policy: str
    bytes: int
    last_used: int


def _scan(root: Path) -> Iterator[_Stored]:
    """Entries under ``root`` (``<policy>/<xx>/<sha>.npy``); temporary files of dead writers are removed."""
    now = time.time_ns()
    for policy in _subdirs(root):
        for shard in _subdirs(Path(policy.path)):
            try:
                files = list(os.scandir(shard.path))
            except OSError:
                continue
            for entry in files:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if _ENTRY.match(entry.name):
                    yield _Stored(Path(entry.path), policy.name, stat.st_size, stat.st_mtime_ns)
                elif _TMP.match(entry.name) and now - stat.st_mtime_ns > _STALE_TMP_NS:
                    with suppress(OSError):
                        os.unlink(entry.path)


def _subdirs(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise eviction and clearing between processes."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def evict(root: Path, max_bytes: int) -> tuple[int, int]:
    """Remove least-recently-used entries until the entries under ``root`` total at most ``max_bytes``.

    Args:
        root: The disk tier's folder.
        max_bytes: The bound.

    Returns:
        ``(entries removed, bytes freed)``.
    """
    with _locked(root):
        stored = sorted(_scan(root), key=lambda s: s.last_used)
        total = sum(s.bytes for s in stored)
        removed = freed = 0
        for entry in stored:
            if total <= max_bytes:
                break
            with suppress(FileNotFoundError):
                entry.path.unlink()
                removed, freed = removed + 1, freed + entry.bytes
            total -= entry.bytes
    if removed:
        log.info("decoded cache: evicted %d least recently used images (%.1f MiB) to stay under %.1f GiB",
                 removed, freed / 2**20, max_bytes / 2**30)
    return removed, freed


def info(root: Path | None = None) -> DecodedInfo:
    """Entries and bytes of the disk tier (``root`` defaults to :func:`default_root`)."""
    root = root or default_root()
    policies: dict[str, list[int]] = {}
    for entry in _scan(root):
        counts = policies.setdefault(entry.policy, [0, 0])
        counts[0] += 1
        counts[1] += entry.bytes
    ordered = dict(sorted(((k, (v[0], v[1])) for k, v in policies.items()), key=lambda kv: -kv[1][1]))
    return DecodedInfo(root=root, entries=sum(v[0] for v in ordered.values()),
                       bytes=sum(v[1] for v in ordered.values()), max_bytes=disk_limit(), enabled=disk_enabled(),
                       policies=ordered)


def clear(root: Path | None = None) -> tuple[int, int]:
    """Delete every stored image (and this process's memory tier); foreign files are left alone.

    Args:
        root: The disk tier's folder (default :func:`default_root`).

    Returns:
        ``(entries removed, bytes freed)`` on disk.
    """
    root = root or default_root()
    clear_memory()
    if not root.is_dir():
        return 0, 0
    removed = freed = 0
    with _locked(root):
        for entry in list(_scan(root)):
            with suppress(FileNotFoundError):
                entry.path.unlink()
                removed, freed = removed + 1, freed + entry.bytes
        for policy in _subdirs(root):
            for shard in _subdirs(Path(policy.path)):
                with suppress(OSError):
                    for name in os.listdir(shard.path):
                        if _TMP.match(name):
                            os.unlink(os.path.join(shard.path, name))
                with suppress(OSError):
                    os.rmdir(shard.path)
            with suppress(OSError):
                os.rmdir(policy.path)
    return removed, freed
