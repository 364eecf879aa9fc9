"""``medtl convert``: DICOM → de-identified PNG (8-bit windowed or 16-bit) or DICOM, plus a manifest.

De-identification uses dicognito, which implements the DICOM PS3.15 Basic Application Level
Confidentiality Profile for names, IDs, UIDs, dates, addresses and equipment: values are replaced
by pseudonyms derived from a secret key, so the same patient (study, series) always gets the same
pseudonym and patient grouping survives conversion, and all dates of a conversion are shifted by
one offset. On top of dicognito, private tags are removed (``Dataset.remove_private_tags``), free
text (LT/ST/UT values, ``*Comments``, ``*Description``, ``ProtocolName``) is removed unless kept on purpose, and dates
can be removed instead of shifted. Device identity elements that the Basic Profile removes but
dicognito keeps (:data:`DEVICE_IDENTITY`, e.g. DeviceSerialNumber) are stripped with dicognito's own
``UnwantedElementsStripper``.

What was removed or changed is written per file to ``deid_audit.csv`` (element and action, never a
value), and counts, warnings and errors to ``convert_report.json``. The written files name a source
by the SHA-256 of its bytes, not by its path (folder names often carry patient names), unless asked.
Pixels are not de-identified: files whose BurnedInAnnotation is YES, and modalities that often burn
text into pixels (US, SC, XC), are warned about so that someone looks at them.

A file that cannot be read, de-identified or written is reported with the reason and the others are
converted. The output folder must be new or empty (``overwrite`` empties an earlier conversion's
folder) and never overlaps the source folder, so identifiable originals never end up among the outputs.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import dicognito
import numpy as np
import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.unwantedelements import UnwantedElementsStripper
from PIL import Image
from pydicom.dataset import Dataset
from rich.progress import track

from medtl.config import DataConfig, DicomConfig
from medtl.data.dicom import DICOM_ERRORS, DicomFile, Labeller, csv_labeller, iter_frames, scan_headers
from medtl.data.images import without_setting_hints
from medtl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "patient", "study", "series", "sop", "view", "slice", "n_slices", "modality", "window",
    "offset", "rescale_slope", "rescale_intercept", "label",
)
"""Columns of the ``manifest.csv`` that :func:`convert_dicom` writes (``path`` relative to the output folder)."""

AUDIT_COLUMNS: tuple[str, ...] = ("output", "source_sha256", "element", "action")
"""Columns of ``deid_audit.csv``: one row per element removed, changed or added in one file."""

BURNED_IN_MODALITIES: frozenset[str] = frozenset({"US", "SC", "XC", "OT"})
"""Modalities whose pixels often carry burned-in text (ultrasound, secondary capture, photos, other)."""

DEVICE_IDENTITY: tuple[str, ...] = (
    "DeviceSerialNumber", "DetectorID", "GantryID", "PlateID", "CassetteID", "PerformedStationName",
    "PerformedLocation", "ScheduledStationName", "ScheduledProcedureStepLocation",
)
"""Elements the PS3.15 Basic Profile removes (no Retain Device Identity option) that dicognito keeps."""

_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})


@dataclass
class ConvertOptions:
    """How :func:`convert_dicom` writes and de-identifies.

    Attributes:
        format: ``png8`` (windowed per ``dicom``), ``png16`` (stored values, plus ``offset`` for
            signed data: ``stored = png - offset``; ``value = stored * slope + intercept``) or
            ``dicom`` (de-identified DICOM, pixel data untouched).
        dicom: Window / channel policy of ``png8`` (as ``data.dicom``).
        labels: Optional labels CSV, keyed like ``data.dicom.label_key`` (on the *original* values).
        label_key: ``PatientID``, ``StudyInstanceUID``, ``SOPInstanceUID`` or ``path``.
        key_column: CSV column of the key (default: ``label_key``).
        label_column: CSV column of the label.
        dates: ``shift`` (one random offset for the whole conversion) or ``remove``.
        key: Secret that seeds the pseudonyms; the same key gives the same pseudonyms in a later
            conversion. None: a random key that is never written anywhere.
        keep_descriptions: Keep free-text descriptions and comments (PS3.15 Retain Description option).
        log_source_paths: Write source paths (relative to the source folder) into the audit log and report.
    """

    format: Literal["png8", "png16", "dicom"] = "png8"
    dicom: DicomConfig = field(default_factory=DicomConfig)
    labels: Path | None = None
    label_key: Literal["PatientID", "StudyInstanceUID", "SOPInstanceUID", "path"] = "PatientID"
    key_column: str | None = None
    label_column: str = "label"
    dates: Literal["shift", "remove"] = "shift"
    key: str | None = None
    keep_descriptions: bool = False
    log_source_paths: bool = False

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                hint = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.4)
                suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
                raise ConfigError(f"convert option {name} '{value}' is not valid.{suggestion} "
                                  f"Choose one of: {', '.join(allowed)}")


_CHOICES: dict[str, tuple[str, ...]] = {
    "format": ("png8", "png16", "dicom"), "dates": ("shift", "remove"),
    "label_key": ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "path"),
}


@dataclass
class ConvertReport:
    """What a conversion did.

    Attributes:
        n_files: Files found under the source folder.
        n_converted: Files written.
        n_outputs: Images (PNG) or files (DICOM) written.
        errors: ``(source, reason)`` for every file that was not converted (full paths, for the caller).
        warnings: ``(source, warning)``, e.g. BurnedInAnnotation YES.
        manifest: The manifest CSV.
        audit_log: The de-identification audit CSV.
        report: The JSON report.
    """

    n_files: int
    n_converted: int
    n_outputs: int
    errors: list[tuple[str, str]]
    warnings: list[tuple[str, str]]
    manifest: Path
    audit_log: Path
    report: Path


@dataclass
class _State:
    """Everything collected while converting: output rows, audit rows and the values to keep out of files."""

    anonymizer: Anonymizer
    options: ConvertOptions
    out: Path
    labeller: Labeller | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    audit: list[list[str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    identifying: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)
    converted: int = 0
    stems: Counter[str] = field(default_factory=Counter)
    pending_stem: str = ""


def convert_dicom(src: Path, out: Path, options: ConvertOptions | None = None, progress: bool = True,
                  overwrite: bool = False) -> ConvertReport:
    """Convert every DICOM file under ``src`` into ``out``, de-identified, with manifest and audit log.

    A file that cannot be read, de-identified or written is not converted: it is counted and listed with
    the reason in the report (and :attr:`ConvertReport.errors`), and the other files are converted.

    Args:
        src: Folder of DICOM files (searched recursively).
        out: Output folder: new or empty, or (with ``overwrite``) the folder of an earlier conversion,
            which is emptied first. It never overlaps ``src``.
        options: Format, window, labels and de-identification options.
        progress: Show a progress bar.
        overwrite: Empty ``out`` first when it holds an earlier conversion.

    Returns:
        Counts, per-file errors and warnings, and the paths of the files written.

    Raises:
        DataError: ``src`` is not a folder, ``src`` and ``out`` overlap, ``out`` is not empty (without
            ``overwrite``, or holding something else than an earlier conversion), or the labels CSV is unusable.
    """
    options = options or ConvertOptions()
    src, out = Path(src).resolve(), Path(out).resolve()
    _check_folders(src, out)
    labeller = _labeller(src, options)
    _prepare_out(out, overwrite)
    state = _State(make_anonymizer(options.key), options, out, labeller)
    exclude = {options.labels} if options.labels is not None else set()
    files, bad = scan_headers(src, "PatientID", exclude, progress=False)
    state.errors += [(str(src / rel), reason) for rel, reason in bad]
    for f in track(files, description="converting DICOM", disable=not progress, transient=True):
        _convert_file(f, state)
    return _write_outputs(state, src, len(files) + len(bad))


def make_anonymizer(key: str | None = None) -> Anonymizer:
    """A dicognito anonymizer seeded by ``key`` (random when None) that also strips :data:`DEVICE_IDENTITY`."""
    anonymizer = Anonymizer(seed=key or secrets.token_hex(16))
    anonymizer.add_element_handler(UnwantedElementsStripper(*DEVICE_IDENTITY))
    return anonymizer


def _check_folders(src: Path, out: Path) -> None:
    """Refuse a missing source and any overlap of source and output (even with ``--overwrite``)."""
    if not src.is_dir():
        raise DataError(f"{src}: not a folder; medtl convert reads the DICOM files under SRC_DIR")
    if out.exists() and not out.is_dir():
        raise DataError(f"OUT_DIR {out} is a file; choose a new or empty folder")
    if out == src:
        where = "is the source folder itself"
    elif src in out.parents:
        where = f"lies inside the source folder {src}"
    elif out in src.parents:
        where = f"contains the source folder {src} (the identifiable originals would sit in the output)"
    else:
        return
    raise DataError(f"OUT_DIR {out} {where}; choose an OUT_DIR outside SRC_DIR that does not contain it "
                    "(--overwrite does not allow this either: emptying OUT_DIR would delete the input)")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` and it holds an earlier conversion, then empty it."""
    entries = sorted(out.iterdir()) if out.is_dir() else []
    earlier = (out / "convert_report.json").is_file()
    if entries and not overwrite:
        hint = ", or pass --overwrite to empty this earlier conversion's folder first" if earlier else ""
        raise DataError(f"OUT_DIR {out} is not empty ({len(entries)} entries, e.g. {entries[0].name}); old and "
                        f"new outputs would mix. Choose a new or empty folder{hint}")
    if entries and not earlier:
        raise DataError(f"OUT_DIR {out} is not empty and holds no convert_report.json of an earlier medtl "
                        "convert; --overwrite only empties an earlier conversion's folder. Choose a new or empty "
                        "folder")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if entries:
        logger.info("%s: emptied (--overwrite): %d entries of an earlier conversion removed", out, len(entries))
    out.mkdir(parents=True, exist_ok=True)


