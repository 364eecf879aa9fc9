"""Domain adaptation (``adapt:``): DANN and Deep CORAL while training, TENT after; target labels never read."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from medtl import rundir
from medtl.config import parse_config
from medtl.errors import ConfigError
from medtl.evaluate.compare import comparison_table, default_columns
from medtl.evaluate.table import adaptation_note, markdown_table
from medtl.experiment import run_experiment
from medtl.predict import evaluate_run
from medtl.train.adapt import TRANSDUCTIVE, GradientReversal, TargetRows, coral_loss, dann_lambda

SIZE = 32


# ---------------------------------------------------------------- a tiny two-domain dataset


def _image(rng: np.random.Generator, label: int, shift: float) -> np.ndarray:
    """A noisy 32 px image: class 1 has a bright square; ``shift`` brightens the whole image (another scanner)."""
    img = rng.normal(90 + shift, 25, (SIZE, SIZE))
    if label:
        img[8:20, 8:20] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(folder: Path, name: str, arr: np.ndarray) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / name)
    return (folder / name).name


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/manifest.csv`` (train: source domain, test: shifted domain), ``data/permuted.csv`` (the test
    labels shuffled), ``target/unlabelled.csv`` (paths only), ``loose/`` (images without class folders)."""
    root = tmp_path_factory.mktemp("domains")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        split, label = ("train" if i < 32 else "test"), i % 2
        name = _write(root / "data" / "img", f"{i:03d}.png", _image(rng, label, 0 if split == "train" else 60))
        rows.append({"path": f"img/{name}", "label": "yes" if label else "no", "patient_id": f"p{i}", "split": split})
    for file, table in (("manifest.csv", rows), ("permuted.csv", _permute_test(rows, rng))):
        with open(root / "data" / file, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(table)
    names = [_write(root / "target" / "t", f"{i}.png", _image(rng, i % 2, 60)) for i in range(10)]
    (root / "target" / "unlabelled.csv").write_text("path\n" + "".join(f"t/{n}\n" for n in names))
    for i in range(6):
        _write(root / "loose" / ("a" if i < 3 else "b"), f"{i}.png", _image(rng, i % 2, 60))
    return root


def _permute_test(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    """The same rows with the test labels corrupted (shuffled, then every other one flipped)."""
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    labels = [rows[i]["label"] for i in rng.permutation(test)]
    out = [dict(r) for r in rows]
    for k, i in enumerate(test):
        out[i]["label"] = labels[k] if k % 2 else ("no" if labels[k] == "yes" else "yes")
    return out


def config(root: Path, adapt: dict | None = None, csv_name: str = "manifest.csv", **over: dict) -> dict:
    tree = {
        "name": "adapt",
        "data": {"source": "csv", "csv": str(root / "data" / csv_name), "positive_class": "yes", "image_size": SIZE,
                 "cache": False, "split": {"method": "predefined", "val_fraction": 0.25, "seed": 0}},
        "model": {"backbone": "tf_efficientnet_lite0", "weights": "none"},
        "transfer": {"strategy": "fine_tune", "unfreeze_from": "blocks.5", "bn": "train", "head_init": "zero"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.001, "warmup_epochs": 0, "progress": False},
        "evaluate": {"bootstrap": 20, "report": False, "label_issues": False, "tta": "none"},
    }
    for key, value in over.items():
        tree[key] = {**tree[key], **value}
    if adapt is not None:
        tree["adapt"] = adapt
    return tree


def run(tmp_path: Path, name: str, tree: dict) -> tuple[Path, dict]:
    out = tmp_path / name
    return out, run_experiment(parse_config(tree), out, progress=False)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / rundir.MODEL_DIR / "fold0.safetensors"))


def probs(out: Path, which: str = rundir.PREDICTIONS) -> np.ndarray:
    with open(out / which) as fh:
        return np.array([[float(r["prob_no"]), float(r["prob_yes"])] for r in csv.DictReader(fh)])


# ---------------------------------------------------------------- units


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    GradientReversal.apply(x, 0.7).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.7))


def test_coral_loss_is_the_scaled_covariance_distance() -> None:
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) * 3
    expected = ((np.cov(s.T) - np.cov(t.T)) ** 2).sum() / (4 * 36)
    assert coral_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-5)
    assert coral_loss(torch.tensor(s), torch.tensor(s)).item() == pytest.approx(0.0, abs=1e-9)


def test_dann_schedule_goes_from_zero_towards_one() -> None:
    assert dann_lambda(0.0) == 0.0
    assert 0.98 < dann_lambda(1.0) < 1.0
    assert dann_lambda(0.2) < dann_lambda(0.5)


