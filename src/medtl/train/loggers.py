"""Experiment trackers for long runs (``train.logger``): TensorBoard or MLflow next to the live history.csv.

Every run's ``history.csv`` already grows epoch by epoch; ``train.logger`` adds a Lightning logger per fold
member so that the same numbers (training loss and accuracy, learning rate, validation loss, accuracy and
AUC) can be followed in TensorBoard or MLflow. Lightning writes them from rank 0 only.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lightning.pytorch.loggers import Logger

from medtl.errors import ConfigError

PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}
"""The Python packages each tracker needs (any one of them)."""


def check_logger(kind: str) -> None:
    """Refuse, before any training, a tracker whose package is not installed.

    Raises:
        ConfigError: Naming ``train.logger`` and the package to install.
    """
    needed = PACKAGES.get(kind)
    if needed and not any(importlib.util.find_spec(name) for name in needed):
        raise ConfigError(f"train.logger '{kind}' needs the Python package {' or '.join(needed)}: "
                          f"pip install {needed[-1] if kind == 'tensorboard' else 'mlflow-skinny'} "
                          "(or set train.logger: history)")


def make_logger(kind: str, folder: Path, experiment: str, fold: int, member: int) -> Logger | None:
    """The Lightning logger of one fold member (None for ``history``: history.csv only).

    Args:
        kind: ``history``, ``tensorboard`` or ``mlflow``.
        folder: Where the tracker writes inside the run directory (TensorBoard event files; MLflow's SQLite
            store ``mlflow.db`` unless ``MLFLOW_TRACKING_URI`` names a tracking server).
        experiment: The experiment's name (MLflow experiment).
        fold: Fold index.
        member: Ensemble member.
    """
    if kind == "history":
        return None
    check_logger(kind)
    version = f"fold{fold}-m{member}"
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(folder), name="tensorboard", version=version, default_hp_metric=False)
    from lightning.pytorch.loggers import MLFlowLogger

    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"
    return MLFlowLogger(experiment_name=experiment, run_name=version, tracking_uri=uri)