def _labeller(src: Path, options: ConvertOptions) -> Labeller | None:
    if options.labels is None:
        return None
    cfg = DataConfig(source="dicom", root=src, csv=options.labels, label_column=options.label_column,
                     dicom=DicomConfig(label_key=options.label_key, key_column=options.key_column))
    return csv_labeller(cfg)


# ---------------------------------------------------------------- one file


def _convert_file(f: DicomFile, state: _State) -> None:
    """Convert one file; any failure is recorded in ``state.errors`` and its partial outputs are removed."""
    state.refs.setdefault(str(f.path), _source_ref(f, state.options))
    try:
        _convert_one(f, state)
    except DataError as exc:
        state.errors.append((str(f.path), without_setting_hints(str(exc))))
    except DICOM_ERRORS as exc:
        state.errors.append((str(f.path), f"{f.path}: cannot convert ({type(exc).__name__}: {exc}); "
                                          "the file is malformed: fix or re-export it"))
    else:
        return
    _remove_partial(f, state)


def _remove_partial(f: DicomFile, state: _State) -> None:
    """Delete what a failed file already wrote (frames of a multi-frame file), so every output is listed."""
    stem, state.pending_stem = state.pending_stem, ""
    if not stem:
        return
    for path in state.out.glob(f"*/{stem}*"):
        if path.name in (f"{stem}.png", f"{stem}.dcm") or path.name.startswith(f"{stem}_f"):
            path.unlink()


