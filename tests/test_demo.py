"""The demo's two experiments: what they run on, with which transfer recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtl.demo import demo_configs


def test_demo_runs_on_brain_mri_when_present(brain_mri: Path) -> None:
    fe, ft = demo_configs(brain_mri.parent)
    assert fe.data.location == ft.data.location == brain_mri
    assert fe.data.split.method == "kfold" and fe.data.split.folds == 5
    assert fe.transfer.strategy == "feature_extraction" and not fe.data.augment.active
    assert (ft.transfer.strategy, ft.transfer.unfreeze_from) == ("fine_tune", "blocks.5")
    assert ft.train.prefix_cache and ft.data.augment.active and ft.data.image_size == 224


def test_demo_falls_back_to_local_breastmnist(datasets: Path, tmp_path: Path) -> None:
    if not (datasets / "medmnist" / "breastmnist.npz").is_file():
        pytest.skip("BreastMNIST not in the shared datasets")
    (tmp_path / "medmnist").symlink_to(datasets / "medmnist")
    fe, ft = demo_configs(tmp_path)  # no brain_tumor_mri here
    assert fe.data.source == ft.data.source == "medmnist"
    assert fe.data.split.method == "predefined"
