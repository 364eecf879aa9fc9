"""The run directory: names, atomic writes, the completion marker, and refusing unfinished runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medtl import rundir
from medtl.cli import app
from medtl.config import parse_config
from medtl.errors import DataError, MedtlError, RunInterrupted
from medtl.experiment import run_experiment

runner = CliRunner(env={"COLUMNS": "300"})


def squash(text: str) -> str:
    return "".join(text.split())


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = rundir.write_text(tmp_path / "metrics.json", "old")
    with pytest.raises(RuntimeError), rundir.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temporary file is left behind"


def test_a_block_that_writes_nothing_changes_nothing(tmp_path: Path) -> None:
    with rundir.atomic_path(tmp_path / "label_issues.csv"):
        pass
    assert not (tmp_path / "label_issues.csv").exists()


def test_states_and_the_marker(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert rundir.state(run) == "absent"
    rundir.create(run)
    assert rundir.state(run) == "empty"
    rundir.write_json(run / rundir.METRICS, {"auc": 1})
    assert rundir.state(run) == "unfinished" and not rundir.is_complete(run)
    rundir.mark_complete(run)
    assert rundir.state(run) == "complete"
    listed = rundir.read_json(run / rundir.COMPLETE)["files"]
    assert listed == {rundir.METRICS: (run / rundir.METRICS).stat().st_size}


@pytest.mark.parametrize(("prepare", "phrase"), [
    ("file", "is a file"),
    ("complete", "already holds a finished run"),
    ("unfinished", "holds an unfinished run"),
])
def test_create_refuses(tmp_path: Path, prepare: str, phrase: str) -> None:
    run = tmp_path / "run"
    if prepare == "file":
        run.write_text("x")
    else:
        run.mkdir()
        (run / rundir.CONFIG).write_text("name: x\n")
        if prepare == "complete":
            rundir.mark_complete(run)
    with pytest.raises(MedtlError, match=phrase):
        rundir.create(run)


def test_require_complete_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="not a medtl run directory"):
        rundir.require_complete(tmp_path)
    (tmp_path / rundir.CONFIG).write_text("name: x\n")
    with pytest.raises(MedtlError, match=f"no {rundir.COMPLETE}"):
        rundir.require_complete(tmp_path)
    with pytest.raises(DataError, match="not a finished run"):
        rundir.load_result(tmp_path)


def test_prediction_rows_round_trip(tmp_path: Path) -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    header, rows = rundir.prediction_rows(["a", "b", "c"], ["/a", "/b", "/c"], [0, 1, 1], np.array([0, 1, 1]),
                                          ["g1", "g2", "g2"], probs, ["no", "yes"], 1, 0.4)
    rundir.write_predictions(tmp_path, "test", header, rows)
    table = rundir.read_predictions(tmp_path / rundir.PREDICTIONS, (["no", "yes"], 1), need_pred=True)
    assert table.ids == ["a", "b", "c"] and list(table.folds) == [0, 1, 1] and table.groups == ["g1", "g2", "g2"]
    assert list(table.pred) == ["no", "yes", "yes"], "the decision is taken at the given threshold (0.45 >= 0.4)"
    np.testing.assert_allclose(table.probs, probs)


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    (tmp_path / rundir.PREDICTIONS).write_text("id,label,prob_no\na,0,0.1\n")
    with pytest.raises(DataError, match="prob_yes"):
        rundir.read_predictions(tmp_path / rundir.PREDICTIONS, (["no", "yes"], 1))


def tiny(root: Path) -> dict:
    return {"name": "tiny", "data": {"source": "folder", "root": str(root), "positive_class": "yes",
                                     "image_size": 32, "max_per_class": 8,
                                     "split": {"method": "kfold", "folds": 2, "seed": 0}},
            "transfer": {"strategy": "feature_extraction"},
            "train": {"epochs": 1, "warmup_epochs": 0, "progress": False},
            "evaluate": {"bootstrap": 20, "report": False, "label_issues": False}}


@pytest.mark.slow
def test_a_run_killed_before_its_marker_is_not_finished(brain_mri: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the folds trained: the directory is unfinished everywhere, and says how to go on."""
    import medtl.experiment as experiment

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "_evaluate", interrupt)
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="unfinished run") as caught:
        run_experiment(parse_config(tiny(brain_mri)), out, progress=False)
    assert caught.value.exit_code == 130
    assert "interrupted (Ctrl-C)" in (out / rundir.LOG).read_text()
    assert (out / "model" / "fold0.safetensors").is_file() and not (out / rundir.COMPLETE).exists()
    monkeypatch.undo()
    for argv in (["evaluate", str(out)], ["predict", str(out), str(brain_mri / "yes")], ["compare", str(out)]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert "notafinishedrun" in squash(result.output), (argv, result.output)
    with pytest.raises(MedtlError, match="holds an unfinished run"):
        run_experiment(parse_config(tiny(brain_mri)), out, progress=False)
    fresh = tmp_path / "fresh"
    run_experiment(parse_config(tiny(brain_mri)), fresh, progress=False)
    assert rundir.is_complete(fresh)
    files = rundir.read_json(fresh / rundir.COMPLETE)["files"]
    for name in (rundir.CONFIG, rundir.SPLITS, rundir.HISTORY, rundir.PREDICTIONS, rundir.METRICS, rundir.MODEL_META):
        assert name in files, name


@pytest.mark.slow
def test_train_logger_tensorboard_writes_one_event_file_per_fold(brain_mri: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    cfg = tiny(brain_mri)
    cfg["train"] |= {"logger": "tensorboard"}
    out = tmp_path / "run"
    run_experiment(parse_config(cfg), out, progress=False)
    for fold in (0, 1):
        events = list((out / rundir.LOGS / "tensorboard" / f"fold{fold}-m0").glob("events.out.tfevents.*"))
        assert len(events) == 1 and b"train_loss" in events[0].read_bytes()
    assert "logs/tensorboard/fold0-m0" in " ".join(rundir.read_json(out / rundir.COMPLETE)["files"])
