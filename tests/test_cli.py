"""Tests of medtl.cli: commands exit 0 on success and 2 with a readable message on user errors."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medtl.cli import app

runner = CliRunner(env={"COLUMNS": "300"})  # wide enough that table cells do not wrap

CONFIG = """\
name: cli-test
data: {source: folder, root: images}
train: {optimiser: adam}
"""


def squash(text: str) -> str:
    """Output without whitespace: rich wraps long lines (and paths) at the terminal width."""
    return "".join(text.split())


def test_weights_list() -> None:
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    text = squash(result.output)
    for i in range(3):
        assert f"packaged:efficientnet_lite{i}" in text
    assert "hub:resnet50.a1_in1k" in text


def test_train_with_a_typo_exits_2_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    text = squash(result.output)
    assert "Didyoumean'optimizer'" in text
    assert "train.optimiser" in text
    assert not out.exists()  # nothing was trained


def test_train_with_a_bad_override_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text(CONFIG.replace("optimiser", "optimizer"))
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run"),
                                 "--set", "transfer.strategy=fine_tuen"])
    assert result.exit_code == 2, result.output
    assert "Didyoumean'fine_tune'" in squash(result.output)


def test_train_with_a_missing_config_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_config.yaml"
    result = runner.invoke(app, ["train", str(missing), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    text = squash(result.output)
    assert squash(str(missing)) in text
    assert "notfound" in text


def test_predict_on_a_non_run_directory_exits_2(tmp_path: Path) -> None:
    not_a_run = tmp_path / "just_a_folder"
    not_a_run.mkdir()
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    result = runner.invoke(app, ["predict", str(not_a_run), str(image)])
    assert result.exit_code == 2, result.output
    text = squash(result.output)
    assert "just_a_folder" in text
    assert "model/model.json" in text and "rundirectory" in text


def test_evaluate_on_a_non_run_directory_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "model.json" in squash(result.output)
