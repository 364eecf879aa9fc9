"""Corpus cases of `medtl export`, `medtl serve` and `medtl card` reachable from the command line.

The server's own bad inputs (uploads: too large, not an image, truncated, bombs, DICOM without
pixels, wrong channels) are tested through FastAPI's TestClient in tests/test_serve.py.
"""

from __future__ import annotations

from pathlib import Path

from corpus.case import Case


def _unfinished(root: Path) -> Path:
    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("name: old\n")
    (run / "model" / "fold0.safetensors").write_bytes(b"left over")
    return run


def _file(root: Path, name: str, text: str = "not a model") -> Path:
    (root / name).write_text(text)
    return root / name


CASES: list[Case] = [
    Case("export-missing-run", "held", "`export` of a run directory that does not exist",
         "exit 2 naming the folder", lambda r: ["export", str(r / "nowhere")], 2, "no such run directory"),
    Case("export-unfinished-run", "held", "`export` of an unfinished run (no complete.json)",
         "exit 2: not a finished run, train it again", lambda r: ["export", str(_unfinished(r))], 2,
         "is not a finished run"),
    Case("export-bad-format", "held", "`export RUN --format tflite`", "exit 2 naming `--format`",
         lambda r: ["export", str(r), "--format", "tflite"], 2, "--format 'tflite' is not a valid option"),
    Case("export-bad-quantize", "held", "`export RUN --quantize int4`", "exit 2, did-you-mean `int8`",
         lambda r: ["export", str(r), "--quantize", "int4"], 2, "did you mean 'int8'"),
    Case("export-int8-torchscript", "held", "`export RUN --format torchscript --quantize int8`",
         "exit 2: int8 needs --format onnx", lambda r: ["export", str(r), "--format", "torchscript",
                                                        "--quantize", "int8"], 2, "needs --format onnx"),
    Case("export-out-is-file", "held", "`export RUN --out taken` where `taken` is a file", "exit 2 naming `--out`",
         lambda r: ["export", str(r), "--out", str(_file(r, "taken"))], 2, "is a file, not a folder"),
    Case("serve-missing-source", "held", "`serve` of a path that does not exist", "exit 2 before listening, "
         "saying what to pass", lambda r: ["serve", str(r / "nowhere")], 2, "not a finished run directory"),
    Case("serve-not-onnx", "held", "`serve model.onnx` where the file is not ONNX", "exit 2 naming the file",
         lambda r: ["serve", str(_file(r, "model.onnx"))], 2, "onnxruntime cannot load it"),
    Case("serve-not-torchscript", "held", "`serve model.ts` where the file is not TorchScript",
         "exit 2 naming the file", lambda r: ["serve", str(_file(r, "model.ts"))], 2, "not a TorchScript file"),
    Case("serve-port-out-of-range", "held", "`serve RUN --port 70000`", "exit 2 naming `--port` and its range",
         lambda r: ["serve", str(r), "--port", "70000"], 2, "--port"),
    Case("card-unfinished-run", "held", "`card` of an unfinished run", "exit 2: not a finished run",
         lambda r: ["card", str(_unfinished(r))], 2, "is not a finished run"),
]