def _convert_one(f: DicomFile, state: _State) -> None:
    try:
        ds = pydicom.dcmread(f.path)
    except DICOM_ERRORS as exc:
        raise DataError(f"{f.path}: cannot read ({type(exc).__name__}: {exc})") from None
    ref = state.refs[str(f.path)]
    _warn_pixels(ds, f, state)
    label = _label_of(f, state)
    before = _elements(ds)
    deidentify(ds, state.anonymizer, state.options.dates, state.options.keep_descriptions)
    after = _elements(ds)
    state.identifying |= _changed_values(before, after)
    keys = _unique_keys(_output_keys(ds, f), f, state)
    state.pending_stem = keys.stem
    writer = _write_dicom if state.options.format == "dicom" else _write_images
    rows = writer(ds, f, keys, state)
    state.rows += [row | {"label": label} for row in rows]
    output = rows[0]["path"] if len(rows) == 1 else rows[0]["path"].rsplit("_f", 1)[0] + "_f*.png"
    state.audit += [[output, ref, element, action] for element, action in audit_actions(before, after)]
    state.converted += 1
    state.pending_stem = ""


def _source_ref(f: DicomFile, options: ConvertOptions) -> str:
    if options.log_source_paths:
        return f.rel
    return hashlib.sha256(f.path.read_bytes()).hexdigest()


def _warn_pixels(ds: Dataset, f: DicomFile, state: _State) -> None:
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        state.warnings.append((str(f.path), "BurnedInAnnotation is YES: the pixels show identifying text; "
                                            "mask it or leave the file out before sharing"))
    if f.modality in BURNED_IN_MODALITIES:
        state.warnings.append((str(f.path), f"modality {f.modality} often has text burned into the pixels; "
                                            "check the images before sharing"))


