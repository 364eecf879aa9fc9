"""Both caches seen together: what ``medtl cache info`` reports and what ``medtl cache clear`` deletes.

The activation cache (``train.prefix_cache``, :mod:`medtl.transfer.prefix_cache`) and the
decoded-image cache (``data.cache``, :mod:`medtl.data.decoded_cache`) each own their folder; this
module only asks them, so the CLI parses, calls one function and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medtl.data import decoded_cache
from medtl.transfer.prefix_cache import ActivationCache, CacheInfo, default_root

CacheKind = Literal["activations", "decoded", "all"]


@dataclass(frozen=True)
class CacheReport:
    """What ``medtl cache info`` shows.

    Attributes:
        activation_root: The activation cache's folder.
        activations: Its entries and bytes; None when the folder does not exist yet.
        activation_entries: Every activation entry's sidecar (only when asked for).
        decoded: The decoded-image cache's disk tier.
    """

    activation_root: Path
    activations: CacheInfo | None
    decoded: decoded_cache.DecodedInfo
    activation_entries: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (``medtl cache info --json``)."""
        act = self.activations
        dec = self.decoded
        return {
            "activations": {"root": str(self.activation_root), "exists": act is not None,
                            "entries": act.entries if act else 0, "bytes": act.bytes if act else 0,
                            "max_bytes": act.max_bytes if act else None,
                            "items": [dict(e) for e in self.activation_entries]},
            "decoded": {"root": str(dec.root), "enabled": dec.enabled, "entries": dec.entries, "bytes": dec.bytes,
                        "max_bytes": dec.max_bytes,
                        "policies": {p: {"entries": n, "bytes": b} for p, (n, b) in dec.policies.items()}},
        }


def cache_report(root: Path | None = None, entries: bool = False) -> CacheReport:
    """Where the two caches are and what they hold.

    Args:
        root: The activation cache folder (default :func:`medtl.transfer.prefix_cache.default_root`).
        entries: Also list every activation entry.

    Returns:
        The report; a missing activation folder is reported, not created.

    Raises:
        DataError: The activation folder is not a readable cache.
    """
    folder = root or default_root()
    info, listed = None, []
    if folder.is_dir():
        cache = ActivationCache(folder)
        info = cache.info()
        listed = cache.entries() if entries else []
    return CacheReport(folder, info, decoded_cache.info(), listed)


@dataclass(frozen=True)
class ClearTarget:
    """One cache that ``medtl cache clear`` will empty.

    Attributes:
        label: What is stored (``activation entries``, ``decoded images``).
        path: Its folder.
        entries: Entries it holds now.
        bytes: Their size.
        clear: Empties it; returns ``(entries removed, bytes freed)``.
    """

    label: str
    path: Path
    entries: int
    bytes: int
    clear: Callable[[], tuple[int, int]]


def clear_plan(root: Path | None = None, what: CacheKind = "all") -> tuple[list[ClearTarget], list[Path]]:
    """The caches ``medtl cache clear --what WHAT`` would empty (only folders that exist).

    Args:
        root: The activation cache folder (default: :func:`medtl.transfer.prefix_cache.default_root`).
        what: ``activations``, ``decoded`` or ``all``.

    Returns:
        The targets, and every folder looked at (for a "nothing to clear" message).

    Raises:
        DataError: The activation folder is not a readable cache.
    """
    folder = root or default_root()
    decoded_root = decoded_cache.default_root()
    looked = [folder] * (what != "decoded") + [decoded_root] * (what != "activations")
    targets = []
    if what != "decoded" and folder.is_dir():
        cache = ActivationCache(folder)
        info = cache.info()
        targets.append(ClearTarget("activation entries", folder, info.entries, info.bytes, cache.clear))
    if what != "activations" and decoded_root.is_dir():
        decoded = decoded_cache.info(decoded_root)
        targets.append(ClearTarget("decoded images", decoded_root, decoded.entries, decoded.bytes,
                                   lambda: decoded_cache.clear(decoded_root)))
    return targets, looked
