"""Export a finished run as one inference graph (ONNX or TorchScript) that carries its own contract.

The graph takes a normalised float batch ``(N, 3, H, W)`` (dynamic ``N``) and returns calibrated
class probabilities, computed exactly as :func:`medtl.predict.predict_files` computes them: per fold,
each ensemble member's softmax averaged over the run's test-time views (``evaluate.tta``), the members
averaged, the run's temperature applied to that fold's probabilities
(:func:`medtl.evaluate.calibration.apply_temperature`: ``softmax(log(max(p, 1e-12)) / T)``), then the
folds averaged. Every TTA view is a flip or a centre crop resized back; both commute with the
per-channel normalisation (bilinear weights sum to one), so the views run inside the graph on the
normalised input.

The contract travels inside the file (ONNX ``metadata_props``, TorchScript ``_extra_files``) and as
``export.json`` next to it: preprocessing (size, resize/crop rule, colour, mean/std, DICOM windowing),
class names, positive class, threshold and its rule, temperature, lineage, weights and split hashes,
the model card and the medtl version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtl import artifact, rundir
from medtl.data.transforms import TTA_VIEWS, TTA_ZOOM, tta_view
from medtl.errors import ConfigError, MedtlError
from medtl.models.network import TransferNet
from medtl.models.registry import file_sha256
from medtl.report.card import card_data

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
QUANTIZE: tuple[str, ...] = ("int8",)
GRAPH_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
INT8_FILE = "model.int8.onnx"
CONTRACT_FILE = "export.json"
METADATA_KEY = "medtl"
"""The ONNX metadata key / TorchScript extra file (``medtl.json``) holding the contract as JSON."""
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
MIN_PROB = 1e-12
"""Probabilities are clipped here before their log is taken (as ``apply_temperature`` does)."""
OPSET = 18


class EnsembleGraph(nn.Module):
    """Calibrated probabilities of a run's fold ensemble from a normalised batch (see the module docstring).

    Args:
        folds: Per fold, its ensemble members (``train.ensemble``), in eval mode.
        views: The test-time views (``TTA_VIEWS[meta.tta]``).
        temperature: The run's temperature, or None when it fitted none.
    """

    def __init__(self, folds: list[list[nn.Module]], views: tuple[str, ...], temperature: float | None,
                 size: int) -> None:
        super().__init__()
        self.folds = nn.ModuleList(nn.ModuleList(members) for members in folds)
        self.views = tuple(views)
        self.temperature = float(temperature) if temperature else None
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_fold = []
        for members in self.folds:
            p = torch.stack([self._views(m, x) for m in members]).mean(0)
            if self.temperature is not None:
                p = torch.softmax(torch.log(torch.clamp(p, min=MIN_PROB)) / self.temperature, dim=1)
            per_fold.append(p)
        return torch.stack(per_fold).mean(0)

    def _views(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        probs = [model(static_view(x, v, self.size)).float().softmax(1) for v in self.views]
        return torch.stack(probs).mean(0)


def static_view(x: torch.Tensor, view: str, size: int) -> torch.Tensor:
    """:func:`medtl.data.transforms.tta_view` of a ``size`` x ``size`` batch with the crop box as constants.

    Tracing (TorchScript, ONNX) turns ``x.shape`` into tensors, which ``tta_view``'s ``round`` cannot
    take; the input size of an exported graph is fixed, so the box is computed here from ``size``.
    """
    if view not in ("zoom", "zoom_hflip"):
        return tta_view(x, view)
    side = round(size * TTA_ZOOM)
    start = (size - side) // 2
    crop = x[..., start:start + side, start:start + side].float()
    z = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
    return torch.flip(z, dims=[3]) if view == "zoom_hflip" else z


def ensemble_graph(run_dir: Path) -> tuple[EnsembleGraph, artifact.ModelMeta]:
    """The :class:`EnsembleGraph` of a finished run, and its metadata."""
    by_fold, meta = artifact.load_fold_models(rundir.require_complete(Path(run_dir)))
    folds = [by_fold[k] for k in sorted(by_fold)]
    graph = EnsembleGraph(folds, TTA_VIEWS[meta.tta], meta.temperature, meta.preprocessing["image_size"])
    return graph.eval(), meta


def graph_input(images: np.ndarray, meta: artifact.ModelMeta | dict) -> np.ndarray:
    """uint8 ``(N, S, S, C)`` images (``data.images.to_array``) as the graph's float32 ``(N, 3, S, S)`` input.

    Args:
        images: Decoded, resized images (C = 1 or 3).
        meta: The run's :class:`~medtl.artifact.ModelMeta`, or a contract (``contract()``).
    """
    pre = meta.preprocessing if isinstance(meta, artifact.ModelMeta) else meta["preprocessing"]
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(1, -1, 1, 1) * np.float32(255.0)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(1, -1, 1, 1) * np.float32(255.0)
    x = np.ascontiguousarray(images).transpose(0, 3, 1, 2).astype(np.float32)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


# ---------------------------------------------------------------- the contract


def medtl_version() -> str:
    """The installed medtl version ("unknown" when run from a source tree)."""
    try:
        return version("medtl")
    except PackageNotFoundError:
        return "unknown"


def weights_sha256(run_dir: Path, meta: artifact.ModelMeta) -> dict[str, str]:
    """SHA-256 of each fold's weights file."""
    return {name: file_sha256(Path(run_dir) / rundir.MODEL_DIR / name) for name in meta.folds}