def _label_of(f: DicomFile, state: _State) -> str:
    if state.labeller is None:
        return ""
    label = state.labeller.labels.get(state.labeller.key_of(f), "")
    if not label:
        state.warnings.append((str(f.path), f"no label in the labels CSV for this file's {state.labeller.key}; "
                                            "its manifest label is empty"))
    return label


def deidentify(ds: Dataset, anonymizer: Anonymizer, dates: str = "shift", keep_descriptions: bool = False) -> None:
    """De-identify ``ds`` in place: dicognito, then private tags, free text and (optionally) dates removed.

    Args:
        ds: A dataset read with pydicom.
        anonymizer: One dicognito anonymizer per conversion (consistent pseudonyms and date shift).
        dates: ``shift`` (dicognito's consistent shift) or ``remove`` (every DA/DT/TM value emptied).
        keep_descriptions: Keep LT/ST/UT text and ``*Description`` / ``*Comments`` elements.
    """
    anonymizer.anonymize(ds)
    ds.remove_private_tags()

    def scrub(dataset: Dataset, elem: pydicom.DataElement) -> None:
        if not keep_descriptions and _is_free_text(elem):
            del dataset[elem.tag]
        elif dates == "remove" and elem.VR in _DATE_VRS:
            elem.value = ""

    ds.walk(scrub)


def _is_free_text(elem: pydicom.DataElement) -> bool:
    return elem.VR in _FREE_TEXT_VRS or elem.keyword.endswith(("Comments", "Description", "ProtocolName"))


def _elements(ds: Dataset, prefix: str = "") -> dict[str, str]:
    """Every element (nested ones as ``Seq[i].Keyword``) as a comparable string, pixel data excluded."""
    out: dict[str, str] = {}
    for elem in ds:
        name = prefix + (elem.keyword or str(elem.tag))
        if elem.VR == "SQ":
            out[name] = f"<{len(elem.value)} items>"
            for i, item in enumerate(elem.value):
                out.update(_elements(item, f"{name}[{i}]."))
        elif elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            out[name] = str(elem.value)
    return out


def audit_actions(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str]]:
    """``(element, removed|changed|added)`` between two :func:`_elements` snapshots (no values)."""
    actions = [(k, "removed") for k in before if k not in after]
    actions += [(k, "changed") for k in before if k in after and after[k] != before[k]]
    actions += [(k, "added") for k in after if k not in before]
    return sorted(actions)


