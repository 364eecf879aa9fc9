"""Data strategies on a tomosynthesis-like DICOM set (12 patients x 4 views x 10 slices, from a real file)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from medtl.config import DataConfig, parse_config
from medtl.data.sources import Sample, load_table
from medtl.data.splits import Fold, read_manifest
from medtl.data.strategy import check_expansion, expand_training, map_classes, select_slices
from medtl.errors import DataError
from medtl.experiment import prepare_data, run_experiment

from .conftest import write_csv

MERGE = {"merge": {"tumor": ["benign", "malignant"]}, "drop": ["actionable"]}


def tomo_cfg(folder: Path, **strategy: object) -> DataConfig:
    return DataConfig.model_validate({
        "source": "dicom", "root": folder, "csv": folder.parent / "labels.csv", "image_size": 32,
        "positive_class": "tumor" if "merge" in strategy else None, "strategy": strategy,
        "split": {"method": "kfold", "folds": 2, "val_fraction": 0.0, "near_duplicates": None},
    })


def test_all_slices_lists_every_slice_of_every_view(tomo_dir: Path) -> None:
    table = load_table(tomo_cfg(tomo_dir))
    assert len(table.samples) == 12 * 4 * 10
    assert table.class_names == ["actionable", "benign", "malignant", "normal"]
    p1 = [s for s in table.samples if s.patient == "P001"]
    assert Counter(s.meta["view"] for s in p1) == {"LCC": 10, "LMLO": 10, "RCC": 10, "RMLO": 10}
    assert sorted(s.meta["slice"] for s in p1 if s.meta["view"] == "RMLO") == list(range(10))
    assert len({s.meta["study"] for s in p1}) == 1 and len({s.meta["series"] for s in p1}) == 4


def test_merge_and_drop_classes(tomo_dir: Path) -> None:
    table = load_table(tomo_cfg(tomo_dir, **MERGE))
    assert table.class_names == ["tumor", "normal"]
    assert table.positive_index == 0
    assert table.class_counts() == {"tumor": 4 * 40, "normal": 6 * 40}
    assert not {"P011", "P012"} & {s.patient for s in table.samples}


def test_one_per_patient_takes_the_middle_slice_or_the_named_one(tomo_dir: Path) -> None:
    named = write_csv(tomo_dir.parent / "slices.csv", ["patient_id", "view", "slice"], [["P007", "RMLO", 2]])
    table = load_table(tomo_cfg(tomo_dir, slices="one_per_patient", slice_csv=str(named), **MERGE))
    assert len(table.samples) == 10 and len({s.patient for s in table.samples}) == 10
    chosen = {s.patient: (s.meta["view"], s.meta["slice"]) for s in table.samples}
    assert chosen["P001"] == ("LCC", 5)  # middle slice of the first view
    assert chosen["P007"] == ("RMLO", 2)  # the radiologist's slice


def test_one_per_volume_keeps_one_slice_per_view(tomo_dir: Path) -> None:
    table = load_table(tomo_cfg(tomo_dir, slices="one_per_volume"))
    assert len(table.samples) == 12 * 4
    assert {s.meta["slice"] for s in table.samples} == {5}


def test_named_slice_that_does_not_exist_is_an_error(tomo_dir: Path) -> None:
    named = write_csv(tomo_dir.parent / "bad_slices.csv", ["patient_id", "slice"], [["P001", 99]])
    with pytest.raises(DataError, match="slice 99 for patient 'P001'"):
        load_table(tomo_cfg(tomo_dir, slices="one_per_patient", slice_csv=str(named)))


def test_subsample_majority_by_patient_is_seeded(tomo_dir: Path) -> None:
    def normal_patients(seed: int) -> set[str]:
        table = load_table(tomo_cfg(tomo_dir, subsample={"normal": 0.5}, seed=seed, **MERGE))
        normal = table.class_names.index("normal")
        by_patient = defaultdict(set)
        for s in table.samples:
            by_patient[s.patient].add(s.label)
        assert all(len(v) == 1 for v in by_patient.values())
        assert sum(len([s for s in table.samples if s.patient == p]) for p in by_patient) == len(table.samples)
        return {p for p, labels in by_patient.items() if normal in labels}

    kept = normal_patients(0)
    assert len(kept) == 3  # 50% of 6 normal patients, each with all 40 slices or none
    assert normal_patients(0) == kept
    assert any(normal_patients(seed) != kept for seed in range(1, 6))


def test_unknown_class_in_strategy_suggests(tomo_dir: Path) -> None:
    with pytest.raises(DataError, match="Did you mean 'malignant'"):
        load_table(tomo_cfg(tomo_dir, merge={"tumor": ["benign", "malignent"]}))


def test_splits_keep_every_patient_in_one_role(tomo_dir: Path, tmp_path: Path) -> None:
    cfg = parse_config({"data": tomo_cfg(tomo_dir, **MERGE).model_dump(mode="json") | {
        "split": {"method": "kfold", "folds": 2, "val_fraction": 0.3, "seed": 1, "near_duplicates": None}}})
    data = prepare_data(cfg, progress=False)
    from medtl.data.splits import write_manifest

    write_manifest(tmp_path / "splits.csv", data.loaded.table, data.groups, data.folds)
    rows = read_manifest(tmp_path / "splits.csv")
    for fold in {r["fold"] for r in rows}:
        roles = defaultdict(set)
        for r in rows:
            if r["fold"] == fold:
                roles[r["patient"]].add(r["role"])
        assert len(roles) == 10 and all(len(v) == 1 for v in roles.values()), roles
    assert {r["meta"]["view"] for r in rows} == {"LCC", "LMLO", "RCC", "RMLO"}


def test_expansion_copies_only_training_samples_and_keeps_groups() -> None:
    images = np.random.default_rng(0).integers(0, 255, size=(8, 16, 16, 1), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    groups = [f"patient:{i // 2}" for i in range(8)]
    fold = Fold(0, np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([6, 7]))
    cfg = parse_config({"data": {"source": "folder", "root": "x"}}).data.strategy.expand_augment
    out = expand_training(images, labels, groups, fold, {1: 3}, cfg, seed=0)
    assert out.source.tolist() == [2, 2, 2, 3, 3, 3]
    assert out.groups == ["patient:1"] * 6 and (out.labels == 1).all()
    assert not np.array_equal(out.images[0], images[2]) or not np.array_equal(out.images[1], images[2])
    again = expand_training(images, labels, groups, fold, {1: 3}, cfg, seed=0)
    assert np.array_equal(out.images, again.images)  # seeded
    leaky = Fold(0, np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([3, 6, 7]))  # sample 3 also in test
    with pytest.raises(DataError, match="leakage"):
        check_expansion(out, leaky, groups)


def test_map_classes_rejects_double_use() -> None:
    samples = [Sample(str(i), str(i), i % 3, None, None) for i in range(6)]
    with pytest.raises(DataError, match="merged twice"):
        map_classes(samples, ["a", "b", "c"], {"x": ["a", "b"]}, ["a"])


def test_select_slices_without_patients_needs_volumes() -> None:
    samples = [Sample(str(i), str(i), 0, None, None) for i in range(3)]
    with pytest.raises(DataError, match="needs patient ids"):
        select_slices(samples, "one_per_patient")


def test_tomosynthesis_run_with_expansion_and_patient_level(tomo_dir: Path, tmp_path: Path) -> None:
    data = tomo_cfg(tomo_dir, slices="one_per_volume", expand={"tumor": 2}, **MERGE).model_dump(mode="json")
    cfg = parse_config({
        "name": "tomo",
        "data": data | {"split": {"method": "holdout", "test_fraction": 0.4, "val_fraction": 0.0,
                                  "near_duplicates": None}},
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "warmup_epochs": 0},
        "evaluate": {"bootstrap": 20, "tta": "none", "patient_level": {"method": "topk_mean", "k": 2}},
    })
    metrics = run_experiment(cfg, tmp_path / "run", progress=False)
    assert metrics["n"] == 4 * metrics["patient_level"]["n"]  # 4 views per test patient
    assert metrics["patient_level"]["aggregation"] == {
        "method": "topk_mean", "k": 2, "n_patients": metrics["patient_level"]["n"],
        "n_images": metrics["n"], "images_per_patient": {"min": 4, "max": 4}}
    log = (tmp_path / "run" / "run.log").read_text()
    assert "augmented training copies added" in log
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["patient_level"]) >= {"auc", "accuracy", "sensitivity", "n_groups", "confusion_matrix"}
