"""DICOM as a data source (``data.source: dicom``): headers, labels, frames and intensity policy.

Reading happens in two passes, like the other sources. :func:`dicom_samples` reads every file's
header (not its pixels), checks it, and lists one sample per frame: a multi-frame file (e.g. one
breast tomosynthesis view of ~70 slices) becomes ``<file>::frame[i]`` samples that keep patient,
study, series, view (``LCC``, ``RMLO``, ...) and slice index in ``Sample.meta``.
:func:`decode_samples` then decodes only the frames still listed (after ``data.strategy``).

Pixels go through pydicom's own functions: the Modality LUT (``apply_modality_lut``), then the
file's VOI LUT (``apply_voi``) or a window (``apply_windowing``: the file's own, a named CT preset
or an explicit centre/width), mapped to 0..255; MONOCHROME1 is inverted so that bright always means
dense. Compressed transfer syntaxes decode through the installed pydicom plugins (pylibjpeg with
libjpeg / openjpeg / rle). A file that cannot be used is never silently dropped: it is reported with
the reason in ``SampleTable.bad`` / ``LoadedImages.bad``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import keyword_dict, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, iter_pixels
from pydicom.valuerep import DSfloat
from rich.progress import track

from medtl.config import DataConfig, DicomConfig
from medtl.data.images import array_hash, to_array
from medtl.data.samples import Sample, SampleTable, cell, check_labels, read_csv, sorted_labels
from medtl.errors import DataError

logger = logging.getLogger(__name__)

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
}
"""CT windows as (center, width) in Hounsfield units."""

DICOM_ERRORS: tuple[type[Exception], ...] = (
    InvalidDicomError, ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError, TypeError,
    OSError, EOFError, IndexError,
)
"""What pydicom raises on unreadable, truncated or undecodable files."""

_MONO = ("MONOCHROME1", "MONOCHROME2")
_VIEW_CODES = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML",
               "latero-medial": "LM", "exaggerated cranio-caudal": "XCCL"}
_FRAME_KEYS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope",
               "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction", "ModalityLUTSequence",
               "VOILUTSequence")
_FRAME_MACROS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"),
}
"""Functional-group macros and the top-level attributes each one replaces when a frame carries it."""
_MAX_LISTED = 10


# ---------------------------------------------------------------- headers


@dataclass(frozen=True)
class DicomFile:
    """What the sample table needs from one DICOM file's header.

    Attributes:
        path: Absolute file path.
        rel: Path relative to the scanned root (posix).
        patient: Patient key (``data.dicom.patient_tag``; ``study:<uid>`` when that is empty).
        study: StudyInstanceUID.
        series: SeriesInstanceUID.
        sop: SOPInstanceUID.
        view: Laterality + view position, e.g. ``LCC`` (empty when unknown).
        modality: Modality (``CT``, ``MR``, ``MG``, ...).
        frames: Number of frames.
        instance: InstanceNumber (slice position of single-frame files in a series).
        size: (Rows, Columns).
    """

    path: Path
    rel: str
    patient: str
    study: str
    series: str
    sop: str
    view: str
    modality: str
    frames: int
    instance: int
    size: tuple[int, int]


def check_tag(keyword: str, key: str = "data.dicom.patient_tag") -> None:
    """Raise unless ``keyword`` is a DICOM attribute keyword (with a did-you-mean hint).

    Raises:
        DataError: Unknown keyword.
    """
    if tag_for_keyword(keyword) is None:
        import difflib

        hint = difflib.get_close_matches(keyword, list(keyword_dict), n=1, cutoff=0.6)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        raise DataError(f"{key} '{keyword}' is not a DICOM attribute keyword.{suggestion}")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(root: Path, exclude: set[Path] | None = None) -> list[Path]:
    """Every non-hidden file under ``root`` (recursive, sorted), except ``exclude`` (e.g. the labels CSV)."""
    exclude = {p.resolve() for p in exclude or set()}
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(current) / f for f in sorted(files) if not f.startswith(".")]
    return [p for p in found if p.resolve() not in exclude]


def read_header(path: Path, root: Path, patient_tag: str = "PatientID") -> DicomFile:
    """Read and check one file's header (pixel data is not read).

    Args:
        path: The file.
        root: The folder ids are relative to.
        patient_tag: Keyword of the attribute that holds the patient key.

    Returns:
        The header facts.

    Raises:
        DataError: Not DICOM, unreadable, no pixel data or no image size.
    """
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no 'DICM' marker after the 128-byte preamble); "
                        "remove it from the folder or re-save it as DICOM Part 10") from None
    except DICOM_ERRORS as exc:
        raise DataError(f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc}); "
                        "the file is corrupt or truncated: re-export it") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(f"{path}: no PixelData ({ds.get('SOPClassUID', 'unknown SOP class')!s}, e.g. a report "
                        "or DICOMDIR); it holds no image: remove it from the image folder")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: PixelData without Rows/Columns; the header is incomplete: re-export the file")
    return _header_facts(ds, path, root, patient_tag)


def _header_facts(ds: Dataset, path: Path, root: Path, patient_tag: str) -> DicomFile:
    study = str(ds.get("StudyInstanceUID", "") or "")
    patient = str(ds.get(patient_tag, "") or "").strip()
    return DicomFile(
        path=path.absolute(), rel=path.relative_to(root).as_posix(),
        patient=patient or (f"study:{study}" if study else f"file:{path.relative_to(root).as_posix()}"),
        study=study, series=str(ds.get("SeriesInstanceUID", "") or ""), sop=str(ds.get("SOPInstanceUID", "") or ""),
        view=view_of(ds), modality=str(ds.get("Modality", "") or ""),
        frames=max(1, _header_int(ds, "NumberOfFrames", 1, path)),
        instance=_header_int(ds, "InstanceNumber", 0, path),
        size=(_header_int(ds, "Rows", 0, path), _header_int(ds, "Columns", 0, path)),
    )


def _header_int(ds: Dataset, keyword: str, default: int, path: Path) -> int:
    """An integer header value (``default`` when absent or empty), or a DataError naming a malformed one."""
    value = ds.get(keyword, default)
    try:
        return int(value or default)
    except (TypeError, ValueError):
        raise DataError(f"{path}: malformed header value {keyword} = {str(value)!r} (not an integer); "
                        "fix the header or remove the file") from None


def view_of(ds: Dataset) -> str:
    """Laterality + view position, e.g. ``LCC`` or ``RMLO`` (from ViewPosition/ImageLaterality or codes)."""
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not laterality and shared and shared[0].get("FrameAnatomySequence"):
        laterality = str(shared[0].FrameAnatomySequence[0].get("FrameLaterality", "") or "")
    position = str(ds.get("ViewPosition", "") or "")
    if not position and ds.get("ViewCodeSequence"):
        meaning = str(ds.ViewCodeSequence[0].get("CodeMeaning", "")).lower()
        position = _VIEW_CODES.get(meaning, meaning.upper())
    return f"{laterality.strip()}{position.strip()}"


def scan_headers(
    root: Path, patient_tag: str = "PatientID", exclude: set[Path] | None = None, progress: bool = False
) -> tuple[list[DicomFile], list[tuple[str, str]]]:
    """Read the header of every file under ``root``; unusable files are returned with the reason.

    Files of a series whose image size differs from the series' most common size are reported too.

    Args:
        root: Folder to scan recursively.
        patient_tag: Attribute keyword of the patient key.
        exclude: Files to skip (e.g. a labels CSV inside ``root``).
        progress: Show a progress bar.

    Returns:
        The usable files and ``(relative path, reason)`` for the others.
    """
    files: list[DicomFile] = []
    bad: list[tuple[str, str]] = []
    paths = dicom_files(root, exclude)
    for path in track(paths, description="reading DICOM headers", disable=not progress, transient=True):
        try:
            files.append(read_header(path, root, patient_tag))
        except DataError as exc:
            bad.append((path.relative_to(root).as_posix(), str(exc)))
    files, odd = check_series_sizes(files)
    return files, bad + odd


def check_series_sizes(files: list[DicomFile]) -> tuple[list[DicomFile], list[tuple[str, str]]]:
    """Split off files whose Rows x Columns differ from the most common size of their series.

    Returns:
        The consistent files and ``(relative path, reason)`` for the odd ones.
    """
    sizes: dict[str, Counter[tuple[int, int]]] = defaultdict(Counter)
    for f in files:
        sizes[f.series][f.size] += 1
    kept: list[DicomFile] = []
    bad: list[tuple[str, str]] = []
    for f in files:
        common, n = sizes[f.series].most_common(1)[0]
        if f.series and f.size != common:
            bad.append((f.rel, f"{f.path}: slice size {f.size[0]}x{f.size[1]} differs from the {common[0]}x"
                               f"{common[1]} of the other {n} files of series {f.series}; a series needs one "
                               "size: re-export or remove this file"))
        else:
            kept.append(f)
    return kept, bad


# ---------------------------------------------------------------- samples


def dicom_samples(cfg: DataConfig) -> tuple[list[Sample], list[str], list[tuple[str, str]]]:
    """Samples of a DICOM folder: one per frame, labelled from ``data.csv`` or class subfolders.

    Args:
        cfg: The ``data`` block (``root``, ``csv``, ``label_column``, ``classes``, ``dicom``).

    Returns:
        Samples, class names and ``(file, reason)`` for every file that could not be used.

    Raises:
        DataError: Missing root or CSV, unknown ``patient_tag``, bad CSV, or no usable file at all.
    """
    root = cfg.root.absolute() if cfg.root is not None and cfg.root.is_dir() else None
    if root is None:
        raise DataError(f"data.root {cfg.root} is not a folder; data.source 'dicom' reads DICOM files under it")
    check_tag(cfg.dicom.patient_tag)
    exclude = {cfg.csv} if cfg.csv is not None else set()
    files, bad = scan_headers(root, cfg.dicom.patient_tag, exclude)
    if not files:
        listed = "; ".join(reason for _, reason in bad[:3])
        raise DataError(f"{root}: no usable DICOM file among {len(bad)} files ({listed}); check data.root")
    labeller = csv_labeller(cfg) if cfg.csv is not None else _folder_labeller(cfg, files)
    samples, unlabelled = _label_files(files, labeller)
    _warn_without_patient(files, cfg.dicom.patient_tag)
    logger.info("%s: %d DICOM files -> %d samples; %d files unusable", root, len(files) - len(unlabelled),
                len(samples), len(bad) + len(unlabelled))
    return samples, labeller.class_names, bad + unlabelled


@dataclass
class Labeller:
    """Maps a DICOM file to its label text (from a CSV column or the class folder)."""

    class_names: list[str]
    labels: dict[str, str]
    key: str
    where: str

    def key_of(self, f: DicomFile) -> str:
        """The value of ``f`` that the labels are keyed by."""
        return {"PatientID": f.patient, "StudyInstanceUID": f.study, "SOPInstanceUID": f.sop,
                "path": f.rel, "folder": f.rel.split("/", 1)[0]}[self.key]


def csv_labeller(cfg: DataConfig) -> Labeller:
    """Labels from ``data.csv``: column ``dicom.key_column`` (default ``dicom.label_key``) -> ``label_column``."""
    assert cfg.csv is not None
    if not cfg.csv.is_file():
        raise DataError(f"data.csv {cfg.csv} does not exist; it should hold the labels of the DICOM files")
    header, rows = read_csv(cfg.csv)
    column = cfg.dicom.key_column or cfg.dicom.label_key
    for needed, key in ((column, "dicom.key_column"), (cfg.label_column, "label_column")):
        if needed not in header:
            raise DataError(f"{cfg.csv}: column '{needed}' (data.{key}) not found; the header is {header}")
    dropped = check_labels([(line, cell(row, cfg.label_column)) for line, row in rows], cfg.csv, cfg.label_column,
                           cfg.drop_unlabelled)
    labels: dict[str, str] = {}
    for line, row in rows:
        if line in dropped:
            continue
        key, label = (row.get(column) or "").strip(), (row.get(cfg.label_column) or "").strip()
        if key in labels and labels[key] != label:
            raise DataError(f"{cfg.csv} line {line}: '{key}' is labelled both '{labels[key]}' and '{label}'; "
                            "give every key one label")
        labels[key] = label
    names = cfg.classes or sorted_labels(set(labels.values()))
    unknown = sorted(set(labels.values()) - set(names))
    if unknown:
        raise DataError(f"{cfg.csv}: labels {unknown} are not in data.classes {names}; add them or fix the rows")
    return Labeller(list(names), labels, cfg.dicom.label_key, f"column '{column}' of {cfg.csv}")


def _folder_labeller(cfg: DataConfig, files: list[DicomFile]) -> Labeller:
    folders = sorted({f.rel.split("/", 1)[0] for f in files if "/" in f.rel})
    names = list(cfg.classes or folders)
    if len(names) < 2:
        raise DataError(f"{cfg.root}: without data.csv the DICOM files must lie in one subfolder per class "
                        f"(found {folders}); add class folders or a labels CSV (data.csv)")
    return Labeller(names, {n: n for n in names}, "folder", f"class folders of {cfg.root}")


def _label_files(files: list[DicomFile], labeller: Labeller) -> tuple[list[Sample], list[tuple[str, str]]]:
    index = {name: i for i, name in enumerate(labeller.class_names)}
    samples: list[Sample] = []
    unlabelled: list[tuple[str, str]] = []
    for f in files:
        label = labeller.labels.get(labeller.key_of(f))
        if label is None or label not in index:
            unlabelled.append((f.rel, f"{f.path}: no label: {labeller.key} '{labeller.key_of(f)}' is not in the "
                                      f"{labeller.where}; add it or move the file out of data.root"))
            continue
        samples += file_samples(f, index[label])
    return samples, unlabelled


def file_samples(f: DicomFile, label: int) -> list[Sample]:
    """One sample per frame of ``f`` (``<file>::frame[i]`` ids for multi-frame files)."""
    volume = f.sop if f.frames > 1 else f.series or f.rel
    out = []
    for i in range(f.frames):
        suffix = f"::frame[{i}]" if f.frames > 1 else ""
        meta = {"file": f.rel, "frame": i, "patient": f.patient, "study": f.study, "series": f.series,
                "sop": f.sop, "view": f.view, "modality": f.modality, "volume": volume,
                "slice": i if f.frames > 1 else f.instance, "n_slices": f.frames}
        out.append(Sample(id=f.rel + suffix, path=str(f.path) + suffix, label=label, patient=f.patient,
                          split=None, meta=meta))
    return out


def _warn_without_patient(files: list[DicomFile], patient_tag: str) -> None:
    missing = [f.rel for f in files if f.patient.startswith(("study:", "file:"))]
    if missing:
        logger.warning("%d DICOM files have an empty %s: they are grouped by StudyInstanceUID (or file) instead, "
                       "so a patient with several studies may straddle splits: %s", len(missing), patient_tag,
                       missing[:_MAX_LISTED])


# ---------------------------------------------------------------- pixels


def frame_dataset(ds: Dataset, index: int) -> Dataset:
    """The attributes that transform frame ``index``'s pixels, with enhanced multi-frame overrides.

    Enhanced objects (Enhanced CT/MR/XA, Breast Tomosynthesis Image Storage) keep rescale
    (PixelValueTransformationSequence) and window (FrameVOILUTSequence) in the functional groups:
    the per-frame group of ``index`` overrides the shared group, which overrides the top level.
    Each macro is taken whole from the most specific level that has it, so a frame's own window
    is never mixed with a VOI LUT or window of another level. Classic objects are returned as is.
    """
    groups = [ds.SharedFunctionalGroupsSequence[0]] if ds.get("SharedFunctionalGroupsSequence") else []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    if not groups:
        return ds
    out = Dataset()
    out.file_meta = getattr(ds, "file_meta", Dataset())
    for keyword in _FRAME_KEYS:
        if keyword in ds:
            out[keyword] = ds[keyword]
    for seq, replaced in _FRAME_MACROS.items():
        item = next((g[seq][0] for g in reversed(groups) if g.get(seq)), None)
        if item is None:
            continue
        for keyword in replaced:
            if keyword in out:
                del out[keyword]
        for elem in item:
            out[elem.tag] = elem
    return out


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window modality values to 0..255 (float) with pydicom's ``apply_windowing``."""
    spec = Dataset()
    spec.PhotometricInterpretation, spec.BitsStored, spec.PixelRepresentation = "MONOCHROME2", 8, 0
    spec.WindowCenter = DSfloat(center, auto_format=True)
    spec.WindowWidth = DSfloat(width, auto_format=True)
    spec.VOILUTFunction = function
    return apply_windowing(np.asarray(values, dtype=np.float64), spec)


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, list | tuple | pydicom.multival.MultiValue) else float(value)