def _changed_values(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Original values that de-identification removed or replaced (kept out of every written report)."""
    return {v for k, v in before.items() if len(v) >= 4 and after.get(k) != v and not v.startswith("<")}


@dataclass(frozen=True)
class _Keys:
    patient: str
    study: str
    series: str
    sop: str
    stem: str


def _output_keys(ds: Dataset, f: DicomFile) -> _Keys:
    """Pseudonymous keys of a de-identified dataset (empty patient when the source had none)."""
    patient = "" if f.patient.startswith(("study:", "file:")) else str(ds.get("PatientID", ""))
    sop = str(ds.get("SOPInstanceUID", ""))
    stem = hashlib.sha256(sop.encode()).hexdigest()[:16] if sop else hashlib.sha256(f.rel.encode()).hexdigest()[:16]
    return _Keys(patient, str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")), sop, stem)


def _unique_keys(keys: _Keys, f: DicomFile, state: _State) -> _Keys:
    """Warn about files without PatientID or with a SOPInstanceUID seen before (same image twice)."""
    if not keys.patient:
        state.warnings.append((str(f.path), "no PatientID: its manifest patient is empty (grouped by nothing); "
                                            "add PatientID to the source or group these images yourself"))
    seen = state.stems[keys.stem]
    state.stems[keys.stem] += 1
    if not seen:
        return keys
    state.warnings.append((str(f.path), "same SOPInstanceUID as an earlier file (the same image stored twice?); "
                                        f"written as copy {seen + 1}"))
    return replace(keys, stem=f"{keys.stem}_{seen + 1}")


def _row(keys: _Keys, f: DicomFile, path: str, slice_no: int | str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "patient": keys.patient, "study": keys.study, "series": keys.series, "sop": keys.sop,
            "view": f.view, "slice": slice_no, "n_slices": f.frames, "modality": f.modality, **extra}


def _write_images(ds: Dataset, f: DicomFile, keys: _Keys, state: _State) -> list[dict[str, Any]]:
    folder = state.out / (keys.patient or "no_patient_id")
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    header = Dataset()
    for frame in iter_frames(f.path, None, state.options.dicom, header):
        name = f"{keys.stem}_f{frame.index:04d}.png" if f.frames > 1 else f"{keys.stem}.png"
        extra = {"window": frame.policy} | _save_png(frame.raw, frame.image, header, folder / name,
                                                     state.options.format)
        rel = (folder / name).relative_to(state.out).as_posix()
        slice_no = frame.index if f.frames > 1 else f.instance
        rows.append(_row(keys, f, rel, slice_no, **extra))
    return rows


def _save_png(raw: np.ndarray, image: Image.Image, ds: Dataset, path: Path, fmt: str) -> dict[str, Any]:
    if fmt == "png8":
        image.save(path, format="PNG")
        return {}
    if raw.ndim != 2:
        raise DataError(f"{path.name}: 16-bit PNG holds one gray channel, but the image is colour; use --format png8")
    offset = 2 ** (int(ds.get("BitsStored", 16)) - 1) if int(ds.get("PixelRepresentation", 0)) == 1 else 0
    Image.fromarray((raw.astype(np.int64) + offset).clip(0, 65535).astype(np.uint16)).save(path, format="PNG")
    return {"offset": offset, "rescale_slope": ds.get("RescaleSlope", 1),
            "rescale_intercept": ds.get("RescaleIntercept", 0), "window": "none (stored values)"}


def _write_dicom(ds: Dataset, f: DicomFile, keys: _Keys, state: _State) -> list[dict[str, Any]]:
    folder = state.out / (keys.patient or "no_patient_id")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{keys.stem}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [_row(keys, f, path.relative_to(state.out).as_posix(), "")]


# ---------------------------------------------------------------- outputs


def _write_outputs(state: _State, src: Path, n_files: int) -> ConvertReport:
    out = state.out
    manifest, audit_log, report = out / "manifest.csv", out / "deid_audit.csv", out / "convert_report.json"
    _write_csv(manifest, MANIFEST_COLUMNS, [[r.get(c, "") for c in MANIFEST_COLUMNS] for r in state.rows])
    _write_csv(audit_log, AUDIT_COLUMNS, state.audit)
    converted = state.converted
    summary = _report_dict(state, n_files, converted)
    report.write_text(json.dumps(summary, indent=2))
    for _source, reason in state.errors:
        logger.warning("not converted: %s", reason)
    for source, warning in state.warnings:
        logger.warning("%s: %s", source, warning)
    logger.info("%s -> %s: %d of %d files converted into %d outputs; %d errors, %d warnings", src, out,
                converted, n_files, len(state.rows), len(state.errors), len(state.warnings))
    return ConvertReport(n_files, converted, len(state.rows), state.errors, state.warnings, manifest, audit_log,
                         report)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _report_dict(state: _State, n_files: int, converted: int) -> dict[str, Any]:
    o = state.options
    return {
        "n_files": n_files, "n_converted": converted, "n_outputs": len(state.rows),
        "n_errors": len(state.errors), "n_warnings": len(state.warnings),
        "errors": [{"source": _ref(state, s), "reason": _scrub(r, state)} for s, r in state.errors],
        "warnings": [{"source": _ref(state, s), "warning": _scrub(w, state)} for s, w in state.warnings],
        "format": o.format, "window": o.dicom.model_dump(mode="json") if o.format == "png8" else None,
        "deidentification": {
            "method": f"dicognito {dicognito.__version__} (DICOM PS3.15 Basic Application Level Confidentiality "
                      "Profile) + device identity and private tags removed"
                      + ("" if o.keep_descriptions else " + free text removed"),
            "dates": "shifted by one offset for the whole conversion" if o.dates == "shift" else "removed",
            "pseudonym_key": "given (reproducible)" if o.key else "random, not stored",
            "pixels": "not de-identified: check files with warnings for burned-in text",
        },
    }


def _ref(state: _State, source: str) -> str:
    if source in state.refs:
        return state.refs[source]
    return source if state.options.log_source_paths else _file_digest(Path(source))


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return hashlib.sha256(str(path).encode()).hexdigest()


def _scrub(text: str, state: _State) -> str:
    """``text`` with every original identifying value (and source path, unless logged on purpose) replaced."""
    values = set(state.identifying)
    if not state.options.log_source_paths:
        values |= {source for source, _ in state.errors + state.warnings}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "<removed>")
    return text