def combined_sha256(hashes: dict[str, str]) -> str:
    """One SHA-256 over named hashes (the identity of a run's weights as a whole)."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def contract(run_dir: Path, meta: artifact.ModelMeta) -> dict[str, Any]:
    """Everything a consumer of the exported graph needs to feed it and read its output."""
    size = int(meta.preprocessing["image_size"])
    names = list(meta.class_names)
    weights = weights_sha256(run_dir, meta)
    lineage = list(meta.lineage)
    data = meta.config.get("data", {})
    return {
        "format": "medtl-export", "version": 1, "medtl_version": medtl_version(),
        "model_id": str(meta.config.get("name") or Path(run_dir).name), "backbone": meta.backbone,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, size, size], "dtype": "float32",
                  "normalise": "uint8 pixels (grey replicated to 3 channels) -> (pixel - 255*mean) / (255*std)"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(names)],
                   "meaning": "calibrated class probabilities (fold ensemble, test-time views and temperature "
                              "inside the graph)"},
        "preprocessing": dict(meta.preprocessing) | {"dicom": data.get("dicom", {})},
        "class_names": names, "positive_index": meta.positive_index,
        "positive_class": names[meta.positive_index] if meta.positive_index is not None else None,
        "threshold": meta.threshold, "threshold_rule": meta.threshold_rule, "temperature": meta.temperature,
        "tta": meta.tta, "views": list(TTA_VIEWS[meta.tta]), "folds": list(meta.folds), "lineage": lineage,
        "weights_sha256": weights, "model_sha256": combined_sha256(weights),
        "splits_sha256": next((s.get("splits_sha256") for s in reversed(lineage) if s.get("splits_sha256")), None),
        "patient_level": meta.config.get("evaluate", {}).get("patient_level"),
        "card": card_data(run_dir),
    }


# ---------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What :func:`export_run` wrote."""

    graph: Path
    contract_file: Path
    seconds: float
    int8: Path | None = None
    notes: list[str] = field(default_factory=list)


def export_run(run_dir: Path, fmt: str, out: Path | None = None, quantize: str | None = None) -> ExportResult:
    """Write the run's inference graph, its contract (``export.json``) and optionally an int8 ONNX graph.

    Args:
        run_dir: A finished run directory.
        fmt: ``onnx`` or ``torchscript``.
        out: Output folder (default ``RUN/export``).
        quantize: ``int8``: also an onnxruntime dynamically quantised graph (ONNX only).

    Raises:
        ConfigError: Unknown format or quantisation, int8 asked of TorchScript, ``out`` is a file.
        MedtlError: The run is not finished, or its model files do not load.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize {quantize!r}: use one of {', '.join(QUANTIZE)}")
    if quantize and fmt != "onnx":
        raise ConfigError("--quantize int8 needs --format onnx (onnxruntime quantises ONNX graphs)")
    run_dir = rundir.require_complete(Path(run_dir))
    out = Path(out) if out is not None else run_dir / rundir.EXPORT_DIR
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pass a folder (it is created when missing)")
    started = time.perf_counter()
    graph, meta = ensemble_graph(run_dir)
    spec = contract(run_dir, meta)
    target = out / GRAPH_FILES[fmt]
    (write_onnx if fmt == "onnx" else write_torchscript)(graph, spec, target)
    result = ExportResult(target, rundir.write_json(out / CONTRACT_FILE, spec), 0.0)
    if quantize:
        result.int8 = quantize_int8(target, out / INT8_FILE)
    result.seconds = time.perf_counter() - started
    log.info("exported %s (%s) to %s in %.1f s", spec["model_id"], fmt, target, result.seconds)
    return result


def _example(spec: dict[str, Any], n: int = 2) -> torch.Tensor:
    size = spec["input"]["shape"][-1]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def write_onnx(graph: EnsembleGraph, spec: dict[str, Any], target: Path) -> Path:
    """Export ``graph`` to one self-contained ONNX file (dynamic batch axis) with the contract as metadata."""
    import onnx

    with rundir.atomic_path(target) as tmp:
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            # The TorchScript-based exporter: on the 2-core CI machine it exports a 2-fold, 4-view
            # graph in ~20 s where the dynamo exporter takes ~3 min; both give the same operators.
            with torch.no_grad(), warnings.catch_warnings(category=DeprecationWarning, action="ignore"):
                torch.onnx.export(graph, (_example(spec),), str(tmp_onnx), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
            model = onnx.load(str(tmp_onnx))
        finally:
            tmp_onnx.unlink(missing_ok=True)
        set_onnx_metadata(model, spec)
        onnx.save(model, str(tmp))
    return target


def set_onnx_metadata(model: Any, spec: dict[str, Any]) -> None:
    """The contract as ``metadata_props``: the whole of it under ``medtl``, the main fields flat too."""
    del model.metadata_props[:]
    flat = {METADATA_KEY: json.dumps(spec), "class_names": json.dumps(spec["class_names"]),
            "positive_class": str(spec["positive_class"]), "threshold": repr(spec["threshold"]),
            "temperature": repr(spec["temperature"]), "model_id": spec["model_id"],
            "model_sha256": spec["model_sha256"], "medtl_version": spec["medtl_version"]}
    for key, value in flat.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.doc_string = "medtl", f"medtl export of {spec['model_id']}"


def write_torchscript(graph: EnsembleGraph, spec: dict[str, Any], target: Path) -> Path:
    """Trace ``graph`` to TorchScript and save it with the contract as the extra file ``medtl.json``."""
    with torch.no_grad():
        traced = torch.jit.trace(graph, (_example(spec),), check_trace=False)
    with rundir.atomic_path(target) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={f"{METADATA_KEY}.json": json.dumps(spec)})
    return target


def quantize_int8(source: Path, target: Path) -> Path:
    """An onnxruntime dynamically quantised copy (int8 weights) of an ONNX graph, its contract kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    with rundir.atomic_path(target) as tmp:
        # Pre-processing (shape inference, onnxruntime graph optimisation) folds the Identity nodes of
        # weights shared between the unrolled views and folds, which the quantiser needs as initialisers.
        prepared, quantized = tmp.with_suffix(".pre.onnx"), tmp.with_suffix(".q.onnx")
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
            model = onnx.load(str(quantized))
        finally:
            prepared.unlink(missing_ok=True)
            quantized.unlink(missing_ok=True)
        spec = read_onnx_contract(source) | {"quantization": "onnxruntime quantize_dynamic, int8 weights"}
        set_onnx_metadata(model, spec)
        onnx.save(model, str(tmp))
    return target