def _file_window(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str] | None:
    """The file's own VOI LUT or window mapped to 0..255, or None when it has neither."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        top = float(np.max(apply_voi(np.arange(first, first + entries), ds))) or 1.0
        return apply_voi(values, ds).astype(np.float64) * (255.0 / top), "file VOI LUT"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return window(values, center, width, function), f"file window {center:g}/{width:g}"
    return None


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) * (255.0 / (high - low)) if high > low else np.zeros(values.shape)


def _gray(values: np.ndarray, ds: Dataset, cfg: DicomConfig) -> tuple[np.ndarray, str]:
    if cfg.window == "custom":
        assert cfg.center is not None and cfg.width is not None
        return window(values, cfg.center, cfg.width), f"custom {cfg.center:g}/{cfg.width:g}"
    if cfg.window in WINDOW_PRESETS:
        return window(values, *WINDOW_PRESETS[cfg.window]), cfg.window
    own = _file_window(values, ds) if cfg.window == "file" else None
    return own if own is not None else (_minmax(values), "minmax")


def render_frame(raw: np.ndarray, ds: Dataset, index: int, cfg: DicomConfig) -> tuple[Image.Image, str]:
    """One decoded frame as an 8-bit PIL image (``L``, or ``RGB`` for colour data and stacked windows).

    Args:
        raw: The decoded stored values of the frame (``iter_pixels`` output).
        ds: The file's dataset (without pixel data is fine).
        index: Frame index (selects per-frame functional groups).
        cfg: The ``data.dicom`` block.

    Returns:
        The image and a short description of the intensity policy applied (e.g. ``brain``).
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in _MONO:
        return _color_image(raw, ds), "color"
    frame_ds = frame_dataset(ds, index)
    values = apply_modality_lut(raw, frame_ds).astype(np.float64)
    if cfg.channels == "windows":
        stacked = np.stack([window(values, *WINDOW_PRESETS[n]) for n in cfg.channel_windows], axis=-1)
        out, policy = stacked, "windows " + "/".join(cfg.channel_windows)
    else:
        out, policy = _gray(values, frame_ds, cfg)
    if photometric == "MONOCHROME1":
        out, policy = 255.0 - out, policy + " inverted (MONOCHROME1)"
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)), policy


