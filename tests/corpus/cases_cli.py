"""Corpus cases of the command line: option parsing, output paths, piped output, warnings, config files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from corpus.case import Case


def _images(root: Path, per_class: int = 6, size: int = 32) -> Path:
    """A tiny two-class image folder (``root/images/{a,b}``), the classes told apart by brightness."""
    rng = np.random.default_rng(0)
    for label, base in (("a", 60), ("b", 180)):
        folder = root / "images" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{label}{i}.png")
    return root / "images"


def _config(root: Path, text: str = "", name: str = "c.yaml") -> str:
    (root / name).write_text("name: t\ndata: {source: folder, root: images, image_size: 32}\n" + text)
    return name


# ---------------------------------------------------------------- #22.6 convert options


def _window_sideways(root: Path) -> list[str]:
    (root / "dicoms").mkdir()
    return ["convert", "dicoms", "out", "--window", "sideways"]


def _window_typo(root: Path) -> list[str]:
    (root / "dicoms").mkdir()
    return ["convert", "dicoms", "out", "--window", "lungs"]


def _format_typo(root: Path) -> list[str]:
    (root / "dicoms").mkdir()
    return ["convert", "dicoms", "out", "--format", "png"]


# ---------------------------------------------------------------- #22.10 output paths, image size


def _file(root: Path, name: str = "taken") -> str:
    (root / name).write_text("an existing file\n")
    return name


def _train_out_file(root: Path) -> list[str]:
    return ["train", _config(root), "--out", _file(root), "--quiet"]


def _study_out_file(root: Path) -> list[str]:
    return ["study", "study.yaml", "--out", _file(root)]


def _convert_out_file(root: Path) -> list[str]:
    (root / "dicoms").mkdir()
    return ["convert", "dicoms", _file(root)]


def _evaluate_out_under_file(root: Path) -> list[str]:
    (root / "run").mkdir()
    return ["evaluate", "run", "--out", f"{_file(root)}/metrics.json"]


def _layers_size(size: str) -> object:
    return lambda root: ["layers", "resnet18", "--image-size", size]


# ---------------------------------------------------------------- #22.14 warnings, #22.15 piped output


def _train_quiet(root: Path) -> list[str]:
    _images(root)
    text = ("model: {backbone: tf_efficientnet_lite0, weights: packaged:efficientnet_lite0}\n"
            "transfer: {strategy: fine_tune, unfreeze_from: blocks.6, head_init: zero}\n"
            "train: {epochs: 1, batch_size: 4, early_stopping: null}\n"
            "data: {source: folder, root: images, image_size: 32, split: {method: holdout}}\n")
    (root / "c.yaml").write_text("name: t\n" + text)
    return ["train", "c.yaml", "--out", "run", "--quiet"]


def _warnings_in_log(root: Path) -> int:
    log = root / "run" / "run.log"
    return int(log.is_file() and "medtl.warnings" in log.read_text())


def _weights_json(root: Path) -> list[str]:
    return ["weights", "list", "--json"]


# ---------------------------------------------------------------- held: config files


def _wrong_type(root: Path) -> list[str]:
    return ["train", _config(root, "train: {epochs: many}\n"), "--out", "run"]


def _out_of_range(root: Path) -> list[str]:
    return ["train", _config(root, "train: {lr: -0.1}\n"), "--out", "run"]


def _unknown_set_key(root: Path) -> list[str]:
    return ["train", _config(root), "--out", "run", "--set", "train.epohcs=3"]


def _missing_yaml(root: Path) -> list[str]:
    return ["train", "nowhere.yaml", "--out", "run"]


def _not_yaml(root: Path) -> list[str]:
    (root / "c.yaml").write_text("name: [unclosed\n")
    return ["train", "c.yaml", "--out", "run"]


def _bad_option_value(root: Path) -> list[str]:
    return ["train", _config(root, "transfer: {strategy: finetune}\n"), "--out", "run"]


def _evaluate_data_typo(root: Path) -> list[str]:
    (root / "run").mkdir()
    (root / "other.yaml").write_text("data: {source: folder, roots: images}\n")
    return ["evaluate", "run", "--data", "other.yaml"]


def _missing_data_yaml(root: Path) -> list[str]:
    (root / "run").mkdir()
    return ["evaluate", "run", "--data", "nowhere.yaml"]


CASES = [
    Case("convert-window-invalid", "#22.6", "`convert --window sideways`", "exit 2 naming `--window` and its choices",
         _window_sideways, 2, "--window 'sideways' is not a valid option. Choose one of: file, minmax"),
    Case("convert-window-typo", "#22.6", "`convert --window lungs`", "exit 2, did-you-mean `lung`",
         _window_typo, 2, "Did you mean 'lung'?"),
    Case("convert-format-typo", "#22.6", "`convert --format png`", "exit 2 naming `--format`, did-you-mean",
         _format_typo, 2, "--format 'png' is not a valid option. Did you mean"),
    Case("train-out-is-file", "#22.10", "`train --out` naming an existing file", "exit 2 naming `--out`",
         _train_out_file, 2, "--out taken: taken is a file, not a folder"),
    Case("study-out-is-file", "#22.10", "`study --out` naming an existing file", "exit 2 naming `--out`",
         _study_out_file, 2, "--out taken: taken is a file, not a folder"),
    Case("convert-out-is-file", "#22.10", "`convert IN OUT` with OUT an existing file", "exit 2 naming OUT_DIR",
         _convert_out_file, 2, "OUT_DIR taken: taken is a file, not a folder"),
    Case("evaluate-out-under-file", "#22.10", "`evaluate --out taken/metrics.json`, `taken` a file",
         "exit 2 naming `--out`", _evaluate_out_under_file, 2, "taken is a file, not a folder"),
    Case("layers-image-size-zero", "#22.10", "`layers resnet18 --image-size 0`", "exit 2 naming `--image-size`",
         _layers_size("0"), 2, "--image-size 0: the input size must be 8 to 4096 px"),
    Case("layers-image-size-negative", "#22.10", "`layers resnet18 --image-size -5`", "exit 2 naming `--image-size`",
         _layers_size("-5"), 2, "--image-size -5"),
    Case("quiet-third-party-warnings", "#22.14", "`train --quiet` (Lightning warns about eval-mode modules)",
         "third-party warnings go to run.log (`medtl.warnings`), not the terminal", _train_quiet, 0,
         "run directory: run", good=_warnings_in_log, expected_good=1, slow=True),
    Case("weights-list-json", "#22.15", "`weights list --json` (and `compare`, `cache info`, `layers`)",
         "one JSON document on stdout, nothing cut", _weights_json, 0,
         '"sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"'),
    Case("yaml-wrong-type", "held", "YAML with a wrong type (`train.epochs: many`)", "exit 2 naming the key",
         _wrong_type, 2, "train.epochs"),
    Case("yaml-out-of-range", "held", "YAML with an out-of-range value (`train.lr: -0.1`)", "exit 2 naming the key",
         _out_of_range, 2, "train.lr"),
    Case("set-unknown-key", "held", "`--set train.epohcs=3`", "exit 2, did-you-mean `epochs`",
         _unknown_set_key, 2, "epochs"),
    Case("yaml-missing", "held", "config file that does not exist", "exit 2 naming the file",
         _missing_yaml, 2, "nowhere.yaml not found"),
    Case("yaml-not-yaml", "held", "config file that is not valid YAML", "exit 2 naming the file",
         _not_yaml, 2, "not valid YAML"),
    Case("yaml-bad-option", "held", "YAML with a misspelt option value (`strategy: finetune`)",
         "exit 2, did-you-mean `fine_tune`", _bad_option_value, 2, "Did you mean 'fine_tune'?"),
    Case("evaluate-data-typo", "#17.6", "`evaluate --data` YAML with a misspelt key (`roots`)",
         "exit 2, did-you-mean `root` (same loader as train)", _evaluate_data_typo, 2, "Did you mean 'root'?"),
    Case("evaluate-data-missing", "#17.6", "`evaluate --data` naming a missing YAML", "exit 2 naming the file",
         _missing_data_yaml, 2, "nowhere.yaml not found"),
]