def test_target_draw_depends_only_on_seed_and_step() -> None:
    rows = TargetRows(np.arange(20 * 4, dtype=np.float32).reshape(20, 4), np.arange(5, 15), images=False)
    a, b, c = rows.draw(3, 7, 4), rows.draw(3, 7, 4), rows.draw(3, 8, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a[:, 0].int().tolist()) <= {4 * r for r in range(5, 15)}  # only the fold's rows
    assert len(rows.draw(0, 0, 100)) == 10  # never more than the target has


def test_adapted_runs_say_so_in_tables() -> None:
    metrics = {"n": 4, "auc": {"value": 0.9, "ci95": [0.8, 1.0]},
               "protocol": {"adaptation": {"statement": TRANSDUCTIVE, "method": "coral", "target": "test"}}}
    assert adaptation_note(metrics) == f"{TRANSDUCTIVE} (coral, target test)"
    assert adaptation_note({"protocol": {}}) is None
    assert TRANSDUCTIVE in markdown_table([("r", metrics)])
    assert TRANSDUCTIVE not in markdown_table([("r", {"n": 4})])
    assert "protocol" in default_columns()
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(comparison_table([{"run": "r", "n": 4, "reason": "baseline", "protocol": adaptation_note(metrics)}]))
    assert TRANSDUCTIVE in console.export_text()


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(("adapt", "over", "key"), [
    ({"method": "mmd"}, {}, "adapt.method"),
    ({"method": "coral", "weight": 0}, {}, "adapt.weight"),
    ({"method": "coral", "target": "train"}, {}, "adapt.target"),
    ({"method": "dann"}, {"transfer": {"strategy": "feature_extraction", "unfreeze_from": None}}, "adapt.method"),
    ({"method": "coral"}, {"train": {"strategy": "ddp", "devices": 2, "batch_size": 8}}, "adapt.method"),
    ({"method": "tent", "tent": {"steps": 2}}, {}, "steps"),
])
def test_bad_adapt_config_names_the_key(tmp_path: Path, adapt: dict, over: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(config(tmp_path, adapt, **over))


def test_adapt_is_off_by_default_and_recorded_when_on(tmp_path: Path) -> None:
    assert parse_config(config(tmp_path)).adapt is None
    cfg = parse_config(config(tmp_path, {"method": "tent"}))
    assert cfg.adapt.target == "test" and cfg.adapt.tent.epochs == 1 and cfg.adapt.weight == 1.0
    from medtl.config import dump_config

    assert "adapt:\n  method: tent" in dump_config(cfg)


def test_a_target_block_without_images_is_refused(domains: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    tree = config(domains, {"method": "coral", "target": {"source": "folder", "root": str(tmp_path / "empty")}})
    with pytest.raises(ConfigError, match="adapt.target"):
        run(tmp_path, "run", tree)


# ---------------------------------------------------------------- runs (a few seconds each on a CPU)


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True])
def test_alignment_changes_the_model_and_lists_its_targets(domains: Path, tmp_path: Path, cached: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    train = {"prefix_cache": cached, "cache_dtype": "float32"}
    base, _ = run(tmp_path, "base", config(domains, train=train))
    for method in ("dann", "coral"):
        out, metrics = run(tmp_path, method, config(domains, {"method": method}, train=train))
        changed = [k for k, v in weights(out).items() if not torch.equal(v, weights(base)[k])]
        assert any(k.startswith("backbone.blocks.5") for k in changed), method  # the features moved
        assert metrics["protocol"]["adaptation"]["statement"] == TRANSDUCTIVE
        assert metrics["protocol"]["adaptation"]["method"] == method
        with open(out / rundir.ADAPT_TARGETS) as fh:
            listed = list(csv.DictReader(fh))
        with open(out / rundir.PREDICTIONS) as fh:
            tested = [r["id"] for r in csv.DictReader(fh)]
        assert [r["id"] for r in listed] == tested and {r["fold"] for r in listed} == {"0"}
        with open(out / rundir.HISTORY) as fh:
            assert all(float(r["domain_loss"]) >= 0 for r in csv.DictReader(fh))
    assert "domain_loss" not in (base / rundir.HISTORY).read_text()


@pytest.mark.slow
@pytest.mark.parametrize(("method", "cached"), [("dann", False), ("coral", True), ("tent", False), ("tent", True)])
def test_test_labels_are_never_read(domains: Path, tmp_path: Path, method: str, cached: bool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    outs = [run(tmp_path, name, config(domains, {"method": method}, csv_name=name + ".csv",
                                       train={"prefix_cache": cached}))[0]
            for name in ("manifest", "permuted")]
    with open(outs[0] / rundir.PREDICTIONS) as a, open(outs[1] / rundir.PREDICTIONS) as b:
        labels = [[r["label"] for r in csv.DictReader(f)] for f in (a, b)]
    assert labels[0] != labels[1]  # the corruption reached the run
    first, second = weights(outs[0]), weights(outs[1])
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert np.array_equal(probs(outs[0]), probs(outs[1]))


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True])
def test_tent_moves_only_batchnorm_affine_parameters(domains: Path, tmp_path: Path, cached: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    train = {"prefix_cache": cached}
    base, _ = run(tmp_path, "base", config(domains, train=train))
    out, metrics = run(tmp_path, "tent", config(domains, {"method": "tent", "tent": {"epochs": 2, "lr": 0.01}},
                                                  train=train))
    before, after = weights(base), weights(out)
    from medtl.models.network import create_model

    model, _ = create_model("tf_efficientnet_lite0", "none", 2)
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    affine = {k for k in changed if k.rsplit(".", 1)[0] in norms and k.endswith((".weight", ".bias"))}
    stats = {k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert affine and changed == affine | stats
    assert all(k.startswith(("backbone.blocks.5", "backbone.blocks.6", "backbone.bn2")) for k in changed)
    assert np.array_equal(probs(out, rundir.VAL_PREDICTIONS), probs(base, rundir.VAL_PREDICTIONS))  # un-adapted
    assert not np.array_equal(probs(out), probs(base))
    assert "validation" in metrics["protocol"]["adaptation"]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "target"), [
    ("coral", {"source": "csv", "csv": "target/unlabelled.csv"}),  # a CSV with no label column at all
    ("tent", {"source": "folder", "root": "loose"}),  # subfolders are not classes
])
def test_unlabelled_target_block(domains: Path, tmp_path: Path, method: str, target: dict) -> None:
    key = "csv" if "csv" in target else "root"
    target = target | {key: str(domains / target[key])}
    out, metrics = run(tmp_path, "run", config(domains, {"method": method, "target": target}))
    with open(out / rundir.ADAPT_TARGETS) as fh:
        listed = list(csv.DictReader(fh))
    assert len(listed) == (10 if method == "coral" else 6)
    assert all(Path(r["path"]).is_file() for r in listed)
    assert metrics["protocol"]["adaptation"]["target"] == str(domains / target.get("csv", target.get("root")))
    assert json.loads((out / rundir.METRICS).read_text())["protocol"]["adaptation"]["statement"] == TRANSDUCTIVE
    assert evaluate_run(out)["protocol"]["adaptation"]["statement"] == TRANSDUCTIVE  # `medtl evaluate` says so too