def _color_image(raw: np.ndarray, ds: Dataset) -> Image.Image:
    """RGB (YBR already converted by pydicom) or PALETTE COLOR pixels as an 8-bit RGB image."""
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = apply_color_lut(raw, ds)
        bits = 8 * arr.dtype.itemsize
    else:
        arr, bits = raw, int(ds.get("BitsStored", 8))
    if bits > 8:
        arr = np.right_shift(arr, bits - 8)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


@dataclass
class Frame:
    """One decoded frame: index, raw stored values, its hash, the rendered image and the policy applied."""

    index: int
    raw: np.ndarray
    digest: str
    image: Image.Image
    policy: str


def iter_frames(path: Path | str, indices: list[int] | None, cfg: DicomConfig, ds_out: Dataset | None = None
                ) -> Iterator[Frame]:
    """Decode and render frames of one file (all frames when ``indices`` is None), one at a time.

    Each frame is rendered with its own window and rescale (:func:`frame_dataset`). ``ds_out``, when
    given, is filled with the file's header (without pixel data).

    Raises:
        DataError: The file cannot be decoded (with the reason and the fix).
    """
    ds = ds_out if ds_out is not None else Dataset()
    wanted = sorted(set(indices)) if indices is not None else None
    try:
        # iter_pixels fills ds only with the pixel module (group 0028); the functional groups that carry
        # an enhanced object's per-frame window and rescale come from the full header.
        ds.update(pydicom.dcmread(path, stop_before_pixels=True))
        for n, raw in enumerate(iter_pixels(path, ds_out=ds, indices=wanted)):
            index = wanted[n] if wanted is not None else n
            image, policy = render_frame(raw, ds, index, cfg)
            yield Frame(index, raw, array_hash(raw), image, policy)
    except DICOM_ERRORS as exc:
        raise DataError(decode_failure(path, ds, exc)) from None