# ---------------------------------------------------------------- loading a graph


def read_onnx_contract(path: Path) -> dict[str, Any]:
    """The contract stored in an ONNX file's metadata."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise MedtlError(f"{path}: no '{METADATA_KEY}' metadata; it was not exported by medtl export")
    return json.loads(props[METADATA_KEY])


@dataclass
class LoadedGraph:
    """A graph ready to run: ``run(x)`` maps the normalised batch to probabilities; its contract and identity."""

    contract: dict[str, Any]
    sha256: str
    kind: str
    session: Any
    torch_graph: EnsembleGraph | None = None
    """The eager PyTorch graph (served from a run directory: Grad-CAM needs its gradients)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` (float64) of the float32 batch ``x``."""
        if self.kind == "onnx":
            return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float64)
        with torch.inference_mode():
            return self.session(torch.from_numpy(x)).double().numpy()


def load_graph(source: Path, threads: int | None = None) -> LoadedGraph:
    """A run directory, an export folder, or an exported ``.onnx`` / ``.ts`` file, ready to run.

    An export folder serves its ONNX graph when it has one, else its TorchScript graph.

    Raises:
        MedtlError: ``source`` is none of these (the message says what to pass).
    """
    source = Path(source)
    if source.is_dir() and rundir.is_complete(source):
        return _from_run(source)
    if source.is_dir():
        found = [source / GRAPH_FILES[f] for f in FORMATS if (source / GRAPH_FILES[f]).is_file()]
        if not found:
            rundir.require_complete(source)  # says what the folder is (unfinished run, not a run, ...)
        source = found[0]
    if source.suffix == ".onnx" and source.is_file():
        return _from_onnx(source, threads)
    if source.suffix in (".ts", ".pt") and source.is_file():
        return _from_torchscript(source)
    raise MedtlError(f"{source}: not a finished run directory, an export folder or an exported .onnx/.ts file; "
                     "pass a run directory or the output of medtl export")


def _from_run(run_dir: Path) -> LoadedGraph:
    graph, meta = ensemble_graph(run_dir)
    spec = contract(run_dir, meta)
    return LoadedGraph(spec, spec["model_sha256"], "torch", graph, graph)


def _from_onnx(path: Path, threads: int | None) -> LoadedGraph:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated classes for every kind of bad file
        raise MedtlError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}); export it again") from None
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise MedtlError(f"{path}: no '{METADATA_KEY}' metadata; it was not exported by medtl export")
    return LoadedGraph(json.loads(meta[METADATA_KEY]), file_sha256(path), "onnx", session)


def _from_torchscript(path: Path) -> LoadedGraph:
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise MedtlError(f"{path}: not a TorchScript file torch can load ({str(exc).splitlines()[0][:200]})") from None
    if not extra[f"{METADATA_KEY}.json"]:
        raise MedtlError(f"{path}: no {METADATA_KEY}.json extra file; it was not exported by medtl export")
    return LoadedGraph(json.loads(extra[f"{METADATA_KEY}.json"]), file_sha256(path), "torchscript", module.eval())


def first_model(graph: LoadedGraph) -> TransferNet | None:
    """Member 0 of the first fold of an eager graph (the model Grad-CAM explains), else None."""
    if graph.torch_graph is None:
        return None
    return graph.torch_graph.folds[0][0]