@pytest.mark.slow
def test_tent_without_trained_batchnorm_is_refused(domains: Path, tmp_path: Path) -> None:
    tree = config(domains, {"method": "tent"}, transfer={"unfreeze_from": "head"})
    with pytest.raises(ConfigError, match="adapt.method 'tent'"):
        run(tmp_path, "run", tree)


@pytest.mark.slow
def test_kill_9_after_an_epoch_then_resume_gives_the_uninterrupted_dann_run(domains: Path, tmp_path: Path) -> None:
    """The target draw comes from (seed, step) and the domain classifier is in the epoch checkpoint."""
    spec = tmp_path / "exp.yaml"
    spec.write_text(yaml.safe_dump(config(domains, {"method": "dann"}, train={"epochs": 3})))
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-c", "from medtl.cli import app; app()", "train", str(spec), "--quiet", "--out"]

    def train(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([*cli, str(out), *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    whole_run = train(tmp_path / "whole")
    assert whole_run.wait(600) == 0, whole_run.stderr.read()[-3000:]
    proc = train(tmp_path / "run")
    checkpoint = tmp_path / "run" / rundir.CHECKPOINTS / "fold0-m0.ckpt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first epoch checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(tmp_path / "run", "--resume")
    assert resumed.wait(600) == 0, resumed.stderr.read()[-3000:]
    assert "resuming from" in (tmp_path / "run" / rundir.LOG).read_text()
    whole, again = weights(tmp_path / "whole"), weights(tmp_path / "run")
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    assert np.array_equal(probs(tmp_path / "whole"), probs(tmp_path / "run"))


def test_tent_warns_when_trained_layers_kept_imagenet_batchnorm_statistics(caplog: pytest.LogCaptureFixture) -> None:
    from medtl.config import TentConfig
    from medtl.train.adapt import tent

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(2, 2))
    rows = TargetRows(np.random.default_rng(0).normal(size=(6, 1, 1, 1)).astype(np.float32), np.arange(6),
                      images=False)
    for frozen in (False, True):
        net.freeze_bn_stats = frozen
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medtl.train.adapt"):
            tent(net, rows, lambda x: x, TentConfig(epochs=1), 3, seed=0)
        assert ("transfer.bn 'frozen'" in caplog.text) == frozen
