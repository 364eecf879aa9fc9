"""NIfTI volumes as a data source (``data.source: nifti``): 2-D slices of ``.nii``/``.nii.gz`` files.

Volumes come from one subfolder per class under ``data.root`` (like the folder source) or from the
rows of ``data.csv`` (the csv source's columns and rules: path, label, optional patient and split,
plus an optional mask column). :meth:`NiftiSource.list_samples` reads only headers (and the mask
volumes when ``data.nifti.slices: mask``) and lists one sample per kept slice, with the id
``<relative path>#z=<slice>``. Every slice of a volume carries the same patient, the CSV's patient
id or else the volume itself, so slices of one volume never straddle splits.

Pixels: the voxel values with the file's ``scl_slope``/``scl_inter`` applied (nibabel), scaled to
0..255 per volume (``data.nifti.intensity``), sliced along ``data.nifti.axis`` of the voxel array
and rotated by 90 degrees so that the slice's second in-plane axis points up (anterior or superior
up for volumes stored in RAS order). A file that cannot be used (not NIfTI, truncated, 2-D, mask of
another shape) is reported with the reason in ``bad``; the other volumes are still used.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
from PIL import Image
from rich.progress import track

from medtl.config import DataConfig, NiftiConfig, NiftiIntensity
from medtl.data.images import array_hash, to_array
from medtl.data.samples import Listing, Sample, SampleTable, read_csv
from medtl.data.sources.base import DataSource
from medtl.data.sources.csvfile import CsvSource
from medtl.errors import DataError

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
"""File name endings read as NIfTI volumes (case-insensitive)."""

NIFTI_ERRORS: tuple[type[Exception], ...] = (
    nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, TypeError,
)
"""What nibabel raises on unreadable, truncated or non-NIfTI files."""

_MARK = "#z="
_MAX_LISTED = 10
_Result = tuple[np.ndarray, str] | str


@dataclass(frozen=True)
class Volume:
    """One listed volume before its header is read.

    Attributes:
        path: Absolute file path.
        rel: Path relative to ``data.root`` (folder) or as written in the CSV.
        label: Class index.
        patient: The CSV's patient id, ``None`` when there is none.
        split: The CSV's split, ``None`` when there is none.
        mask: The mask volume of ``data.nifti.slices: mask``, else ``None``.
    """

    path: Path
    rel: str
    label: int
    patient: str | None
    split: str | None
    mask: Path | None


class NiftiSource(DataSource):
    """``data.source: nifti``: slices of NIfTI volumes (the data source protocol: list, decode one, decode all)."""

    name: ClassVar[str] = "nifti"

    def list_samples(self, cfg: DataConfig) -> Listing:
        """One sample per kept slice of every usable volume; unusable volumes are listed in ``bad``.

        Raises:
            DataError: Missing folder or CSV, bad CSV, no volumes at all, or no usable volume.
        """
        volumes, class_names = _csv_volumes(cfg) if cfg.csv is not None else _folder_volumes(cfg)
        samples: list[Sample] = []
        bad: list[tuple[str, str]] = []
        usable: list[Volume] = []
        for volume in volumes:
            try:
                samples += volume_samples(volume, cfg.nifti)
                usable.append(volume)
            except DataError as exc:
                bad.append((volume.rel, str(exc)))
        if not samples:
            listed = "; ".join(reason for _, reason in bad[:3])
            raise DataError(f"{cfg.location}: no usable NIfTI volume among {len(volumes)} ({listed}); "
                            "fix or replace the files")
        _warn_without_patient(usable, cfg.location)
        logger.info("%s: %d NIfTI volumes -> %d slices (axis %d, %s); %d volumes unusable", cfg.location,
                    len(usable), len(samples), cfg.nifti.axis, cfg.nifti.slices, len(bad))
        return Listing(samples, class_names, bad)

    def decode(self, sample: Sample, cfg: DataConfig) -> tuple[Image.Image, str]:
        """One slice at full resolution and its hash (the volume is loaded and scaled as a whole).

        Raises:
            DataError: The volume cannot be read or the slice does not exist.
        """
        file, index = split_ref(sample.path)
        return render_slice(load_volume(file, cfg.nifti), index, cfg.nifti.axis, sample.id)

    def decode_all(self, table: SampleTable, cfg: DataConfig, progress: bool) -> list[_Result]:
        """Every sample as ``(uint8 array at cfg.image_size, hash)`` or its failure; each volume is read once."""
        by_file: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(table.samples):
            by_file[split_ref(s.path)[0]].append(i)
        results: list[_Result] = [""] * len(table.samples)
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = pool.map(lambda f: _decode_volume(f, [table.samples[i] for i in by_file[f]], cfg), list(by_file))
            for file, out in track(zip(list(by_file), done, strict=True), total=len(by_file),
                                   description="decoding NIfTI", disable=not progress, transient=True):
                for i, result in zip(by_file[file], out, strict=True):
                    results[i] = result
        return results


# ---------------------------------------------------------------- volumes


def _folder_volumes(cfg: DataConfig) -> tuple[list[Volume], list[str]]:
    """One subfolder of volumes per class under ``data.root`` (files found recursively, masks excluded)."""
    root = cfg.root.absolute() if cfg.root is not None and cfg.root.is_dir() else None
    if root is None:
        raise DataError(f"data.root {cfg.root} is not a folder; data.source 'nifti' reads one subfolder of "
                        ".nii/.nii.gz volumes per class under it (or set data.csv)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(cfg.classes or found)
    missing = [n for n in names if n not in found]
    if len(found) < 2 or missing:
        raise DataError(f"{root}: data.source 'nifti' needs one subfolder per class (found {found}"
                        f"{f', missing {missing}' if missing else ''}); add class folders or use data.csv")
    volumes = [_folder_volume(f, root, label, cfg.nifti) for label, n in enumerate(names)
               for f in volume_files(root / n, cfg.nifti.mask_suffix)]
    if not volumes:
        raise DataError(f"{root}: no .nii or .nii.gz volumes in the class folders {names}; check data.root")
    return volumes, names


def _folder_volume(file: Path, root: Path, label: int, cfg: NiftiConfig) -> Volume:
    mask = mask_path(file, cfg.mask_suffix) if cfg.slices == "mask" else None
    return Volume(file, file.relative_to(root).as_posix(), label, None, None, mask)


def volume_files(folder: Path, mask_suffix: str | None = None) -> list[Path]:
    """NIfTI files under ``folder`` (recursive, sorted, hidden skipped), without masks; others are logged."""
    volumes: list[Path] = []
    others: list[str] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if not is_volume(name):
                others.append(name)
            elif not (mask_suffix and _stem(name).endswith(mask_suffix)):
                volumes.append(Path(current) / name)
    if others:
        logger.warning("%s: %d files that are not .nii/.nii.gz are ignored: %s", folder, len(others),
                       others[:_MAX_LISTED])
    return volumes


def is_volume(name: str) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return name.lower().endswith(VOLUME_SUFFIXES)


def _stem(name: str) -> str:
    lower = name.lower()
    return name[: -len(".nii.gz")] if lower.endswith(".nii.gz") else name[: -len(".nii")]


def mask_path(file: Path, suffix: str | None) -> Path:
    """The mask next to ``file``: ``a.nii.gz`` -> ``a<suffix>.nii.gz`` (same extension).

    Raises:
        DataError: No ``data.nifti.mask_suffix`` is set.
    """
    if not suffix:
        raise DataError("data.nifti.slices 'mask' needs data.nifti.mask_suffix (e.g. _mask, for a_mask.nii.gz "
                        "next to a.nii.gz) or, with data.csv, a mask column (data.nifti.mask_column)")
    return file.with_name(_stem(file.name) + suffix + file.name[len(_stem(file.name)):])


def _csv_volumes(cfg: DataConfig) -> tuple[list[Volume], list[str]]:
    """Rows of ``data.csv`` read by the csv source's own reader (its columns, labels, splits and checks)."""
    listing = CsvSource().list_samples(cfg)
    samples, class_names = listing.samples, listing.class_names
    masks: list[Path | None] = [None] * len(samples)
    if cfg.nifti.slices == "mask":
        masks = _csv_masks(cfg, samples)
    return [Volume(Path(s.path), s.id, s.label, s.patient, s.split, m)
            for s, m in zip(samples, masks, strict=True)], class_names


