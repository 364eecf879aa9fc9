"""Tests of medtl.cli: commands exit 0 on success and 2 with a readable message on user errors."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtl.cli import _TerminalFilter, app
from medtl.errors import ConfigError, RunInterrupted
from medtl.models import registry

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


# ---------------------------------------------------------------- one error wrapper, Ctrl-C, warnings


def test_ctrl_c_exits_130_naming_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> list:
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "list_weights", interrupted)
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 130
    assert "interrupted (Ctrl-C): weights list; nothing more was written" in result.stderr


def test_run_interrupted_exits_130_with_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> list:
        raise RunInterrupted("fold 2 of 5 interrupted; folds 0-1 are kept in run/; rerun to continue")

    monkeypatch.setattr(registry, "list_weights", interrupted)
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 130 and "folds 0-1 are kept" in result.stderr


def test_a_message_with_brackets_is_printed_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing() -> list:
        raise ConfigError("transfer.schedule[1]: column [bold]label[/bold] is missing")

    monkeypatch.setattr(registry, "list_weights", failing)
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 2
    assert "error: transfer.schedule[1]: column [bold]label[/bold] is missing" in result.stderr


def test_third_party_warnings_go_to_the_log_not_the_terminal(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def noisy() -> list:
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        return []

    monkeypatch.setattr(registry, "list_weights", noisy)
    with caplog.at_level(logging.WARNING, logger="medtl.warnings"):
        result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    assert "eval mode" not in result.output
    assert any("UserWarning: Found 3 module(s) in eval mode" in r.getMessage() for r in caplog.records
               if r.name == "medtl.warnings")


def test_terminal_filter_keeps_third_party_warnings_for_verbose_only() -> None:
    record = logging.LogRecord("medtl.warnings", logging.WARNING, __file__, 1, "w", None, None)
    own = logging.LogRecord("medtl.data.sources", logging.WARNING, __file__, 1, "w", None, None)
    assert not _TerminalFilter(False).filter(record) and _TerminalFilter(False).filter(own)
    assert _TerminalFilter(True).filter(record)


# ---------------------------------------------------------------- piped tables and --json


def test_piped_tables_are_not_cut() -> None:
    narrow = CliRunner(env={"COLUMNS": "40"})  # CliRunner's stdout is not a terminal, like `| cat`
    result = narrow.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for name in ("packaged:efficientnet_lite0", "hub:resnet50.a1_in1k", "0.485,0.456,0.406 / 0.229,0.224,0.225"):
        assert name in result.stdout


def test_weights_list_json() -> None:
    result = runner.invoke(app, ["weights", "list", "--json"])
    assert result.exit_code == 0, result.output
    specs = json.loads(result.stdout)
    lite0 = next(s for s in specs if s["name"] == "packaged:efficientnet_lite0")
    assert lite0["offline"] is True and len(lite0["sha256"]) == 64 and lite0["mean"] == [0.5, 0.5, 0.5]


def test_layers_json_and_full_table() -> None:
    result = runner.invoke(app, ["layers", "resnet18", "--image-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    names = [c["name"] for c in doc["cut_points"]]
    assert doc["image_size"] == 64 and "layer3.1" in names and doc["cut_points"][-1]["shape"] == [512, 2, 2]
    table = CliRunner(env={"COLUMNS": "30"}).invoke(app, ["layers", "resnet18", "--image-size", "64"])
    assert table.exit_code == 0 and "…" not in table.stdout and "trained from here" in table.stdout


@pytest.mark.parametrize("size", ["0", "-3", "5000"])
def test_layers_bad_image_size_names_the_option(size: str) -> None:
    result = runner.invoke(app, ["layers", "resnet18", "--image-size", size])
    assert result.exit_code == 2 and "--image-size" in result.output and "Traceback" not in result.output


def test_cache_info_json(tmp_path: Path) -> None:
    result = CliRunner(env={"MEDTL_CACHE": str(tmp_path)}).invoke(app, ["cache", "info", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["activations"] == {"root": str(tmp_path / "activations"), "exists": False, "entries": 0, "bytes": 0,
                                  "max_bytes": None, "items": []}
    assert doc["decoded"]["root"] == str(tmp_path / "decoded") and doc["decoded"]["entries"] == 0


# ---------------------------------------------------------------- output paths


@pytest.mark.parametrize("argv", [["train", "c.yaml", "--out", "taken"], ["study", "s.yaml", "--out", "taken"],
                                  ["demo", "--out", "taken"], ["convert", "dicoms", "taken"],
                                  ["evaluate", "run", "--out", "taken/metrics.json"],
                                  ["compare", "run", "--csv", "taken/c.csv"]])
def test_an_output_path_through_a_file_names_the_option(argv: list[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("not a folder")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    option = "OUT_DIR" if argv[0] == "convert" else next(a for a in argv if a.startswith("--"))
    assert option in result.output and "isafile,notafolder" in squash(result.output)


def test_evaluate_out_naming_a_folder_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "isafolder" in squash(result.output)


# ---------------------------------------------------------------- evaluate --data reads YAML like train


def test_evaluate_data_typo_gives_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("data: {source: folder, roots: images}\n")
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--data", str(tmp_path / "other.yaml")])
    assert result.exit_code == 2, result.output
    assert "data.roots" in squash(result.output) and "Didyoumean'root'" in squash(result.output)


def test_evaluate_data_relative_root_is_resolved_against_the_yaml(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from report.conftest import make_run

    run = make_run(tmp_path / "exp")
    (tmp_path / "exp" / "other.yaml").write_text("data: {source: folder, root: images, image_size: 32}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(tmp_path / "exp" / "other.yaml"),
                                 "--out", "m.json"])
    assert result.exit_code == 0, result.output
    assert json.loads((elsewhere / "m.json").read_text())["n"] == 24
