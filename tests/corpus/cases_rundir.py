"""Corpus cases of run directories: unfinished runs, the completion marker, weights checked before data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from corpus.case import Case
from medtl.config import data_root


def _images(root: Path, per_class: int = 3) -> Path:
    """A tiny folder dataset of real brain MRI images (two classes)."""
    src = data_root() / "brain_tumor_mri"
    for label in ("no", "yes"):
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / label).iterdir())[:per_class]:
            shutil.copy(f, root / "images" / label / f.name)
    return root / "images"


def _config(root: Path, per_class: int = 3, folds: int = 5, **model: str) -> Path:
    images = _images(root, per_class)
    weights = model.get("weights", "packaged:efficientnet_lite0")
    (root / "exp.yaml").write_text(
        f"name: corpus\ndata: {{source: folder, root: {images}, image_size: 32, split: {{folds: {folds}}}}}\n"
        f"model: {{weights: '{weights}'}}\ntransfer: {{strategy: feature_extraction}}\n"
        "train: {epochs: 1}\nevaluate: {report: false}\n")
    return root / "exp.yaml"


def _unfinished(root: Path) -> list[str]:
    cfg = _config(root)
    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("name: old\n")
    (run / "model" / "fold0.safetensors").write_bytes(b"left over")
    return ["train", str(cfg), "--out", str(run), "--quiet"]


def _no_marker(root: Path) -> list[str]:
    run = root / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("name: old\n")
    (run / "metrics.json").write_text(json.dumps({"auc": {"value": 0.9}}))
    (run / "model" / "model.json").write_text(json.dumps({"class_names": ["no", "yes"]}))
    (run / "predictions.csv").write_text("id,label,prob_no,prob_yes,pred\na,0,0.9,0.1,no\n")
    return ["evaluate", str(run)]


def _bad_weights(root: Path) -> list[str]:
    (root / "bad.safetensors").write_text("this is not a checkpoint")
    return ["train", str(_config(root, weights=f"file:{root / 'bad.safetensors'}")), "--out", str(root / "run"),
            "--quiet"]


def _ctrl_c_after_training(monkeypatch) -> None:
    """Ctrl-C once every fold has trained, while the run concludes (a real KeyboardInterrupt in the library)."""
    import medtl.experiment

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medtl.experiment, "conclude", interrupt)


def _train(root: Path) -> list[str]:
    return ["train", str(_config(root, per_class=4, folds=2)), "--out", str(root / "run"), "--quiet"]


def _models_kept(root: Path) -> int:
    return len(list((root / "run" / "model").glob("fold*.safetensors")))


def _run_files(root: Path) -> int:
    """Files the refused run wrote besides its config and log (splits.csv would mean images were decoded)."""
    run = root / "run"
    return len([p for p in run.rglob("*") if p.is_file() and p.name not in ("config.yaml", "run.log")])


CASES = [
    Case("ctrl-c-during-run", "#22.9", "Ctrl-C during `medtl train`",
         "exit 130; says the run is unfinished, what was kept and to add --resume (also in run.log); the trained "
         "folds' models are kept", _train, 130, "--resume", good=_models_kept, expected_good=2, slow=True,
         patch=_ctrl_c_after_training),
    Case("run-dir-unfinished", "#22.7", "`--out` holding an unfinished run (interrupted: model files, no marker)",
         "exit 2: says the run is unfinished and how to start clean; nothing is mixed into it",
         _unfinished, 2, "holds an unfinished run", good=lambda root: len(list((root / "run").rglob("*"))),
         expected_good=3),
    Case("run-dir-no-marker", "#22.8", "a run directory with metrics.json but no complete.json (crashed while writing)",
         "every command that needs a finished run refuses it (evaluate, predict, compare, study)",
         _no_marker, 2, "not a finished run"),
    Case("weights-file-before-images", "#22.12", "`model.weights: file:` pointing at a file that is no checkpoint",
         "exit 2 naming the file, before any image is decoded (no splits.csv written)",
         _bad_weights, 2, "bad.safetensors", good=_run_files, expected_good=0),
]
