"""Frozen-prefix activation cache: compute the frozen layers of a backbone once, train the rest.

When training starts at a cut point (``fine_tune`` with ``unfreeze_from``, the lowest step of a
``gradual`` schedule, or ``feature_extraction`` = cut ``head``), every layer before it is frozen and
in eval mode, so its output for a given image never changes. :func:`split_at` splits the backbone
there into a :class:`FrozenPrefix` and a trainable ``suffix`` with ``suffix(prefix(x)) == backbone(x)``
(checked on a random input); :class:`ActivationCache` keeps the prefix's outputs on disk, memory
mapped, so later epochs, folds, runs and processes skip the prefix entirely.

Design:

- An entry is one block ``(N, ...)`` per (image array, view): a ``.npy`` file named by the sha256 of
  everything the activations depend on (prefix weights, backbone, cut, preprocessing, view,
  augmentation + seed for augmented views, the images' bytes, storage dtype), plus a ``.json``
  sidecar describing it. The directory is the index: nothing else has to stay consistent.
- Writers fill a temporary file and publish it with ``os.replace``; a per-key ``flock`` makes a
  second process wait for the first instead of computing the same block twice, and a global
  ``flock`` serialises publishing, eviction and clearing. Readers keep a valid mapping even when
  the file is evicted or replaced under them (POSIX unlink semantics).
- Least-recently-used eviction keeps the total under ``max_bytes``; a read sets the file's mtime.
- Views: view 0 is the unaugmented image, ``"hflip"``, ``"zoom"`` and ``"zoom_hflip"`` its test-time
  views (``medtl.data.transforms.tta_view``), view
  ``k > 0`` an augmented copy drawn with ``build_augment`` from a seed derived from
  ``(seed, k, image index)``, so every view is reproducible. :class:`PrefixViewsDataset` samples
  one of K views per image and epoch.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from rich.progress import track
from torch import nn
from torch.utils.data import Dataset

from medtl.config import AugmentConfig, TransferConfig
from medtl.data.storage import take
from medtl.data.transforms import TTA_VIEWS, Normalizer, tta_view
from medtl.errors import ConfigError, MedtlError
from medtl.models.cuts import check_cut_point, cut_points, walk
from medtl.models.fast import FastForward

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the meaning of stored activations changes; old entries then simply miss."""
DEFAULT_MAX_BYTES = 20 * 2**30
DTYPES = ("float16", "float32")

View = int | str
"""0: the image; ``"hflip"``, ``"zoom"``, ``"zoom_hflip"``: its test-time views; k > 0: the k-th augmented copy."""
TEST_VIEWS: tuple[str, ...] = TTA_VIEWS["hflip_zoom"][1:]
"""The named (test-time) views besides the plain image."""

ComputeFn = Callable[[np.ndarray, np.ndarray, View], Iterable[np.ndarray | torch.Tensor]]
"""``(images, indices, view)`` → activation batches, in the order of ``indices``."""

_ENTRY = re.compile(r"^[0-9a-f]{64}$")
_TMP = re.compile(r"^tmp-[0-9a-f]{16}-(\d+)-[0-9a-f]{8}\.(npy|json)$")


# ---------------------------------------------------------------- splitting


class FrozenPrefix(nn.Module):
    """The backbone's forward path before a cut point, channels_last input.

    Modules keep their original names (``conv_stem``, ``blocks.3``) and are shared with the backbone.
    :func:`prefix_batches` runs it in eval mode under ``torch.inference_mode``; ``train()`` never
    leaves eval mode.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, module in modules:
            parent, _, sub = name.rpartition(".")
            if parent and not hasattr(self, parent):
                self.add_module(parent, nn.Sequential())
            (getattr(self, parent) if parent else self).add_module(sub, module)
        self.order = [name for name, _ in modules]
        self.training = False  # the wrapper only: the shared modules keep the backbone's modes

    def train(self, mode: bool = True) -> FrozenPrefix:
        """Frozen layers never leave eval mode (BatchNorm statistics, no dropout)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for name in self.order:
            x = self.get_submodule(name)(x)
        return x


