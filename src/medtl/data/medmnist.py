"""Official MedMNIST v2 files: where to get them, their checksums and class names.

medtl works offline: :func:`ensure_medmnist` only downloads when the file is not already in place,
and every file, present or downloaded, is checked against the official MD5.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from medtl.errors import DataError

logger = logging.getLogger(__name__)

_ZENODO = "https://zenodo.org/records/10519652/files"

MEDMNIST_FILES: dict[str, dict[str, Any]] = {
    "breastmnist": {
        "url": f"{_ZENODO}/breastmnist.npz?download=1",
        "md5": "750601b1f35ba3300ea97c75c52ff8f6",
        "classes": ["malignant", "normal_or_benign"],
    },
    "pneumoniamnist": {
        "url": f"{_ZENODO}/pneumoniamnist.npz?download=1",
        "md5": "28209eda62fecd6e6a2d98b1501bb15f",
        "classes": ["normal", "pneumonia"],
    },
}
"""Known MedMNIST files by name (= file stem): official Zenodo URL, MD5 and class names by label."""

_CHUNK = 1 << 20
_TIMEOUT_S = 30


def ensure_medmnist(name: str, root: Path, download: bool = True) -> Path:
    """Return the path of an official MedMNIST file, downloading it if it is missing.

    Args:
        name: A key of :data:`MEDMNIST_FILES`, e.g. ``"breastmnist"``.
        root: Folder that holds (or will hold) ``<name>.npz``.
        download: Fetch the file from Zenodo when it is not in ``root``.

    Returns:
        ``root / f"{name}.npz"``, MD5-verified.

    Raises:
        DataError: Unknown name, MD5 mismatch, file missing with ``download=False``, or a failed
            download.
    """
    info = _info(name)
    target = Path(root) / f"{name}.npz"
    if target.is_file():
        _verify_md5(target, info["md5"])
        return target
    if not download:
        raise DataError(
            f"{target}: MedMNIST file '{name}' not found and download is off; "
            f"place the official file there (from {info['url']}) or allow the download"
        )
    _download(info["url"], target, info["md5"])
    return target


def md5_of(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _info(name: str) -> dict[str, Any]:
    if name not in MEDMNIST_FILES:
        raise DataError(f"unknown MedMNIST file '{name}'; known: {', '.join(sorted(MEDMNIST_FILES))}")
    return MEDMNIST_FILES[name]


def _verify_md5(path: Path, expected: str) -> None:
    actual = md5_of(path)
    if actual != expected:
        raise DataError(
            f"{path}: MD5 {actual} does not match the official {expected}; the file is corrupt or "
            "not the official MedMNIST release: delete it and download it again"
        )
    logger.debug("%s: MD5 verified", path)


def _download(url: str, target: Path, expected_md5: str) -> None:
    """Download ``url`` to a temporary file next to ``target``, verify it, then move it in place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    logger.info("downloading %s to %s", url, target)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
        actual = md5_of(tmp)
        if actual != expected_md5:
            raise DataError(
                f"downloaded {url} has MD5 {actual}, expected {expected_md5}; nothing was written to "
                f"{target}: retry later or place the official file there yourself"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"download of {url} failed ({exc}); medtl works offline if you place the official file "
            f"at {target} yourself (get it from {url})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
