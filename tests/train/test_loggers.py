"""train.logger: TensorBoard event files and MLflow runs per fold member, next to the live history.csv."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medtl.config import EarlyStoppingConfig, TrainConfig
from medtl.errors import ConfigError
from medtl.train import engine, loggers


def tiny_fit(logger) -> engine.FitResult:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 2, (40,), generator=g)
    cfg = TrainConfig(epochs=3, batch_size=8, early_stopping=EarlyStoppingConfig(monitor="val_auc", patience=5))
    module = engine.ClassifierModule(nn.Linear(5, 2), cfg, 1)
    return engine.fit(module, TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), cfg, 0, progress=False,
                      logger=logger)


def test_history_is_the_default_and_writes_nothing_else(tmp_path: Path) -> None:
    assert TrainConfig().logger == "history"
    assert loggers.make_logger("history", tmp_path, "exp", 0, 0) is None


def test_tensorboard_event_files_per_member(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    result = tiny_fit(loggers.make_logger("tensorboard", tmp_path, "exp", 1, 0))
    events = list((tmp_path / "tensorboard" / "fold1-m0").glob("events.out.tfevents.*"))
    assert len(events) == 1 and len(result.history) == 3
    data = events[0].read_bytes()
    for tag in (b"train_loss", b"train_accuracy", b"lr", b"val_auc", b"val_loss"):
        assert tag in data, tag


def test_mlflow_run_per_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    tiny_fit(loggers.make_logger("mlflow", tmp_path, "exp", 0, 1))
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_name == "fold0-m1"
    assert {"train_loss", "val_auc", "lr"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3  # one value per epoch


def test_a_missing_package_is_a_config_error_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="train.logger 'tensorboard' needs the Python package"):
        loggers.check_logger("tensorboard")
    loggers.check_logger("history")