def decode_failure(path: Path | str, ds: Dataset, exc: Exception) -> str:
    """A readable reason why the pixels of ``path`` could not be decoded, naming the fix."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return (f"{path}: transfer syntax {syntax.name} ({syntax}) is not supported by any pydicom decoder; "
                    "re-export the file uncompressed or as JPEG/JPEG-LS/JPEG 2000/RLE")
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            return (f"{path}: no decoder installed for transfer syntax {syntax.name} ({syntax}); install one of: "
                    f"{missing} (e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
    return (f"{path}: cannot decode the pixel data ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            "the file is corrupt or truncated: re-export it, or raise data.max_bad_fraction to skip it")


# ---------------------------------------------------------------- load_images for DICOM


def decode_samples(table: SampleTable, cfg: DataConfig, progress: bool = True) -> list[tuple[np.ndarray, str] | str]:
    """Decode the frames listed in ``table`` (each file opened once), resized per ``cfg``.

    Args:
        table: A table from :func:`dicom_samples` (via ``load_table``).
        cfg: The ``data`` block.
        progress: Show a progress bar.

    Returns:
        Per sample, ``(uint8 array, raw-pixel hash)`` or the reason it failed (same order as the table).
    """
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(table.samples):
        by_file[s.path.split("::", 1)[0]].append(i)
    results: list[tuple[np.ndarray, str] | str] = [""] * len(table.samples)
    frames_of = {f: [int(table.samples[i].meta.get("frame", 0)) for i in idx] for f, idx in by_file.items()}
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda f: _decode_one_file(f, frames_of[f], cfg), list(by_file))
        for file, out in track(zip(list(by_file), done, strict=True), total=len(by_file),
                               description="decoding DICOM", disable=not progress, transient=True):
            for i, result in zip(by_file[file], out, strict=True):
                results[i] = result
    return results


def _decode_one_file(path: str, frames: list[int], cfg: DataConfig) -> list[tuple[np.ndarray, str] | str]:
    try:
        decoded = {fr.index: fr for fr in iter_frames(path, frames, cfg.dicom)}
        return [(to_array(decoded[f].image, cfg.image_size, cfg.color, cfg.resize), decoded[f].digest)
                for f in frames]
    except DataError as exc:
        return [str(exc)] * len(frames)
    except (KeyError, ValueError, OSError) as exc:
        return [f"{path}: cannot convert frames {frames} ({type(exc).__name__}: {exc})"] * len(frames)