@dataclass
class PrefixSplit:
    """A backbone split at ``cut``: ``suffix(prefix(x)) == backbone(x)``.

    ``suffix`` is a copy of the backbone whose prefix modules are ``nn.Identity``; its other modules
    are the backbone's own (shared, so training the suffix trains the full model), and its cut
    points are the backbone's from ``cut`` on, so ``TransferNet(suffix, head)`` works with
    ``set_trainable``, ``GradualUnfreeze`` and per-layer learning rates. For ``cut='head'`` the prefix
    is the whole backbone (pooled features) and the suffix is ``nn.Identity``.
    """

    prefix: FrozenPrefix
    suffix: nn.Module
    cut: str


def cache_cut(backbone: nn.Module, transfer: TransferConfig) -> str | None:
    """The cut point below which ``transfer`` never trains anything, or None (nothing to cache).

    ``feature_extraction`` → ``'head'``; ``fine_tune``/``truncated`` → ``unfreeze_from``; ``gradual``
    → its last (lowest) step's ``unfreeze_from``; ``scratch`` or training from the first layer → None.
    """
    if transfer.strategy == "feature_extraction":
        return "head"
    if transfer.strategy in ("fine_tune", "truncated"):
        cut = transfer.unfreeze_from
    elif transfer.strategy == "gradual":
        cut = transfer.schedule[-1].unfreeze_from
    else:
        return None
    return None if cut is None or cut == cut_points(backbone)[0] else cut


def split_at(backbone: nn.Module, cut: str, verify_size: int | None = 64) -> PrefixSplit:
    """Split ``backbone`` before cut point ``cut`` (or after everything, ``'head'``).

    Args:
        backbone: A pooled-feature backbone (timm ``num_classes=0``, ``TruncatedBackbone``, ``small_cnn``).
        cut: The first trainable cut point, or ``'head'``.
        verify_size: Check ``suffix(prefix(x)) == backbone(x)`` in eval mode on a random image of this
            size (None skips the check).

    Raises:
        ConfigError: ``cut`` is no cut point, a prefix parameter is trainable, or the split does not
            reproduce the backbone (a forward with operations between the top-level modules).
    """
    if cut == "head":
        split = PrefixSplit(FrozenPrefix([("backbone", backbone)]), nn.Identity(), cut)
    else:
        check_cut_point(backbone, cut, "prefix cache cut")
        order = walk(backbone)
        start = [name for name, _ in order].index(cut)
        memo: dict[int, object] = {id(m): nn.Identity() for _, m in order[:start]}
        memo.update({id(m): m for _, m in order[start:]})
        memo.update({id(t): t for t in [*backbone.parameters(recurse=False), *backbone.buffers(recurse=False)]})
        suffix = copy.deepcopy(backbone, memo)  # containers copied, modules shared or replaced
        split = PrefixSplit(FrozenPrefix(order[:start]), suffix, cut)
    trainable = [name for name, p in split.prefix.named_parameters() if p.requires_grad]
    if trainable:
        raise ConfigError(f"prefix cache: '{trainable[0]}' lies before the cut '{cut}' but is trainable; "
                          "cache only below the first trainable cut point (apply the transfer strategy first)")
    if verify_size:
        _verify(backbone, split, verify_size)
    return split


def _verify(backbone: nn.Module, split: PrefixSplit, size: int) -> None:
    param = next(backbone.parameters())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(param.device, param.dtype).contiguous(memory_format=torch.channels_last)
    with _eval_mode(backbone, split.suffix), torch.no_grad():
        expected, got = backbone(x), split.suffix(split.prefix(x))
    try:
        torch.testing.assert_close(got, expected)
    except AssertionError as exc:
        raise ConfigError(f"prefix cache: splitting {type(backbone).__name__} at '{split.cut}' does not reproduce "
                          f"its forward ({str(exc).splitlines()[0]}); train without the prefix cache") from None


