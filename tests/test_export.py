"""`medtl export`: the exported graph computes what `medtl predict` computes, and carries the run's contract.

The parity tests (slow) train tiny real runs on brain MRI images (48 px, 2 folds, feature extraction,
temperature scaling, four test-time views; one with ``train.ensemble: 2``) and compare onnxruntime
and TorchScript with :func:`medtl.predict.predict_files` on real images: max abs difference <= 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medtl import artifact, rundir
from medtl.config import parse_config
from medtl.data.images import open_image, to_array
from medtl.data.transforms import tta_view
from medtl.errors import ConfigError, MedtlError
from medtl.evaluate.metrics import compute_metrics
from medtl.export import export_run, graph_input, load_graph, read_onnx_contract, static_view
from medtl.predict import predict_files

TOLERANCE = 1e-4


@pytest.mark.parametrize("view", ["image", "hflip", "zoom", "zoom_hflip"])
@pytest.mark.parametrize("size", [32, 48, 67])
def test_static_view_is_tta_view(view: str, size: int) -> None:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 255
    assert torch.equal(static_view(x, view, size), tta_view(x, view))


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from report.conftest import make_run

    run = make_run(tmp_path_factory.mktemp("export"))
    rundir.mark_complete(run)
    return run


def test_bad_options_and_unfinished_runs(fabricated: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--format 'tflite'"):
        export_run(fabricated, "tflite")
    with pytest.raises(ConfigError, match="needs --format onnx"):
        export_run(fabricated, "torchscript", tmp_path, quantize="int8")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_run(fabricated, "onnx", tmp_path / "file")
    (tmp_path / "half" / "model").mkdir(parents=True)
    (tmp_path / "half" / rundir.CONFIG).write_text("name: x\n")
    with pytest.raises(MedtlError, match="not a finished run"):
        export_run(tmp_path / "half", "onnx")


def test_torchscript_contract_and_parity(fabricated: Path) -> None:
    result = export_run(fabricated, "torchscript")
    assert result.graph == fabricated / rundir.EXPORT_DIR / "model.ts"
    graph = load_graph(result.graph)
    spec = graph.contract
    assert spec == json.loads(result.contract_file.read_text())
    meta = artifact.load_meta(fabricated)
    assert spec["class_names"] == ["no", "yes"] and spec["positive_class"] == "yes"
    assert spec["preprocessing"]["image_size"] == 64 and spec["preprocessing"]["mean"] == meta.preprocessing["mean"]
    assert set(spec["weights_sha256"]) == {"fold0.safetensors", "fold1.safetensors"}
    assert spec["card"]["name"] == "fabricated" and spec["input"]["shape"] == ["N", 3, 64, 64]
    files = sorted((fabricated.parent / "images").rglob("*.png"))[:5]
    _check_parity(fabricated, graph, files)


def _inputs(run: Path, files: list[Path]) -> np.ndarray:
    meta = artifact.load_meta(run)
    pre = meta.preprocess
    return graph_input(np.stack([to_array(open_image(f), pre.image_size, pre.color, pre.resize, pre.crop)
                                 for f in files]), meta)


def _reference(run: Path, files: list[Path]) -> np.ndarray:
    names = artifact.load_meta(run).class_names
    return np.array([[row[f"prob_{n}"] for n in names] for row in predict_files(run, files)])


def _check_parity(run: Path, graph, files: list[Path]) -> float:
    x = _inputs(run, files)
    diff = float(np.abs(graph.run(x) - _reference(run, files)).max())
    assert diff <= TOLERANCE, f"{graph.kind}: max abs difference {diff:.2e}"
    assert graph.run(x[:1]).shape == (1, len(graph.contract["class_names"])), "the batch axis is dynamic"
    return diff


# ---------------------------------------------------------------- real runs (slow)


def _train(brain_mri: Path, out: Path, ensemble: int) -> Path:
    from medtl.experiment import run_experiment

    cfg = {"name": f"export-e{ensemble}",
           "data": {"source": "folder", "root": str(brain_mri), "positive_class": "yes", "image_size": 48,
                    "max_per_class": 12, "split": {"method": "kfold", "folds": 2, "seed": 0}},
           "transfer": {"strategy": "feature_extraction"},
           "train": {"epochs": 2 if ensemble == 1 else 1, "warmup_epochs": 0, "batch_size": 8, "progress": False,
                     "ensemble": ensemble},
           "evaluate": {"bootstrap": 50, "temperature_scaling": True, "tta": "hflip_zoom", "report": False}}
    run_experiment(parse_config(cfg), out, progress=False)
    return out


@pytest.fixture(scope="module", params=[1, 2], ids=["folds", "ensemble2"])
def real_run(request: pytest.FixtureRequest, brain_mri: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(brain_mri, tmp_path_factory.mktemp("real") / "run", request.param)


def _real_images(brain_mri: Path) -> list[Path]:
    """Images the tiny runs never saw (max_per_class 12 takes others), some of every size and format."""
    return [p for label in ("yes", "no") for p in sorted((brain_mri / label).iterdir())[-8:]]


@pytest.mark.slow
def test_onnx_and_torchscript_match_predict_on_real_images(real_run: Path, brain_mri: Path) -> None:
    meta = artifact.load_meta(real_run)
    assert meta.temperature and meta.tta == "hflip_zoom"
    onnx_result = export_run(real_run, "onnx", quantize="int8")
    ts_result = export_run(real_run, "torchscript")
    files = _real_images(brain_mri)
    for path in (onnx_result.graph, ts_result.graph):
        _check_parity(real_run, load_graph(path), files)
    spec = read_onnx_contract(onnx_result.graph)
    assert spec["temperature"] == meta.temperature and spec["views"] == ["image", "hflip", "zoom", "zoom_hflip"]
    assert spec["splits_sha256"] and spec["lineage"] == meta.lineage
    if meta.config["train"]["ensemble"] == 2:
        assert len(spec["folds"]) == 4
    int8 = load_graph(onnx_result.int8)
    assert int8.contract["quantization"].startswith("onnxruntime")
    probs = int8.run(_inputs(real_run, files))
    labels = np.array([1] * 8 + [0] * 8)
    fp32 = load_graph(onnx_result.graph).run(_inputs(real_run, files))
    auc8, auc32 = (compute_metrics(labels, p, 1, meta.threshold)["auc"] for p in (probs, fp32))
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and 0 <= auc8 <= 1
    print(f"int8 AUC {auc8:.3f} vs fp32 {auc32:.3f}")