def _csv_masks(cfg: DataConfig, samples: list[Sample]) -> list[Path | None]:
    """Per row, the mask named in ``data.nifti.mask_column`` (relative to the CSV) or found by ``mask_suffix``."""
    assert cfg.csv is not None
    header, rows = read_csv(cfg.csv)
    column = cfg.nifti.mask_column if cfg.nifti.mask_column in header else None
    out: list[Path | None] = []
    for sample, (_, row) in zip(samples, rows, strict=True):
        cell = (row.get(column) or "").strip() if column else ""
        if cell:
            out.append(Path(cell) if Path(cell).is_absolute() else cfg.csv.parent / cell)
        else:
            out.append(mask_path(Path(sample.path), cfg.nifti.mask_suffix))
    return out


def _warn_without_patient(volumes: list[Volume], location: Path | None) -> None:
    without = [v.rel for v in volumes if v.patient is None]
    if without:
        logger.warning("%s: %d of %d volumes have no patient id: each volume is used as its own patient, so two "
                       "volumes of one patient may straddle splits; add a patient column to data.csv (e.g. %s)",
                       location, len(without), len(volumes), without[:3])


# ---------------------------------------------------------------- headers and slices


def volume_samples(volume: Volume, cfg: NiftiConfig) -> list[Sample]:
    """One sample per kept slice of ``volume`` (header read, pixels not decoded; the mask is).

    Raises:
        DataError: Not a NIfTI file, truncated, 2-D, a missing 4-D volume, or an unusable mask.
    """
    img = open_volume(volume.path)
    shape = spatial_shape(img, volume.path, cfg)
    check_complete(volume.path, img)
    if len(img.shape) == 4:
        logger.warning("%s: 4-D file of shape %s: using only volume %d of %d (data.nifti.volume_index)",
                       volume.path, tuple(img.shape), cfg.volume_index, img.shape[3])
    n = shape[cfg.axis]
    if cfg.slices == "mask":
        assert volume.mask is not None
        kept = mask_slices(volume.mask, shape, volume.path, cfg)
    else:
        kept = {"all": list(range(n)), "middle": [n // 2], "every_k": list(range(0, n, cfg.k or 1))}[cfg.slices]
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    patient = volume.patient or volume.rel
    return [Sample(id=f"{volume.rel}{_MARK}{i}", path=f"{volume.path}{_MARK}{i}", label=volume.label,
                   patient=patient, split=volume.split,
                   meta={"file": volume.rel, "volume": volume.rel, "patient": patient, "axis": cfg.axis, "slice": i,
                         "n_slices": n, "shape": list(img.shape), "voxel_sizes": zooms})
            for i in kept]


def open_volume(path: Path) -> Any:
    """The NIfTI-1 or NIfTI-2 image of ``path`` (header read, pixels not loaded).

    Raises:
        DataError: Missing, not NIfTI, or an unreadable header.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; check data.root / the paths in data.csv")
    try:
        img = nib.load(path)
    except NIFTI_ERRORS as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {str(exc)[:200]}); the file is "
                        "corrupt or not NIfTI: re-export it as .nii/.nii.gz or remove it") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path}: a {type(img).__name__}, not a NIfTI-1/2 volume; remove it from the data")
    return img


def spatial_shape(img: Any, path: Path, cfg: NiftiConfig) -> tuple[int, int, int]:
    """The 3-D voxel shape used (the ``volume_index``-th volume of a 4-D file).

    Raises:
        DataError: A 2-D file, an axis it does not have, more than 4 dimensions, or a missing 4-D volume.
    """
    shape = tuple(int(s) for s in img.shape)
    if len(shape) <= cfg.axis or len(shape) < 3:
        raise DataError(f"{path}: a {len(shape)}-D image of shape {shape}; data.nifti.axis {cfg.axis} needs a "
                        "3-D (or 4-D) volume: use the folder or csv source for 2-D images")
    if len(shape) > 4:
        raise DataError(f"{path}: a {len(shape)}-D image of shape {shape}; only 3-D and 4-D volumes are supported")
    if len(shape) == 4 and cfg.volume_index >= shape[3]:
        raise DataError(f"{path}: 4-D file with {shape[3]} volumes, but data.nifti.volume_index is "
                        f"{cfg.volume_index}; choose 0..{shape[3] - 1}")
    return shape[0], shape[1], shape[2]


def check_complete(path: Path, img: Any) -> None:
    """Raise when the file holds fewer bytes than its header promises (truncated copy or download).

    Raises:
        DataError: The file (decompressed for ``.gz``) is shorter than offset + voxel data.
    """
    expected = int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    size = _gzip_size(path, expected) if path.name.lower().endswith(".gz") else path.stat().st_size
    if size < expected:
        raise DataError(f"{path}: truncated: {size} bytes of data where the header promises {expected}; "
                        "copy or download the file again")


def _gzip_size(path: Path, expected: int) -> int:
    """Decompressed size; the gzip trailer is trusted when it matches, else the stream is read to the end.

    Raises:
        DataError: The stream ends early or is corrupt.
    """
    with path.open("rb") as handle:
        handle.seek(-4, os.SEEK_END)
        if int.from_bytes(handle.read(4), "little") == expected % 2**32:
            return expected
    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip stream after {size} bytes ({type(exc).__name__}: "
                        f"{exc}); copy or download the file again") from None
    return size


def mask_slices(mask: Path, shape: tuple[int, int, int], path: Path, cfg: NiftiConfig) -> list[int]:
    """Slices along ``cfg.axis`` where the mask volume is non-zero.

    Raises:
        DataError: The mask is missing, unreadable, of another shape, or empty.
    """
    if not mask.is_file():
        raise DataError(f"{path}: its mask {mask} does not exist; add it, fix data.nifti.mask_suffix or the "
                        f"'{cfg.mask_column}' cell, or remove the volume")
    img = open_volume(mask)
    if tuple(img.shape[:3]) != shape:
        raise DataError(f"{path}: its mask {mask.name} has shape {tuple(img.shape)}, the volume {shape}; a mask "
                        "must have the volume's voxel grid")
    try:
        data = np.asanyarray(img.dataobj)
    except NIFTI_ERRORS as exc:
        raise DataError(f"{mask}: cannot read the mask's voxels ({type(exc).__name__}: {exc})") from None
    data = data.reshape(*shape, -1) != 0
    kept = np.flatnonzero(data.any(axis=tuple(a for a in range(4) if a != cfg.axis))).tolist()
    if not kept:
        raise DataError(f"{path}: its mask {mask.name} is empty (all zero), so no slice is selected")
    return kept


# ---------------------------------------------------------------- pixels


def split_ref(path: str) -> tuple[str, int]:
    """``(file, slice)`` of a sample path ``<file>#z=<slice>``.

    Raises:
        DataError: The path is not such a reference.
    """
    file, mark, index = path.rpartition(_MARK)
    if not mark or not index.isdigit():
        raise DataError(f"{path}: not a NIfTI slice reference '<file>{_MARK}<slice>'")
    return file, int(index)


@dataclass
class VolumeData:
    """A volume's voxel values (scl_slope/scl_inter applied) and the range that maps to 0..255.

    Attributes:
        values: float32 3-D array.
        low: Value shown black.
        high: Value shown white (``high <= low``: the volume is constant and shown black).
    """

    values: np.ndarray
    low: float
    high: float


def load_volume(file: str | Path, cfg: NiftiConfig) -> VolumeData:
    """The 3-D volume of ``file`` and its intensity range (``data.nifti.intensity``, per volume).

    Raises:
        DataError: The file cannot be read or decoded.
    """
    path = Path(file)
    img = open_volume(path)
    spatial_shape(img, path, cfg)
    try:
        proxy = img.dataobj[..., cfg.volume_index] if len(img.shape) == 4 else img.dataobj
        values = np.asarray(proxy, dtype=np.float32)
    except NIFTI_ERRORS as exc:
        raise DataError(f"{path}: cannot decode the voxel data ({type(exc).__name__}: {str(exc)[:200]}); the file "
                        "is corrupt or truncated: re-export it, or raise data.max_bad_fraction to skip it") from None
    return VolumeData(values, *intensity_range(values, cfg.intensity))


def intensity_range(values: np.ndarray, cfg: NiftiIntensity) -> tuple[float, float]:
    """``(low, high)``: percentiles or min/max of the volume's finite values, or the fixed window."""
    if cfg.method == "window":
        assert cfg.center is not None and cfg.width is not None
        return cfg.center - cfg.width / 2, cfg.center + cfg.width / 2
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 0.0
    if cfg.method == "percentile":
        low, high = np.percentile(finite, [cfg.low, cfg.high])
        return float(low), float(high)
    return float(finite.min()), float(finite.max())


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of ``low..high`` to 0..255, clipped and rounded (NaN -> 0; constant range -> 0)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.rint(np.nan_to_num(np.clip(out, 0.0, 255.0), nan=0.0)).astype(np.uint8)


def render_slice(volume: VolumeData, index: int, axis: int, sample_id: str) -> tuple[Image.Image, str]:
    """Slice ``index`` along ``axis`` as an 8-bit image, and the hash of its voxel values.

    A constant slice (e.g. empty air at the volume's edge) is hashed by its sample id instead, so
    that blank slices of different volumes are not taken for duplicates that join those volumes
    into one group.

    Raises:
        DataError: The volume has no such slice.
    """
    n = volume.values.shape[axis]
    if not 0 <= index < n:
        raise DataError(f"{sample_id}: slice {index} does not exist; the volume has {n} slices along axis {axis}")
    plane = np.ascontiguousarray(np.rot90(np.take(volume.values, index, axis=axis)))
    constant = bool(np.all(plane == plane.flat[0])) or bool(np.all(np.isnan(plane)))
    digest = array_hash(np.frombuffer(sample_id.encode(), dtype=np.uint8)) if constant else array_hash(plane)
    return Image.fromarray(to_uint8(plane, volume.low, volume.high), mode="L"), digest


def _decode_volume(file: str, samples: list[Sample], cfg: DataConfig) -> list[_Result]:
    """All listed slices of one volume (read once), resized per ``cfg``; the reason for each when it fails."""
    try:
        volume = load_volume(file, cfg.nifti)
    except DataError as exc:
        return [str(exc)] * len(samples)
    out: list[_Result] = []
    for sample in samples:
        try:
            image, digest = render_slice(volume, split_ref(sample.path)[1], cfg.nifti.axis, sample.id)
            out.append((to_array(image, cfg.image_size, cfg.color, cfg.resize, cfg.crop), digest))
        except DataError as exc:
            out.append(str(exc))
    return out
