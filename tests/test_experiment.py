"""Real end-to-end runs on small subsets of the shared datasets (marked slow: ~1–2 min in all)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medtl import artifact
from medtl.cli import app
from medtl.config import load_config, parse_config
from medtl.data.images import open_image, to_array
from medtl.errors import DataError, MedtlError, TrainingError
from medtl.evaluate.calibration import apply_temperature
from medtl.experiment import run_experiment
from medtl.predict import evaluate_run, predict_files, repredict_own
from medtl.train.inference import predict_probs

pytestmark = pytest.mark.slow

KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")


def brain_config(root: Path, **over) -> dict:
    cfg = {
        "name": "e2e",
        "data": {"source": "folder", "root": str(root), "positive_class": "yes", "image_size": 128,
                 "max_per_class": 45, "split": {"method": "kfold", "folds": 3, "seed": 0}},
        "transfer": {"strategy": "feature_extraction"},
        "train": {"optimizer": "adamw", "lr": 0.003, "epochs": 40, "warmup_epochs": 0, "progress": False},
        "evaluate": {"bootstrap": 200, "report": False},  # the report has its own tests (tests/report)
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(scope="module")
def fe_run(brain_mri: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fe") / "run"
    metrics = run_experiment(parse_config(brain_config(brain_mri)), out, progress=False)
    return out, metrics


def test_feature_extraction_learns_real_brain_mri(fe_run: tuple[Path, dict]) -> None:
    _, metrics = fe_run
    assert metrics["n"] == 90
    assert metrics["auc"]["value"] > 0.7, metrics["auc"]
    assert metrics["accuracy"]["value"] > 0.7
    lo, hi = metrics["auc"]["ci95"]
    assert lo <= metrics["auc"]["value"] <= hi


def test_run_directory_contents(fe_run: tuple[Path, dict]) -> None:
    out, _ = fe_run
    for name in ("config.yaml", "splits.csv", "history.csv", "metrics.json", "predictions.csv", "run.log",
                 "model/model.json", "model/fold0.safetensors", "model/fold2.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in KEYS:
        assert set(metrics[key]) == {"value", "ci95"}
    assert {"n", "protocol", "per_fold"} <= set(metrics)
    assert metrics["protocol"]["folds"] == 3 and metrics["protocol"]["split"] == "kfold"
    assert len(metrics["per_fold"]["auc"]["values"]) == 3
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 90 and {r["fold"] for r in rows} == {"0", "1", "2"}
    audit = metrics["label_issues"]  # the label audit of the out-of-fold predictions
    assert audit["of"] == 90 and audit["file"] == "label_issues.csv"
    with open(out / "label_issues.csv") as fh:
        flagged = list(csv.DictReader(fh))
    assert len(flagged) == audit["n"]
    by_id = {r["id"]: r for r in rows}
    for row in flagged:  # each flagged image is one whose held-out prediction disagrees with its label
        assert row["predicted"] == by_id[row["id"]]["pred"] or float(row["prob_given"]) < 0.5
        assert row["given"] == by_id[row["id"]]["class_name"]
    with open(out / "splits.csv") as fh:
        manifest = list(csv.DictReader(fh))
    for fold in ("0", "1", "2"):
        roles: dict[str, str] = {}
        for row in (r for r in manifest if r["fold"] == fold):
            assert roles.setdefault(row["group"], row["role"]) == row["role"], "group crosses roles"


def test_same_config_same_metrics(brain_mri: Path, fe_run: tuple[Path, dict], tmp_path: Path) -> None:
    again = run_experiment(parse_config(brain_config(brain_mri)), tmp_path / "again", progress=False)
    for key in KEYS:
        assert again[key] == fe_run[1][key]


def test_evaluate_recomputes_from_predictions(fe_run: tuple[Path, dict]) -> None:
    out, metrics = fe_run
    again = evaluate_run(out)
    assert again["auc"]["value"] == pytest.approx(metrics["auc"]["value"], abs=1e-6)


def test_evaluate_with_another_tta_predicts_the_run_images_again(fe_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, metrics = fe_run
    same = evaluate_run(out, tta=metrics["protocol"]["tta"])  # the saved fold models reproduce predictions.csv
    for key in KEYS:
        assert same[key]["value"] == pytest.approx(metrics[key]["value"], abs=1e-6), key
    other = evaluate_run(out, tta="none")
    assert other["n"] == metrics["n"] and other["auc"]["value"] != metrics["auc"]["value"]
    with pytest.raises(MedtlError, match="hflip_zoom"):
        evaluate_run(out, tta="mirror")
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    with open(moved / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    rows[3]["id"] = "yes/gone.jpg"  # an image no longer in the data
    with open(moved / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match="1 of .* not in .*gone.jpg"):
        evaluate_run(moved, tta="hflip")


def test_predict_files_and_folders_keeps_bad_files(fe_run: tuple[Path, dict], brain_mri: Path,
                                                   tmp_path: Path) -> None:
    out, _ = fe_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("Y1.jpg", "Y10.jpg"):
        shutil.copy(brain_mri / "yes" / name, folder / name)
    (folder / "broken.jpg").write_bytes((brain_mri / "yes" / "Y1.jpg").read_bytes()[:300])
    rows = predict_files(out, [folder, brain_mri / "no" / "no 10.jpg"])
    assert len(rows) == 4
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert broken and broken[0]["error"]
    good = [r for r in rows if not r["error"]]
    assert all(abs(r["prob_no"] + r["prob_yes"] - 1) < 1e-5 for r in good)


def test_fine_tune_cli_end_to_end(brain_mri: Path, tmp_path: Path) -> None:
    cfg = brain_config(brain_mri, data={"image_size": 96, "max_per_class": 30, "augment": {"hflip": True}},
                       transfer={"strategy": "fine_tune", "unfreeze_from": "blocks.5"},
                       train={"epochs": 2, "lr": 0.001, "batch_size": 16})
    config = tmp_path / "ft.yaml"
    import yaml

    config.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run"), "--quiet",
                                 "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3, "one epoch per fold after --set train.epochs=1"
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(brain_mri / "yes" / "Y1.jpg")])
    assert result.exit_code == 0, result.output
    assert "prob_yes" in result.output


def test_corrupt_images_are_skipped_and_counted(brain_mri: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for cls in ("yes", "no"):
        (root / cls).mkdir(parents=True)
        for src in sorted((brain_mri / cls).iterdir())[:20]:
            shutil.copy(src, root / cls / src.name)
    (root / "yes" / "zz_truncated.jpg").write_bytes((brain_mri / "yes" / "Y1.jpg").read_bytes()[:500])
    cfg = brain_config(root, data={"max_per_class": None, "image_size": 64})
    metrics = run_experiment(parse_config(cfg), tmp_path / "run", progress=False)
    assert metrics["data"]["n_bad"] == 1 and "zz_truncated" in metrics["data"]["bad"][0]["file"]
    assert metrics["n"] == 40
    cfg["data"]["max_bad_fraction"] = 0.01
    with pytest.raises(DataError, match="max_bad_fraction"):
        run_experiment(parse_config(cfg), tmp_path / "run2", progress=False)


def test_nan_loss_stops_with_clear_error(brain_mri: Path, tmp_path: Path) -> None:
    cfg = brain_config(brain_mri, data={"image_size": 64, "max_per_class": 20, "augment": {"hflip": True}},
                       transfer={"strategy": "fine_tune", "unfreeze_from": "blocks.6"},
                       train={"epochs": 3, "lr": 1e30, "optimizer": "sgd", "batch_size": 8})
    with pytest.raises(TrainingError, match="lr"):
        run_experiment(parse_config(cfg), tmp_path / "run", progress=False)


def test_evaluate_on_other_data_with_saved_models(fe_run: tuple[Path, dict], brain_mri: Path,
                                                  tmp_path: Path) -> None:
    from medtl.config import DataConfig

    out, _ = fe_run
    data = DataConfig(source="folder", root=brain_mri, max_per_class=15, split={"seed": 7})
    metrics = evaluate_run(out, data, tmp_path / "eval.json")
    assert metrics["n"] == 30 and (tmp_path / "eval.json").is_file()
    assert metrics["auc"]["value"] > 0.6


# ------------------------------------------------------------ strategies end to end (tiny, 64 px)


def tiny_config(root: Path, **over) -> dict:
    cfg = brain_config(root, **over)
    cfg["data"] = {**cfg["data"], "image_size": 64, "max_per_class": 15, "split": {"method": "kfold", "folds": 2}}
    cfg["train"] = {**cfg["train"], "epochs": 3, "batch_size": 16}
    return cfg


@pytest.mark.parametrize("transfer", [
    {"strategy": "feature_extraction", "classifier": "logistic"},
    {"strategy": "feature_extraction", "classifier": "svm"},
    {"strategy": "gradual", "schedule": [{"epoch": 0, "unfreeze_from": "head"},
                                         {"epoch": 1, "unfreeze_from": "blocks.6", "lr": 0.0003}]},
    {"strategy": "truncated", "truncate_at": "blocks.4"},
])
def test_strategy_runs_and_predicts(brain_mri: Path, tmp_path: Path, transfer: dict) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(brain_mri, transfer=transfer)
    if transfer["strategy"] != "feature_extraction":  # whole-network updates want a fine-tuning learning rate
        cfg["train"]["lr"] = 0.0003
    metrics = run_experiment(parse_config(cfg), out, progress=False)
    assert metrics["n"] == 30 and metrics["model"]["strategy"] == transfer["strategy"]
    assert metrics["auc"]["value"] > 0.6, metrics["auc"]
    rows = predict_files(out, [brain_mri / "yes" / "Y1.jpg"])
    assert rows[0]["error"] == "" and rows[0]["pred"] in ("no", "yes")
    if transfer["strategy"] == "truncated":
        report = metrics["model"]["truncation"]
        assert report["parameters_truncated"] < report["parameters_full"] / 2


def test_scratch_small_cnn_and_collapse_guard(brain_mri: Path, tmp_path: Path) -> None:
    cfg = tiny_config(brain_mri, transfer={"strategy": "scratch"}, model={"backbone": "small_cnn", "weights": "none"})
    metrics = run_experiment(parse_config(cfg), tmp_path / "run", progress=False)
    assert metrics["model"]["backbone"] == "small_cnn"
    collapsed = (abs(metrics["accuracy"]["value"] - 0.5) < 0.01 and metrics["auc"]["value"] < 0.6) or min(
        metrics["sensitivity"]["value"], metrics["specificity"]["value"]) < 0.1
    assert bool(metrics["warnings"]) == collapsed


def test_multi_stage_lineage(brain_mri: Path, datasets: Path, tmp_path: Path) -> None:
    bridge = {"name": "pneumonia", "data": {"source": "medmnist", "path": str(datasets / "medmnist/pneumoniamnist.npz"),
                                            "image_size": 64, "max_per_class": 40, "split": {"method": "predefined"}},
              "train": {"epochs": 1, "progress": False, "batch_size": 16}}
    cfg = tiny_config(brain_mri, transfer={"strategy": "fine_tune"}, stages=[bridge])
    out = tmp_path / "run"
    metrics = run_experiment(parse_config(cfg), out, progress=False)
    stage_dir = out / "stages" / "1-pneumonia"
    assert (stage_dir / "metrics.json").is_file()
    assert metrics["stages"][0]["stage"] == "pneumonia"
    assert metrics["model"]["weights"].startswith("file:") and "1-pneumonia" in metrics["model"]["weights"]
    lineage = json.loads((out / "model" / "model.json").read_text())["lineage"]
    assert [entry["stage"] for entry in lineage][-2:] == ["e2e-pneumonia", "e2e"]
    assert lineage[-2]["splits_sha256"] == metrics["stages"][0]["splits_sha256"]
    assert lineage[-1]["weights_sha256"]  # the hash of the bridge model the target stage started from


def test_operating_point_and_temperature_come_from_validation(brain_mri: Path, tmp_path: Path) -> None:
    cfg = tiny_config(brain_mri, evaluate={"threshold_rule": "youden", "temperature_scaling": True, "report": False})
    out = tmp_path / "run"
    metrics = run_experiment(parse_config(cfg), out, progress=False)
    meta = json.loads((out / "model" / "model.json").read_text())
    rule = metrics["protocol"]["threshold_rule"]
    assert rule["rule"] == "youden" and meta["threshold"] == metrics["protocol"]["threshold"] == rule["threshold"]
    assert meta["temperature"] == metrics["protocol"]["temperature"] > 0
    with open(out / "val_predictions.csv") as fh:
        val = list(csv.DictReader(fh))
    with open(out / "splits.csv") as fh:
        n_val = sum(r["role"] == "val" for r in csv.DictReader(fh))
    assert len(val) == n_val > 0
    # the stored decision is the validation-chosen threshold applied to the (temperature-scaled) probabilities
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all((float(r["prob_yes"]) >= meta["threshold"]) == (r["pred"] == "yes") for r in rows)


def assert_oof_probs_are_the_saved_models_tta(out: Path, rows: int = 6) -> None:
    """predictions.csv holds each image's own fold model's probabilities under the run's TTA."""
    models, meta = artifact.load_fold_models(out)
    pre = meta.preprocess
    with open(out / "predictions.csv") as fh:
        table = list(csv.DictReader(fh))
    for row in table[:rows // 2] + table[-rows // 2:]:  # images of the first and the last fold
        image = to_array(open_image(row["path"]), pre.image_size, pre.color, pre.resize, pre.crop)[None]
        probs = np.mean([predict_probs(m, meta.normalizer(), image, np.arange(1), tta=meta.tta, fast=False)
                         for m in models[int(row["fold"])]], axis=0)  # the fold's ensemble members
        if meta.temperature:  # fitted on the members' mean, applied to it
            probs = apply_temperature(probs, meta.temperature)
        assert probs[0, 1] == pytest.approx(float(row["prob_yes"]), abs=1e-4), row["id"]


def test_prefix_cache_matches_full_training_without_augmentation(brain_mri: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    results = {}
    for cached in (False, True):
        cfg = tiny_config(brain_mri, transfer={"strategy": "fine_tune", "unfreeze_from": "blocks.5"},
                          train={"lr": 0.0003, "prefix_cache": cached, "cache_dtype": "float32"},
                          evaluate={"tta": "hflip_zoom"})
        results[cached] = run_experiment(parse_config(cfg), tmp_path / f"run{cached}", progress=False)
    for key in KEYS:
        assert results[True][key]["value"] == pytest.approx(results[False][key]["value"], abs=1e-3), key
    assert len(list((tmp_path / "cache" / "activations").glob("*.npy"))) == 4  # the image + 3 test-time views
    assert results[True]["protocol"]["tta"] == "hflip_zoom"
    assert_oof_probs_are_the_saved_models_tta(tmp_path / "runTrue")


def test_ensemble_members_are_saved_and_averaged_and_member_zero_is_the_single_model(brain_mri: Path,
                                                                                    tmp_path: Path) -> None:
    from safetensors.torch import load_file

    runs = {}
    for members in (1, 2):  # head training on the feature bank; temperature fitted on the members' mean
        cfg = tiny_config(brain_mri, train={"ensemble": members, "epochs": 4}, evaluate={"temperature_scaling": True})
        runs[members] = run_experiment(parse_config(cfg), tmp_path / f"e{members}", progress=False)
    cfg = tiny_config(brain_mri, train={"seed": 1000, "epochs": 4})  # member 1's seed as a single run
    run_experiment(parse_config(cfg), tmp_path / "s1000", progress=False)
    model_dir = tmp_path / "e2" / "model"
    meta = artifact.load_meta(tmp_path / "e2")
    assert meta.folds == ["fold0.safetensors", "fold0-m1.safetensors", "fold1.safetensors", "fold1-m1.safetensors"]
    single, first, second = (load_file(str(p)) for p in (tmp_path / "e1" / "model" / "fold1.safetensors",
                                                             model_dir / "fold1.safetensors",
                                                             model_dir / "fold1-m1.safetensors"))
    assert all(torch.equal(single[k], first[k]) for k in single)  # member 0 trains with the single model's seed
    assert not torch.equal(first["head.0.weight"], second["head.0.weight"])  # member 1 with another seed
    seeded = load_file(str(tmp_path / "s1000" / "model" / "fold1.safetensors"))
    assert all(torch.equal(seeded[k], second[k]) for k in seeded)  # member m = a run with train.seed + 1000·m
    assert runs[2]["ensemble"]["members"] == 2 and len(runs[2]["ensemble"]["epochs_trained"][0]) == 2
    assert "ensemble" not in runs[1]
    with open(tmp_path / "e2" / "history.csv") as fh:
        assert {r["member"] for r in csv.DictReader(fh)} == {"0", "1"}
    assert_oof_probs_are_the_saved_models_tta(tmp_path / "e2")
    again = evaluate_run(tmp_path / "e2", tta=runs[2]["protocol"]["tta"])
    assert again["auc"]["value"] == pytest.approx(runs[2]["auc"]["value"], abs=1e-6)
    _, probs, _ = repredict_own(tmp_path / "e2", artifact.load_meta(tmp_path / "e2"))  # members, then temperature
    with open(tmp_path / "e2" / "predictions.csv") as fh:
        saved = np.array([[float(r["prob_no"]), float(r["prob_yes"])] for r in csv.DictReader(fh)])
    # float32 sums in another order (the run's feature bank vs whole-model batches): 1.2e-5 seen with 1 thread
    np.testing.assert_allclose(probs, saved, atol=3e-5)


def test_feature_bank_averages_the_tta_views(brain_mri: Path, tmp_path: Path) -> None:
    cfg = tiny_config(brain_mri, evaluate={"tta": "hflip_zoom"})  # frozen, no augmentation: the feature bank
    metrics = run_experiment(parse_config(cfg), tmp_path / "run", progress=False)
    assert metrics["auc"]["value"] > 0.6
    assert_oof_probs_are_the_saved_models_tta(tmp_path / "run")


def test_prefix_cache_with_augmented_views_learns(brain_mri: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(brain_mri, data={"augment": {"hflip": True, "rotate": 10}},
                      transfer={"strategy": "gradual", "schedule": [{"epoch": 0, "unfreeze_from": "head"},
                                                                    {"epoch": 1, "unfreeze_from": "blocks.5"}]},
                      train={"lr": 0.0003, "prefix_cache": True, "cache_views": 3})
    metrics = run_experiment(parse_config(cfg), tmp_path / "run", progress=False)
    assert metrics["auc"]["value"] > 0.6
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4  # views 0, 1, 2 and the mirrored view 0


@pytest.mark.parametrize("train", [
    {"lr": 0.0003, "mixup": 0.4, "cutmix": 1.0},  # whole network on images
    {"lr": 0.0003, "cutmix": 1.0, "prefix_cache": True, "cache_views": 2},  # suffix on cached activation maps
])
def test_mixup_and_cutmix_train_end_to_end(brain_mri: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           train: dict) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    runs = {}
    for name, mix in (("plain", {k: v for k, v in train.items() if k not in ("mixup", "cutmix")}), ("mixed", train)):
        cfg = tiny_config(brain_mri, data={"augment": {"hflip": True}},
                          transfer={"strategy": "fine_tune", "unfreeze_from": "blocks.5"}, train=mix)
        runs[name] = run_experiment(parse_config(cfg), tmp_path / name, progress=False)
    # 30 images at 64 px for 3 epochs: whether mixing helps is measured on real runs (docs/results.md);
    # here it must train, predict every image and change the training (learning is tested on blobs).
    assert runs["mixed"]["n"] == 30 and 0.0 <= runs["mixed"]["auc"]["value"] <= 1.0
    loss = {name: [float(r["train_loss"]) for r in csv.DictReader(
        (tmp_path / name / "history.csv").read_text().splitlines())] for name in runs}
    assert all(np.isfinite(loss["mixed"])) and len(loss["mixed"]) == len(loss["plain"])
    assert loss["mixed"] != loss["plain"]  # the mixing reached the training steps


def test_cutmix_on_a_frozen_feature_head_is_a_clear_error(brain_mri: Path, tmp_path: Path) -> None:
    cfg = tiny_config(brain_mri, train={"cutmix": 1.0})  # feature extraction: the head trains on pooled features
    with pytest.raises(TrainingError, match="train.cutmix needs image-shaped input"):
        run_experiment(parse_config(cfg), tmp_path / "run", progress=False)


@pytest.mark.parametrize("train", [{"loss": "focal", "focal_gamma": 1.5, "class_weights": "balanced"},
                                   {"sampler": "balanced", "label_smoothing": 0.1}])
def test_focal_loss_and_balanced_sampler_train_end_to_end_and_are_recorded(brain_mri: Path, tmp_path: Path,
                                                                           train: dict) -> None:
    cfg = tiny_config(brain_mri, transfer={"strategy": "scratch"}, model={"backbone": "small_cnn", "weights": "none"},
                      train={"lr": 0.003, **train})
    # about 2:1 (5% of the 155 positives kept, 15 negatives), with augmented copies of the training positives:
    # the sampler reads the labels of the training set with its copies
    cfg["data"]["strategy"] = {"subsample": {"yes": 0.05}, "expand": {"yes": 1}}
    out = tmp_path / "run"
    metrics = run_experiment(parse_config(cfg), out, progress=False)
    resolved = load_config(out / "config.yaml").train
    assert {key: getattr(resolved, key) for key in train} == train
    assert 20 <= metrics["n"] < 25 and 0.0 <= metrics["auc"]["value"] <= 1.0
    loss = [float(r["train_loss"]) for r in csv.DictReader((out / "history.csv").read_text().splitlines())]
    assert len(loss) == 3 * 2 and all(np.isfinite(loss))  # 3 epochs of each of the 2 folds


def test_train_folds_keeps_only_the_last_folds_models_and_trims_between_folds(monkeypatch: pytest.MonkeyPatch,
                                                                                  tmp_path: Path) -> None:
    """Earlier folds' networks are saved, then let go: memory must not grow with the number of folds."""
    from types import SimpleNamespace

    from medtl import experiment
    from medtl.train.engine import FitResult
    from medtl.train.fold import FoldOutcome

    class Trainer:
        spec = object()

        def __init__(self, *args, **kwargs) -> None:
            pass

        def train_fold(self, fold, save) -> FoldOutcome:
            fits = [FitResult(torch.nn.Linear(2, 2)) for _ in range(2)]
            return FoldOutcome(fold, np.zeros((1, 2)), fits[0], 0.0, members=fits)

    trims = []
    monkeypatch.setattr(experiment, "FoldTrainer", Trainer)
    monkeypatch.setattr(experiment, "release_memory", lambda: trims.append(1) or True)
    cfg = parse_config(brain_config(tmp_path), "t")
    folds = [SimpleNamespace(index=i, train=[], val=[], test=[]) for i in range(3)]
    outcomes, _ = experiment.train_folds(cfg, SimpleNamespace(folds=folds), tmp_path, False, writes=False)
    assert [o.fit.model is None for o in outcomes] == [True, True, False]
    assert all(m.model is None for o in outcomes[:-1] for m in o.members)
    assert all(m.model is not None for m in outcomes[-1].members)
    assert len(trims) == 3
