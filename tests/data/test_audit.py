"""Tests of medtl.data.audit: synthetic leakage cases, and the known issues of the shared datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medtl.cli import app
from medtl.data.audit import audit
from medtl.errors import ConfigError

from .conftest import write_csv

runner = CliRunner(env={"COLUMNS": "200"})


def _image(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size // 8, size // 8), dtype=np.uint8)).resize((size, size))


@pytest.fixture
def leaky_csv(tmp_path: Path) -> Path:
    """A CSV source with a predefined split: a patient in train and test, an exact duplicate across
    splits with conflicting labels, a resized near-duplicate, and an unreadable file."""
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(12):
        _image(i).save(img / f"{i}.png")
        rows.append([f"img/{i}.png", "pos" if i % 2 else "neg", f"p{i}", "train" if i < 8 else "test"])
    _image(0).save(img / "copy_of_0.png")  # exact duplicate of 0 (train, neg) in test, labelled pos
    rows.append(["img/copy_of_0.png", "pos", "p100", "test"])
    _image(3).resize((40, 40)).resize((48, 48)).save(img / "near_3.png")  # near-duplicate of 3
    rows.append(["img/near_3.png", "pos", "p101", "test"])
    rows.append(["img/5b.png", "pos", "p5", "test"])  # patient p5 is also in train
    _image(55).save(img / "5b.png")
    (img / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows.append(["img/broken.png", "neg", "p200", "train"])
    write_csv(tmp_path / "labels.csv", ["path", "label", "patient_id", "split"], rows)
    (tmp_path / "data.yaml").write_text("data: {source: csv, csv: labels.csv}\n")
    return tmp_path / "data.yaml"


def test_audit_finds_every_kind_of_problem(leaky_csv: Path) -> None:
    report = audit(leaky_csv, distance=4, progress=False)
    d = report.to_dict()
    assert report.leakage
    assert d["patients"]["crossing"] == [{"fold": 0, "patient": "p5", "splits": ["test", "train"]}]
    exact = d["exact_duplicates"]
    assert exact["n_groups"] == 1 and exact["crossing_splits"] == 1 and exact["conflicting_labels"] == 1
    assert exact["groups"][0]["ids"] == ["img/0.png", "img/copy_of_0.png"]
    near_ids = [g["ids"] for g in d["near_duplicates"]["groups"]]
    assert ["img/3.png", "img/near_3.png"] in near_ids
    assert [u["id"] for u in d["unreadable"]] == ["img/broken.png"]
    assert {(b["split"], b["n"]) for b in d["class_balance"]} == {("train", 9), ("test", 7)}  # broken.png listed
    assert d["images"]["modes"] == {"L": 15}


def test_cli_audit_exit_code_and_json(leaky_csv: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", str(leaky_csv), "--json", str(tmp_path / "a.json"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "leakage" in result.output and "exact-duplicate groups" in result.output
    assert json.loads((tmp_path / "a.json").read_text())["leakage"] is True


def test_clean_folder_passes(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(6):
            _image(i + (100 if label == "b" else 0)).save(tmp_path / label / f"{i}.png")
    result = runner.invoke(app, ["audit", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    report = audit(tmp_path, progress=False)
    assert report.split_origin.startswith("folds made by the config") and report.n_folds == 5
    assert not report.leakage


def test_audit_of_a_run_directory_uses_its_manifest(tmp_path: Path) -> None:
    from medtl.config import parse_config
    from medtl.data.splits import write_manifest
    from medtl.experiment import prepare_data

    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(6):
            _image(i + (100 if label == "b" else 0)).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg = parse_config({"data": {"source": "folder", "root": str(tmp_path / "imgs"), "image_size": 16,
                                 "split": {"folds": 2, "val_fraction": 0.0}}})
    data = prepare_data(cfg, progress=False)
    run = tmp_path / "run"
    write_manifest(run / "splits.csv", data.loaded.table, data.groups, data.folds)
    (run / "config.yaml").write_text(f"data: {{source: folder, root: {tmp_path / 'imgs'}}}\n")
    report = audit(run, progress=False)
    assert report.split_origin.startswith("run manifest") and report.n_folds == 2 and not report.leakage


def test_unknown_target(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ConfigError, match="not a run directory"):
        audit(tmp_path / "x.txt", progress=False)


def test_dicom_source_audit(tomo_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "tomo.yaml"
    config.write_text(f"data: {{source: dicom, root: {tomo_dir}, csv: {tomo_dir.parent / 'labels.csv'}, "
                      "strategy: {slices: one_per_volume}, "
                      "split: {folds: 2, val_fraction: 0.0, near_duplicates: null}}\n")
    report = audit(config, progress=False)
    d = report.to_dict()
    assert d["patients"]["n_patients"] == 12 and not report.leakage
    assert d["exact_duplicates"]["n_groups"] == 0 and d["images"]["n_decoded"] == 48


# ---------------------------------------------------------------- the shared datasets


def test_brain_mri_has_22_exact_duplicate_groups(brain_mri: Path) -> None:
    d = audit(brain_mri, progress=False).to_dict()
    exact = d["exact_duplicates"]
    assert exact["n_groups"] == 22 and exact["n_redundant"] == 25
    assert exact["crossing_splits"] == 0 and exact["conflicting_labels"] == 0
    assert ["yes/Y30.jpg", "yes/Y38.jpg", "yes/Y54.jpg", "yes/Y70.jpg"] in [g["ids"] for g in exact["groups"]]
    assert d["near_duplicates"]["n_groups"] > 0


def test_breastmnist_pair_with_conflicting_labels(datasets: Path) -> None:
    path = datasets / "medmnist" / "breastmnist.npz"
    if not path.is_file():
        pytest.skip("breastmnist.npz not found")
    report = audit(path, progress=False)
    exact = report.to_dict()["exact_duplicates"]
    assert report.leakage and exact["n_groups"] == 1
    group = exact["groups"][0]
    assert group["ids"] == ["train[115]", "test[76]"]
    assert group["conflicting_labels"] and group["crosses_splits"]


def test_pneumoniamnist_groups_crossing_train_val(datasets: Path) -> None:
    path = datasets / "medmnist" / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip("pneumoniamnist.npz not found")
    report = audit(path, progress=False)
    exact = report.to_dict()["exact_duplicates"]
    assert exact["n_groups"] == 27 and exact["n_redundant"] == 29 and exact["conflicting_labels"] == 0
    crossing = [g for g in exact["groups"] if g["crosses_splits"]]
    assert len(crossing) == 8 and all(g["splits"] == ["train", "val"] for g in crossing)
    assert report.leakage
