"""``medtl synth`` on real brain MRI (tiny: 2 folds of 30 images, 32 px, a few GAN steps) and training with
``data.synthetic`` on the full and the cached path (marked slow: ~1–2 min in all)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medtl import synth as synth_module
from medtl.cli import app
from medtl.config import parse_config
from medtl.data.synthetic import read_manifest, train_ids
from medtl.errors import ConfigError
from medtl.experiment import prepare_data, run_experiment
from medtl.synth import SynthOptions, fold_images, run_synth
from medtl.train import fold as fold_module

pytestmark = pytest.mark.slow


def tiny(root: Path, **over) -> dict:
    cfg = {"name": "syn", "data": {"source": "folder", "root": str(root), "positive_class": "yes", "image_size": 32,
                                   "max_per_class": 15, "split": {"method": "kfold", "folds": 2, "seed": 0}},
           "model": {"backbone": "small_cnn", "weights": "none"}, "transfer": {"strategy": "scratch"},
           "train": {"epochs": 1, "batch_size": 16, "lr": 0.001, "progress": False},
           "evaluate": {"bootstrap": 50, "report": False}}
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def image_bytes(images: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(img).tobytes() for img in images}


def test_each_generator_sees_exactly_its_folds_training_images(brain_mri: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               one_torch_thread: None) -> None:
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_train_gan = synth_module.train_gan

    def spy(images: np.ndarray, labels: np.ndarray, *args, **kwargs):
        seen.append((images.copy(), labels.copy()))
        return real_train_gan(images, labels, *args, **kwargs)

    monkeypatch.setattr(synth_module, "train_gan", spy)
    cfg = parse_config(tiny(brain_mri))
    summary = run_synth(cfg, tmp_path / "syn", SynthOptions(size=32, steps=2, width=8, quality=False), progress=False)
    data = prepare_data(cfg, progress=False)
    samples = data.loaded.table.samples
    assert len(seen) == len(data.folds) == 2
    for fold, (images, labels), made in zip(data.folds, seen, summary["folds"], strict=True):
        assert image_bytes(images) == image_bytes(fold_images(data, fold.train, 32))
        assert len(images) == len(fold.train) and labels.tolist() == data.labels[fold.train].tolist()
        held_out = np.concatenate([fold.val, fold.test])
        assert not image_bytes(images) & image_bytes(fold_images(data, held_out, 32))  # no val/test image
        assert made["train_ids"] == train_ids(samples, fold.train)
        assert not set(made["train_ids"]) & {samples[i].id for i in held_out}
    rows = read_manifest(tmp_path / "syn")
    assert len(rows) == summary["n_images"] == sum(len(f.train) for f in data.folds)  # per class: its real count
    assert all((tmp_path / "syn" / r["file"]).is_file() for r in rows)
    with pytest.raises(ConfigError, match="already holds a synthetic set"):
        run_synth(cfg, tmp_path / "syn", SynthOptions(size=32, steps=1, quality=False), progress=False)


@pytest.fixture(scope="module")
def synth_dir(brain_mri: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``medtl synth`` through the CLI, with the quality report."""
    out = tmp_path_factory.mktemp("synth") / "syn"
    config = out.parent / "exp.yaml"
    config.write_text(json.dumps(tiny(brain_mri)))  # JSON is YAML
    result = CliRunner().invoke(app, ["synth", str(config), "--out", str(out), "--size", "32", "--steps", "3",
                                      "--width", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "FD (Lite0 features)" in result.output
    return out


def test_synth_json_has_the_provenance_and_quality(synth_dir: Path) -> None:
    meta = json.loads((synth_dir / "synth.json").read_text())
    assert meta["class_names"] == ["no", "yes"] and len(meta["config_sha256"]) == 64
    assert meta["generator"]["size"] == 32 and meta["training"]["steps"] == 3 and meta["seed"] == 0
    assert [f["seed"] for f in meta["folds"]] == [0, 1] and meta["environment"]["torch"]
    for fold in meta["folds"]:
        q = fold["quality"]
        assert q["metric"] == "FD (Lite0 features)" and q["fd_synthetic_vs_train"] > 0
        assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1


class FitSpy:
    """Records the training and validation set sizes of every fit."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[tuple[int, int]] = []
        real = fold_module.fit

        def fit(module, train, val, *args, **kwargs):
            self.sizes.append((len(train), len(val) if val is not None else 0))
            return real(module, train, val, *args, **kwargs)

        monkeypatch.setattr(fold_module, "fit", fit)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_full_path_adds_synthetic_images_to_training_only(brain_mri: Path, synth_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    base = run_experiment(parse_config(tiny(brain_mri)), tmp_path / "base", progress=False)
    spy = FitSpy(monkeypatch)
    cfg = parse_config(tiny(brain_mri, data={"synthetic": {"dir": str(synth_dir), "fraction": 0.5}}))
    metrics = run_experiment(cfg, tmp_path / "mixed", progress=False)
    data = prepare_data(cfg, progress=False)
    expected = [int(np.floor(0.5 * len(f.train) + 0.5)) for f in data.folds]
    assert [f["n_synthetic"] for f in metrics["synthetic"]["per_fold"]] == expected
    assert spy.sizes == [(len(f.train) + n, len(f.val)) for f, n in zip(data.folds, expected, strict=True)]
    for f, made in zip(data.folds, metrics["synthetic"]["per_fold"], strict=True):  # the real class proportions
        real = np.bincount(data.labels[f.train], minlength=2) * 0.5
        assert np.abs(np.array(list(made["per_class"].values())) - real).max() <= 1
    assert "synthetic:" in (tmp_path / "mixed" / "config.yaml").read_text()
    assert metrics["n"] == base["n"] == 30  # evaluated on the real images alone
    for name in ("splits.csv", "predictions.csv", "val_predictions.csv"):
        if (tmp_path / "base" / name).is_file():
            mixed = read_csv(tmp_path / "mixed" / name)
            assert [r["id"] for r in mixed] == [r["id"] for r in read_csv(tmp_path / "base" / name)]
            assert not any("synth" in r["id"] for r in mixed)


def test_cached_path_caches_the_synthetic_images_separately(brain_mri: Path, synth_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    spy = FitSpy(monkeypatch)
    over = {"model": {"backbone": "tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0"},
            "transfer": {"strategy": "fine_tune", "unfreeze_from": "blocks.5"},
            "train": {"lr": 0.0003, "prefix_cache": True, "epochs": 1},
            "data": {"synthetic": {"dir": str(synth_dir), "fraction": 1.0}}}
    cfg = parse_config(tiny(brain_mri, **over))
    metrics = run_experiment(cfg, tmp_path / "run", progress=False)
    data = prepare_data(cfg, progress=False)
    assert spy.sizes == [(2 * len(f.train), len(f.val)) for f in data.folds]  # fraction 1: as many as real
    assert metrics["synthetic"]["n_synthetic"] == sum(len(f.train) for f in data.folds)
    # the real images (plain and mirrored for test-time augmentation), one block per fold's synthetic images
    assert len(list((tmp_path / "cache" / "activations").glob("*.npy"))) == 2 + len(data.folds)


def test_a_synthetic_folder_of_another_split_is_refused_before_training(brain_mri: Path, synth_dir: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spy = FitSpy(monkeypatch)
    cfg = parse_config(tiny(brain_mri, data={"synthetic": {"dir": str(synth_dir), "fraction": 0.5},
                                             "split": {"method": "kfold", "folds": 2, "seed": 1}}))
    with pytest.raises(ConfigError, match="made for a different split.*Rerun `medtl synth`"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert spy.sizes == []


@pytest.mark.parametrize("classifier", ["head", "logistic"])
def test_frozen_feature_paths_embed_the_synthetic_images_too(brain_mri: Path, synth_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, classifier: str) -> None:
    spy, heads = FitSpy(monkeypatch), []
    real_init_head = fold_module.init_head

    def init_head(head, feats, labels, *args, **kwargs):
        heads.append(len(labels))
        return real_init_head(head, feats, labels, *args, **kwargs)

    monkeypatch.setattr(fold_module, "init_head", init_head)
    over = {"model": {"backbone": "tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0"},
            "transfer": {"strategy": "feature_extraction", "classifier": classifier},
            "data": {"synthetic": {"dir": str(synth_dir), "fraction": 1.0}}}
    cfg = parse_config(tiny(brain_mri, **over))
    run_experiment(cfg, tmp_path / "run", progress=False)
    data = prepare_data(cfg, progress=False)
    if classifier == "head":  # the head on the feature bank, started from a linear probe on the same set
        assert spy.sizes == [(2 * len(f.train), len(f.val)) for f in data.folds]
        assert heads == [2 * len(f.train) for f in data.folds]
    else:  # logistic regression on train + validation features, plus the synthetic images
        assert heads == [2 * len(f.train) + len(f.val) for f in data.folds]
