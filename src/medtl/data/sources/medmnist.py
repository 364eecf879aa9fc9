"""``data.source: medmnist``: an official MedMNIST ``.npz`` (keys ``{split}_images`` / ``{split}_labels``).

Sample ids are ``train[115]``; paths ``<abs npz path>::train[115]``; the file's split is kept.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from medtl.config import DataConfig
from medtl.data.images import array_hash
from medtl.data.medmnist import MEDMNIST_FILES
from medtl.data.samples import SPLITS, Listing, Sample, require_file
from medtl.data.sources.base import DataSource
from medtl.errors import DataError

_REF = re.compile(r"^(train|val|test)\[(\d+)\]$")


class MedmnistSource(DataSource):
    """MedMNIST arrays; each file's image arrays are loaded once per source object."""

    name: ClassVar[str] = "medmnist"

    def __init__(self) -> None:
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def list_samples(self, cfg: DataConfig) -> Listing:
        """One sample per image of the three splits, in file order."""
        path = _require_medmnist_file(cfg.path)
        labels = _npz_labels(path)
        class_names = _medmnist_classes(path, labels, cfg.classes)
        samples = [
            Sample(id=f"{split}[{i}]", path=f"{path}::{split}[{i}]", label=int(y), patient=None, split=split)
            for split in SPLITS
            for i, y in enumerate(labels[split])
        ]
        return Listing(samples, class_names)

    def decode(self, sample: Sample, cfg: DataConfig) -> tuple[Image.Image, str]:
        """The array a reference ``<file.npz>::split[i]`` names, and its hash."""
        file, _, ref = sample.path.rpartition("::")
        match = _REF.match(ref)
        if not file or match is None:
            raise DataError(f"{sample.path}: not a MedMNIST reference '<file>::split[index]'")
        arr = self._images(file)[match.group(1)][int(match.group(2))]
        return Image.fromarray(arr), array_hash(arr)

    def _images(self, file: str) -> dict[str, np.ndarray]:
        with self._lock:
            if file not in self._arrays:
                with _open_npz(Path(require_file(Path(file), "path"))) as npz:
                    self._arrays[file] = {split: np.asarray(npz[f"{split}_images"]) for split in SPLITS}
            return self._arrays[file]


def _require_medmnist_file(path: Path | None) -> Path:
    if path is not None and not path.is_file() and path.stem in MEDMNIST_FILES:
        raise DataError(
            f"data.path {path} does not exist; get the official file with "
            f"medtl.data.ensure_medmnist('{path.stem}', Path('{path.parent}')) or download it from "
            f"{MEDMNIST_FILES[path.stem]['url']} to that path"
        )
    return require_file(path, "path")


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