@contextmanager
def _eval_mode(*roots: nn.Module) -> Iterator[None]:
    """Eval mode inside, every module's previous mode restored afterwards."""
    modes = [(m, m.training) for root in roots for m in root.modules()]
    for root in roots:
        root.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def module_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class PrefixKey:
    """What prefix activations depend on besides the images, the view and the storage dtype.

    ``augment`` and ``seed`` only enter the key of augmented views (k > 0): the unaugmented and
    mirrored views are shared by runs that differ only in augmentation.
    """

    weights: str
    backbone: str
    cut: str
    preprocessing: Mapping[str, object] = field(default_factory=dict)
    augment: Mapping[str, object] = field(default_factory=dict)
    seed: int = 0

    def parts(self, view: View) -> dict[str, object]:
        """The JSON-able key parts of ``view``."""
        parts: dict[str, object] = {"weights": self.weights, "backbone": self.backbone, "cut": self.cut,
                                    "preprocessing": dict(self.preprocessing)}
        if _augmented_view(view):
            parts |= {"augment": dict(self.augment), "seed": self.seed}
        return parts


def prefix_key(split: PrefixSplit, backbone: str, preprocessing: object, augment: AugmentConfig | None = None,
               seed: int = 0) -> PrefixKey:
    """The key of ``split``'s activations; the weights part hashes the prefix's own tensors.

    Args:
        split: The split whose prefix is cached.
        backbone: The architecture name (``cfg.model.backbone``).
        preprocessing: A ``medtl.models.network.Preprocessing`` (or any dataclass / mapping).
        augment: The augmentation of views k > 0; every field enters the key, the albumentations
            families only when set (so keys of configs without families are those of earlier versions).
        seed: Seed of the augmented views.
    """
    pre = asdict(preprocessing) if is_dataclass(preprocessing) else dict(preprocessing)  # type: ignore[arg-type]
    return PrefixKey(module_sha256(split.prefix), backbone, split.cut, pre,
                     augment.model_dump(exclude_none=True) if augment is not None else {}, seed)


def images_sha256(images: np.ndarray, indices: np.ndarray, chunk: int = 256) -> str:
    """SHA-256 of ``images[indices]`` (shape, dtype, bytes, in order)."""
    digest = hashlib.sha256(f"{images.shape[1:]}|{images.dtype.str}|{len(indices)}|".encode())
    for start in range(0, len(indices), chunk):
        digest.update(np.ascontiguousarray(take(images, indices[start:start + chunk])).tobytes())
    return digest.hexdigest()


def _view(view: View) -> View:
    """``view`` checked and normalised (numpy integers become ``int``, so the key is the same)."""
    if view in TEST_VIEWS:
        return view
    if isinstance(view, (int, np.integer)) and not isinstance(view, bool) and view >= 0:
        return int(view)
    raise ValueError(f"view {view!r}: use 0 (the image), one of {', '.join(TEST_VIEWS)} or an augmented view k > 0")


def _augmented_view(view: View) -> bool:
    return _view(view) not in (0, *TEST_VIEWS)


# ---------------------------------------------------------------- the on-disk cache


def default_root() -> Path:
    """``$MEDTL_CACHE/activations``, or ``~/.cache/medtl/activations``."""
    return Path(os.environ.get("MEDTL_CACHE") or "~/.cache/medtl").expanduser() / "activations"


@dataclass(frozen=True)
class CacheInfo:
    """What ``medtl cache info`` prints."""

    root: Path
    entries: int
    bytes: int
    max_bytes: int


@dataclass(frozen=True)
class _Entry:
    digest: str
    bytes: int
    last_used: int


class ActivationCache:
    """Memory-mapped prefix activations on disk, keyed by content, LRU-evicted to ``max_bytes``.

    Args:
        root: Folder of the entries (created); :func:`default_root` when None.
        max_bytes: Size cap of all entries together.
        dtype: Storage dtype, ``float16`` (half the disk and page cache) or ``float32`` (exact).
    """

    def __init__(self, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES, dtype: str = "float16") -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"prefix cache dtype '{dtype}': use one of {', '.join(DTYPES)}")
        if max_bytes <= 0:
            raise ConfigError(f"prefix cache max_bytes {max_bytes}: must be positive")
        self.root = Path(root) if root is not None else default_root()
        self.max_bytes = int(max_bytes)
        self.dtype = dtype
        (self.root / "locks").mkdir(parents=True, exist_ok=True)

    def digest(self, key: PrefixKey | Mapping[str, object], view: View, content: str) -> str:
        """The entry name of ``key``'s activations of ``view`` for images with sha256 ``content``."""
        parts = key.parts(view) if isinstance(key, PrefixKey) else dict(key)
        blob = json.dumps({"format": FORMAT_VERSION, "parts": parts, "view": _view(view), "content": content,
                           "dtype": self.dtype}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get_or_compute(self, key: PrefixKey | Mapping[str, object], images: np.ndarray, indices: np.ndarray,
                       compute_fn: ComputeFn, view: View = 0, content: str | None = None) -> np.ndarray:
        """Activations ``(len(indices), ...)`` of ``images[indices]``: read from disk, else computed and stored.

        Args:
            key: What the activations depend on besides the images (a :class:`PrefixKey` or any mapping).
            images: uint8 images; their bytes are part of the key.
            indices: Which images, in which order (row ``i`` belongs to ``images[indices[i]]``).
            compute_fn: ``(images, indices, view)`` → activation batches in the order of ``indices``.
            view: 0, ``'hflip'`` or an augmented view ``k > 0``.
            content: ``images_sha256(images, indices)`` when already known (saves hashing again).

        Returns:
            A read-only memory map, or an in-memory array when one entry alone exceeds ``max_bytes``.
        """
        indices = np.asarray(indices, dtype=np.int64)
        view = _view(view)
        digest = self.digest(key, view, content or images_sha256(images, indices))
        found = self._open(digest, len(indices))
        if found is not None:
            return found
        with _flock(self.root / "locks" / f"{digest}.lock"):
            found = self._open(digest, len(indices))  # another process may have written it meanwhile
            if found is not None:
                return found
            meta = {"parts": key.parts(view) if isinstance(key, PrefixKey) else dict(key), "view": view,
                    "images": len(indices), "dtype": self.dtype, "created": time.time()}
            return self._compute(digest, meta, images, indices, compute_fn, view)

    def info(self) -> CacheInfo:
        """Number and total size of the complete entries."""
        entries = self._entries()
        return CacheInfo(self.root, len(entries), sum(e.bytes for e in entries), self.max_bytes)

    def entries(self) -> list[dict[str, object]]:
        """The sidecar of every entry (key parts, view, shape, dtype) with its size, newest use first."""
        out = []
        for entry in sorted(self._entries(), key=lambda e: -e.last_used):
            meta = _read_json(self._path(entry.digest, ".json")) or {}
            out.append({"digest": entry.digest, "bytes": entry.bytes, "last_used": entry.last_used / 1e9, **meta})
        return out

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and temporary files of writers that died); returns (entries, bytes)."""
        with self._locked():
            entries = self._entries()
            for entry in entries:
                self._remove(entry.digest)
            for path in self.root.iterdir():
                tmp = _TMP.match(path.name)
                if (tmp and not _pid_alive(int(tmp.group(1)))) or (path.suffix == ".json" and _ENTRY.match(path.stem)):
                    path.unlink(missing_ok=True)  # a dead writer's file, or a sidecar without its block
        return len(entries), sum(e.bytes for e in entries)

    # -- internals

    def _path(self, digest: str, suffix: str) -> Path:
        return self.root / f"{digest}{suffix}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _flock(self.root / ".lock"):
            yield

    def _open(self, digest: str, rows: int) -> np.ndarray | None:
        """The entry's memory map when it exists and is whole; a broken entry is removed with a warning."""
        path = self._path(digest, ".npy")
        if not path.exists():
            return None
        try:
            meta = json.loads(self._path(digest, ".json").read_text())
            arr = np.load(path, mmap_mode="r")
            problem = _check(arr, meta, rows, self.dtype, path.stat().st_size)
        except FileNotFoundError:  # evicted or replaced by another process just now: a plain miss
            return None
        except (ValueError, OSError, EOFError, KeyError, TypeError) as exc:
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        if problem:
            log.warning("prefix cache: %s is corrupt (%s); removing it and computing again", path, problem)
            with self._locked():
                self._remove(digest)
            return None
        now = time.time_ns()
        with suppress(FileNotFoundError):  # evicted since it was opened: the mapping stays valid
            os.utime(path, ns=(now, now))  # the LRU clock
        return arr

    def _compute(self, digest: str, meta: dict, images: np.ndarray, indices: np.ndarray,
                 compute_fn: ComputeFn, view: View) -> np.ndarray:
        tmp = self.root / f"tmp-{digest[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy"
        log.info("prefix cache: computing %s view %s of %d images → %s", meta["parts"].get("cut", "?"), view,
                 len(indices), self._path(digest, ".npy"))
        try:
            shape = _write_blocks(tmp, compute_fn(images, indices, view), len(indices), self.dtype, digest)
            if tmp.stat().st_size > self.max_bytes:
                log.warning("prefix cache: one entry (%d MB) exceeds max_bytes (%d MB); kept in memory only",
                            tmp.stat().st_size >> 20, self.max_bytes >> 20)
                return np.load(tmp)
            with self._locked():
                _write_json(self._path(digest, ".json"), meta | {"shape": list(shape)})
                os.replace(tmp, self._path(digest, ".npy"))
                now = time.time_ns()
                os.utime(self._path(digest, ".npy"), ns=(now, now))
                self._evict(keep=digest)
                return np.load(self._path(digest, ".npy"), mmap_mode="r")
        finally:
            tmp.unlink(missing_ok=True)

    def _entries(self) -> list[_Entry]:
        out = []
        for path in self.root.glob("*.npy"):
            if not _ENTRY.match(path.stem):
                continue
            try:
                stat = path.stat()
                side = self._path(path.stem, ".json").stat().st_size
            except FileNotFoundError:
                continue
            out.append(_Entry(path.stem, stat.st_size + side, stat.st_mtime_ns))
        return out

    def _evict(self, keep: str) -> None:
        """Remove least-recently-used entries until the total fits ``max_bytes`` (call under the lock)."""
        entries = sorted(self._entries(), key=lambda e: e.last_used)
        total = sum(e.bytes for e in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.digest != keep:
                log.info("prefix cache: evicting %s (%d MB, least recently used)", entry.digest[:12], entry.bytes >> 20)
                self._remove(entry.digest)
                total -= entry.bytes

    def _remove(self, digest: str) -> None:
        for suffix in (".npy", ".json"):
            self._path(digest, suffix).unlink(missing_ok=True)
        (self.root / "locks" / f"{digest}.lock").unlink(missing_ok=True)


def _check(arr: np.ndarray, meta: dict, rows: int, dtype: str, size: int) -> str | None:
    """Why a stored block cannot be used, or None."""
    if tuple(arr.shape) != tuple(meta["shape"]) or arr.shape[0] != rows:
        return f"shape {tuple(arr.shape)}, expected {tuple(meta['shape'])} with {rows} rows"
    if arr.dtype != np.dtype(dtype):
        return f"dtype {arr.dtype}, expected {dtype}"
    if size != arr.offset + arr.nbytes:
        return f"{size} bytes on disk, expected {arr.offset + arr.nbytes}"
    return None


def _write_blocks(path: Path, batches: Iterable[np.ndarray | torch.Tensor], rows: int, dtype: str,
                  digest: str) -> tuple[int, ...]:
    """Stream activation batches into a new ``.npy`` at ``path``; returns its shape."""
    out = None
    row = 0
    for batch in batches:
        batch = batch.detach().float().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        with np.errstate(over="ignore"):  # an overflow is reported just below, with the fix
            stored = batch.astype(dtype)
        if not np.isfinite(stored).all():
            raise MedtlError(f"prefix cache entry {digest[:12]}: activations are not finite in {dtype} "
                             "(overflow or NaN); use ActivationCache(dtype='float32') or check the model")
        if out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, *batch.shape[1:]))
        if row + len(batch) > rows:
            raise MedtlError(f"prefix cache entry {digest[:12]}: compute_fn returned more than {rows} rows")
        out[row:row + len(batch)] = stored
        row += len(batch)
    if out is None or row != rows:
        raise MedtlError(f"prefix cache entry {digest[:12]}: compute_fn returned {row} of {rows} rows")
    out.flush()
    shape = tuple(out.shape)
    del out
    return shape


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f"tmp-{path.stem[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
    tmp.write_text(json.dumps(obj, sort_keys=True, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- views


def view_seed(seed: int, view: int, index: int) -> int:
    """The RNG seed of augmented ``view`` of image ``index`` (independent of batching and order)."""
    return int(np.random.SeedSequence([seed, view, index]).generate_state(1, np.uint64)[0] >> 1)


def view_images(images: np.ndarray, indices: np.ndarray, view: View, augment: Callable | None,
                seed: int) -> torch.Tensor:
    """``(B, C, H, W)`` pixel images of ``view``: augmented per image with a fixed seed, or a test-time view."""
    x = torch.from_numpy(np.ascontiguousarray(take(images, indices))).permute(0, 3, 1, 2)
    if view in TEST_VIEWS:
        return tta_view(x, view)
    if not _augmented_view(view):
        return x
    if augment is None:
        raise ConfigError(f"augmented view {view} needs an augmentation (data.augment is off)")
    out = []
    for img, index in zip(x, indices, strict=True):
        with torch.random.fork_rng(devices=[]):  # the process's global RNG is left as it was
            torch.manual_seed(view_seed(seed, int(view), int(index)))
            out.append(augment(img))
    return torch.stack(out)


def prefix_batches(prefix: nn.Module, normalizer: Normalizer, images: np.ndarray, indices: np.ndarray,
                   view: View = 0, augment: Callable | None = None, seed: int = 0, batch_size: int = 64,
                   device: str = "cpu", progress: bool = False, fast: bool = True) -> Iterator[torch.Tensor]:
    """Prefix activations of ``view`` of ``images[indices]``, batch by batch (eval, inference mode).

    The prefix is moved to ``device`` for the computation and back afterwards; ``fast`` runs it
    traced and frozen on CPU (:mod:`medtl.models.fast`).
    """
    home = next(prefix.parameters(), torch.empty(0)).device
    starts = range(0, len(indices), batch_size)
    if progress and len(starts) > 1:
        starts = track(starts, description=f"prefix activations (view {view})", transient=True)
    prefix.to(device)
    try:
        with _eval_mode(prefix):
            run = FastForward(prefix, len(indices), fast)
            for start in starts:
                x = view_images(images, indices[start:start + batch_size], view, augment, seed)
                yield _forward(run, normalizer, x, device)
    finally:
        prefix.to(home)


@torch.inference_mode()
def _forward(prefix: Callable[[torch.Tensor], torch.Tensor], normalizer: Normalizer, x: torch.Tensor,
             device: str) -> torch.Tensor:
    # Not a `with` around the generator's yield: inference mode is thread state and would leak to the caller.
    return prefix(normalizer(x.to(device))).float().cpu()


def prefix_views(cache: ActivationCache, split: PrefixSplit, key: PrefixKey, images: np.ndarray,
                 normalizer: Normalizer, views: Sequence[View] = (0,), augment: Callable | None = None,
                 batch_size: int = 64, device: str = "cpu", progress: bool = False,
                 fast: bool = True) -> list[np.ndarray]:
    """One cached block ``(len(images), ...)`` per view, over all images (so every fold shares them).

    Args:
        cache: Where the blocks live.
        split: The split whose prefix is run on a miss.
        key: :func:`prefix_key` of ``split`` (its ``seed`` seeds the augmented views).
        images: All decoded uint8 images ``(N, S, S, C)``.
        normalizer: The weights' normaliser.
        views: E.g. ``range(K)`` for training views, ``["hflip"]`` for test-time mirroring.
        augment: ``build_augment(cfg.data.augment)``, needed for views k > 0.
        batch_size: Images per prefix forward.
        device: Where the prefix runs on a miss.
        progress: Show a progress bar while computing.
        fast: Run the prefix traced and frozen on CPU (:mod:`medtl.models.fast`).
    """
    indices = np.arange(len(images))
    content = images_sha256(images, indices)

    def compute(imgs: np.ndarray, idx: np.ndarray, view: View) -> Iterator[torch.Tensor]:
        return prefix_batches(split.prefix, normalizer, imgs, idx, view, augment, key.seed, batch_size, device,
                              progress, fast)

    return [cache.get_or_compute(key, images, indices, compute, view, content) for view in views]


class PrefixViewsDataset(Dataset):
    """Items ``(activation, label)``: for each image one of the K cached views, drawn per epoch.

    The draw depends only on ``(seed, epoch, item)``. The epoch lives in shared memory, so
    :meth:`set_epoch` (or the :class:`ViewEpoch` callback) reaches DataLoader workers too.

    Args:
        views: K blocks covering all images (from :func:`prefix_views`); view 0 first.
        indices: The images of this dataset (rows of the blocks).
        labels: Labels of all images.
        seed: Seed of the view draw.
    """

    def __init__(self, views: Sequence[np.ndarray], indices: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
        if not views:
            raise ValueError("PrefixViewsDataset needs at least one view")
        self.views = list(views)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._drawn: tuple[int, np.ndarray] | None = None

    @property
    def k(self) -> int:
        return len(self.views)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def targets(self) -> np.ndarray:
        """The label of every item, in item order (``train.sampler: balanced``)."""
        return self.labels[self.indices]

    def view_of(self, i: int) -> int:
        """The view item ``i`` shows in the current epoch."""
        epoch = int(self._epoch)
        if self._drawn is None or self._drawn[0] != epoch:
            draw = np.random.default_rng([self.seed, epoch]).integers(0, self.k, size=len(self.indices))
            self._drawn = (epoch, draw)
        return int(self._drawn[1][i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.indices[i]
        return torch.from_numpy(np.array(self.views[self.view_of(i)][row])), int(self.labels[row])

    def __getstate__(self) -> dict:
        # A memory map pickles as a full copy; spawned workers reopen the file instead.
        state = self.__dict__.copy()
        state["views"] = [("npy", str(v.filename)) if isinstance(v, np.memmap) and v.filename else v
                          for v in self.views]
        return state

    def __setstate__(self, state: dict) -> None:
        state["views"] = [np.load(v[1], mmap_mode="r") if isinstance(v, tuple) else v for v in state["views"]]
        self.__dict__.update(state)


class ViewEpoch(L.Callback):
    """Tell a :class:`PrefixViewsDataset` the epoch at the start of every training epoch."""

    def __init__(self, dataset: PrefixViewsDataset) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


def activation_prepare(x: torch.Tensor) -> torch.Tensor:
    """The ``prepare`` of a ClassifierModule on cached activations: float32, channels_last."""
    x = x.float()
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@torch.inference_mode()
def run_cached(module: nn.Module, block: np.ndarray, indices: np.ndarray, batch_size: int = 128,
               device: str = "cpu") -> torch.Tensor:
    """``module`` (eval) on cached activations ``block[indices]``, float32 on the CPU.

    With the suffix this gives the pooled features (a linear probe's input); with
    ``TransferNet(suffix, head)`` the logits.
    """
    module = module.to(device).eval()
    out = []
    for start in range(0, len(indices), batch_size):
        x = torch.from_numpy(np.array(block[indices[start:start + batch_size]]))
        out.append(module(activation_prepare(x.to(device))).float().cpu())
    return torch.cat(out)


def predict_cached(model: nn.Module, blocks: Sequence[np.ndarray], indices: np.ndarray, batch_size: int = 128,
                   device: str = "cpu") -> np.ndarray:
    """Softmax probabilities from cached activations, averaged over the blocks (one per test-time view)."""
    if not blocks:
        raise ValueError("predict_cached needs at least one block of activations")
    probs = sum(run_cached(model, block, indices, batch_size, device).softmax(1) for block in blocks)
    return (probs / len(blocks)).numpy()
