"""Studies: expansion, validation before running, resume, failures and the comparison outputs.

The fast tests replace run_experiment with a fake that writes real-format run directories with
synthetic predictions; one slow test runs a real 4-cell study on a few brain MRI images.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import medtl.study as study_mod
from medtl import rundir
from medtl.cli import app
from medtl.config import REPO_ROOT, ExperimentConfig, dump_config
from medtl.errors import ConfigError
from medtl.evaluate.metrics import delong_test, mcnemar_test, summarize
from medtl.study import expand_cells, load_study, parse_study, run_study

NAMES = ["no", "yes"]


def fake_predictions(cfg: ExperimentConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Deterministic synthetic predictions; the images depend only on data.max_per_class (like a subset)."""
    n = 2 * (cfg.data.max_per_class or 30)
    ids = [f"img{i:03d}" for i in range(n)]
    labels = np.arange(n) % 2
    seed = cfg.train.seed * 10 + len(cfg.transfer.strategy) + cfg.data.image_size
    noise = np.random.default_rng(seed).normal(size=n)
    score = 1 / (1 + np.exp(-(2.0 * (labels - 0.5) + noise)))
    return ids, labels, np.stack([1 - score, score], axis=1)


class FakeRun:
    """Stands in for run_experiment: counts calls, writes a real-format run directory, can fail."""

    def __init__(self, fail_when: str | None = None) -> None:
        self.calls: list[str] = []
        self.resumed: list[str] = []
        self.fail_when = fail_when

    def __call__(self, cfg: ExperimentConfig, out_dir: Path, progress: bool = True,
                 resume: bool = False) -> dict[str, Any]:
        out_dir = Path(out_dir)
        assert not rundir.is_complete(out_dir), "run_experiment refuses a finished run directory"
        self.calls.append(out_dir.name)
        if resume and out_dir.exists():
            self.resumed.append(out_dir.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
        if self.fail_when and self.fail_when in out_dir.name:
            raise RuntimeError(f"boom in {out_dir.name}")
        ids, labels, probs = fake_predictions(cfg)
        metrics = summarize(labels, probs, ids, NAMES, 1, cfg.evaluate.threshold, 50, 0)
        (out_dir / "model").mkdir()
        (out_dir / "model" / "model.json").write_text(json.dumps({"class_names": NAMES, "positive_index": 1}))
        with open(out_dir / "predictions.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "path", "fold", "label", "class_name", "group", "prob_no", "prob_yes", "pred"])
            for id_, y, p in zip(ids, labels, probs, strict=True):
                writer.writerow([id_, f"/d/{id_}", 0, y, NAMES[y], id_, p[0], p[1], NAMES[int(p[1] >= 0.5)]])
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
        rundir.mark_complete(out_dir)
        return metrics


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    runner = FakeRun()
    monkeypatch.setattr(study_mod, "run_experiment", runner)
    return runner


def base_experiment(root: Path) -> dict[str, Any]:
    return {"name": "tiny",
            "data": {"source": "folder", "root": str(root), "positive_class": "yes", "image_size": 32,
                     "split": {"method": "kfold", "folds": 2, "seed": 0}},
            "train": {"epochs": 1, "progress": False}, "evaluate": {"bootstrap": 50}}


def write_study(tmp_path: Path, **over: Any) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_experiment(tmp_path / "data")))
    spec = {"name": "s", "base": "base.yaml",
            "axes": {"strategy": {"fe": {"transfer.strategy": "feature_extraction"},
                                  "ft": {"transfer.strategy": "fine_tune"}},
                     "seed": {"key": "train.seed", "values": [0, 1]}},
            "baseline": {"strategy": "fe", "seed": "0"}} | over
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- expansion


def test_cells_are_the_product_of_the_axes_in_order(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    assert [c.name for c in study.cells] == ["fe-0", "fe-1", "ft-0", "ft-1"]
    assert study.cells[1].axes == {"strategy": "fe", "seed": "1"}
    assert study.baseline == "fe-0"
    cfg = study.cell("ft-1").config
    assert cfg.transfer.strategy == "fine_tune" and cfg.train.seed == 1 and cfg.name == "s-ft-1"
    assert cfg.data.root == (tmp_path / "data").resolve()
    assert expand_cells(study.axes)[0] == {"strategy": "fe", "seed": "0"}


def test_exclude_set_overrides_and_merged_blocks(tmp_path: Path) -> None:
    path = write_study(tmp_path, exclude=[{"strategy": "ft", "seed": ["1"]}], set={"train.epochs": 3},
                       axes={"strategy": {"fe": {"transfer.strategy": "feature_extraction"},
                                          "ft": {"transfer.strategy": "fine_tune"}},
                             "seed": {"key": "train.seed", "values": [0, 1]},
                             "folds": {"f3": {"data.split": {"folds": 3}}}})
    study = load_study(path, ["evaluate.bootstrap=7"])
    assert [c.name for c in study.cells] == ["fe-0-f3", "fe-1-f3", "ft-0-f3"]
    cfg = study.cell("fe-1-f3").config
    assert cfg.train.epochs == 3 and cfg.evaluate.bootstrap == 7
    assert cfg.data.split.folds == 3 and cfg.data.split.method == "kfold", "a mapping merges into the block"


def test_the_earlier_axis_wins_on_a_shared_key(tmp_path: Path) -> None:
    axes = {"strategy": {"scratch": {"transfer.strategy": "scratch", "model.backbone": "small_cnn",
                                     "model.weights": "none"},
                         "fe": {"transfer.strategy": "feature_extraction"}},
            "backbone": {"lite0": {"model.backbone": "tf_efficientnet_lite0",
                                   "model.weights": "packaged:efficientnet_lite0"},
                         "lite1": {"model.backbone": "tf_efficientnet_lite1",
                                   "model.weights": "packaged:efficientnet_lite1"}}}
    study = load_study(write_study(tmp_path, axes=axes, exclude=[{"strategy": "scratch", "backbone": "lite1"}],
                                   baseline="scratch-lite0"))
    assert [c.name for c in study.cells] == ["scratch-lite0", "fe-lite0", "fe-lite1"]
    assert study.cell("scratch-lite0").config.model.backbone == "small_cnn"
    assert study.cell("fe-lite1").config.model.weights == "packaged:efficientnet_lite1"


# --------------------------------------------------------------------------- validation


def test_invalid_cells_are_named_with_did_you_mean_before_anything_runs(tmp_path: Path, fake: FakeRun) -> None:
    axes = {"strategy": {"fe": {"transfer.strategy": "feature_extration"}, "ft": {"transfer.stratgy": "x"},
                         "ok": {"transfer.strategy": "fine_tune"}},
            "seed": {"key": "train.seed", "values": [0, 1]}}
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, axes=axes, baseline="ok-0"))
    text = str(err.value)
    assert "4 of 6 cells have an invalid config" in text
    assert "cells fe-0, fe-1:" in text and "Did you mean 'feature_extraction'?" in text
    assert "cells ft-0, ft-1:" in text and "transfer.stratgy" in text and "Did you mean 'strategy'?" in text
    assert fake.calls == []


@pytest.mark.parametrize(("over", "message"), [
    ({"axis": {}}, "unknown key 'axis'. Did you mean 'axes'?"),
    ({"baseline": "fe-2"}, "baseline 'fe-2' is not a cell. Did you mean 'fe-1'?"),
    ({"baseline": {"strategy": "fe"}}, "matches 2 cells (fe-0, fe-1)"),
    ({"exclude": [{"strategie": "fe"}]}, "no axis 'strategie'. Did you mean 'strategy'?"),
    ({"exclude": [{"seed": "7"}]}, "axis 'seed' has no label '7'"),
    ({"exclude": [{"seed": ["0", "1"]}]}, "'exclude' removes every cell"),
    ({"axes": {"seed": {"key": "train.seed", "values": [1, "1"]}}}, "two values give the same label"),
    ({"axes": {"lr": {"key": "train.lr", "values": ["1/2"]}}}, "label '1/2' may contain only"),
    ({"axes": {"seed": [0, 1]}}, "axis 'seed': expected a mapping"),
    ({"axes": {"x": {"a": {"data.image_size.w": 3}}}, "baseline": "a"}, "'image_size' holds a value"),
    ({"name": "my study"}, "'name' is required and may contain only"),
    ({"base": "missing.yaml"}, "missing.yaml not found"),
])
def test_study_errors_name_the_problem(tmp_path: Path, over: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_study(write_study(tmp_path, **over))
    assert message in str(err.value)


def test_inline_base_and_set_from_the_command_line(tmp_path: Path) -> None:
    tree = {"name": "inline", "base": base_experiment(Path("data")), "axes": {"size": {"key": "data.image_size",
                                                                                          "values": [32, 48]}}}
    study = parse_study(tree, tmp_path, overrides=["train.epochs=2"])
    assert [c.config.data.image_size for c in study.cells] == [32, 48]
    assert study.cells[0].config.train.epochs == 2
    assert study.cells[0].config.data.root == (tmp_path / "data").resolve()
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_study(tree, tmp_path, overrides=["train.epochs"])
    written = tmp_path / "elsewhere" / "study.yaml"
    written.parent.mkdir()
    written.write_text(yaml.safe_dump(study.spec))
    assert [c.config for c in load_study(written).cells] == [c.config for c in study.cells]


# --------------------------------------------------------------------------- running and resuming


def test_run_writes_state_comparison_and_markdown(tmp_path: Path, fake: FakeRun) -> None:
    out = tmp_path / "out"
    result = run_study(load_study(write_study(tmp_path)), out, progress=False)
    assert fake.calls == ["fe-0", "fe-1", "ft-0", "ft-1"] and result.failed == []
    state = json.loads((out / "study.json").read_text())
    assert state["name"] == "s" and state["baseline"] == "fe-0"
    assert state["cells"][2] == {"name": "ft-0", "axes": {"strategy": "ft", "seed": "0"}, "run_dir": "cells/ft-0",
                                 "status": "done"}
    rows = read_csv(out / "comparison.csv")
    metric_cols = [f"{m}{s}" for m in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
                   for s in ("", "_lo", "_hi")]
    assert list(rows[0]) == ["cell", "strategy", "seed", "n", *metric_cols, "p_auc_delong", "p_acc_mcnemar",
                             "paired_with", "reason", "p_auc_clustered", "p_auc_holm"]
    assert [r["cell"] for r in rows] == ["fe-0", "fe-1", "ft-0", "ft-1"]
    assert rows[0]["reason"] == "baseline" and rows[0]["p_auc_delong"] == ""
    assert all(r["paired_with"] == "fe-0" for r in rows[1:])
    # The p-values are those of medtl.evaluate.metrics on the cells' predictions.
    ids, y, base = fake_predictions(load_study(write_study(tmp_path)).cell("fe-0").config)
    _, _, other = fake_predictions(load_study(write_study(tmp_path)).cell("ft-1").config)
    assert float(rows[3]["p_auc_delong"]) == pytest.approx(delong_test(y, other[:, 1], base[:, 1])[2], rel=1e-5)
    assert float(rows[3]["p_acc_mcnemar"]) == pytest.approx(
        mcnemar_test(y, other[:, 1] >= 0.5, base[:, 1] >= 0.5)[2], rel=1e-5)
    md = (out / "comparison.md").read_text()
    assert md.startswith("# Study s") and "| strategy | seed | n | Accuracy |" in md and "| ft | 1 |" in md
    assert not (out / "learning_curve.csv").exists()
    again = load_study(out / "study.yaml")  # the resolved study file runs again as it is
    assert [c.config for c in again.cells] == [c.config for c in result.study.cells]


def test_resume_runs_only_unfinished_cells(tmp_path: Path, fake: FakeRun) -> None:
    path, out = write_study(tmp_path), tmp_path / "out"
    run_study(load_study(path), out, progress=False)
    fake.calls.clear()
    result = run_study(load_study(path), out, progress=False)
    assert fake.calls == [] and len(result.skipped) == 4 and len(result.rows) == 4
    (out / "cells" / "ft-0" / rundir.COMPLETE).unlink()  # interrupted: no completion marker
    (out / "cells" / "ft-0" / "stale.txt").write_text("left over")
    run_study(load_study(path), out, progress=False)
    assert fake.calls == ["ft-0"]
    assert fake.resumed == ["ft-0"], "an unfinished cell of the same config is continued, not restarted"


def changed_ft_axes() -> dict[str, Any]:
    """The default axes of :func:`write_study` with the ``ft`` cells' learning rate changed."""
    return {"strategy": {"fe": {"transfer.strategy": "feature_extraction"},
                         "ft": {"transfer.strategy": "fine_tune", "train.lr": 0.001}},
            "seed": {"key": "train.seed", "values": [0, 1]}}


def test_identical_cells_of_another_study_are_reused(tmp_path: Path, fake: FakeRun) -> None:
    first = tmp_path / "first"
    run_study(load_study(write_study(tmp_path)), first, progress=False)
    fake.calls.clear()
    axes = changed_ft_axes()
    path, second = write_study(tmp_path, name="other", axes=axes, reuse=[str(first)]), tmp_path / "second"
    result = run_study(load_study(path), second, progress=False)
    assert fake.calls == ["ft-0", "ft-1"], "the fe cells are the first study's, by config (the names differ)"
    assert (second / "cells" / "fe-1" / "REUSED_FROM").read_text().strip() == str((first / "cells" / "fe-1").resolve())
    assert len(result.rows) == 4
    fake.calls.clear()
    run_study(load_study(path), second, progress=False)
    assert fake.calls == [], "reused cells count as done on the next run"
    with pytest.raises(ConfigError, match="'reuse' must be"):
        load_study(write_study(tmp_path, reuse=[3]))


def test_changed_cells_are_re_run(tmp_path: Path, fake: FakeRun) -> None:
    out = tmp_path / "out"
    run_study(load_study(write_study(tmp_path)), out, progress=False)
    fake.calls.clear()
    axes = changed_ft_axes()
    run_study(load_study(write_study(tmp_path, axes=axes)), out, progress=False)
    assert fake.calls == ["ft-0", "ft-1"]
    fake.calls.clear()
    run_study(load_study(write_study(tmp_path, axes=axes), ["train.epochs=2"]), out, progress=False)
    assert len(fake.calls) == 4


def test_a_failing_cell_is_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = FakeRun(fail_when="ft-0")
    monkeypatch.setattr(study_mod, "run_experiment", failing)
    path, out = write_study(tmp_path), tmp_path / "out"
    result = run_study(load_study(path), out, progress=False)
    assert failing.calls == ["fe-0", "fe-1", "ft-0", "ft-1"] and result.failed == ["ft-0"]
    cells = {c["name"]: c for c in json.loads((out / "study.json").read_text())["cells"]}
    assert cells["ft-0"]["status"] == "failed" and cells["ft-0"]["error"] == "RuntimeError: boom in ft-0"
    assert cells["ft-1"]["status"] == "done"
    assert [r["cell"] for r in read_csv(out / "comparison.csv")] == ["fe-0", "fe-1", "ft-1"]
    assert "ft-0 (failed)" in (out / "comparison.md").read_text()
    fixed = FakeRun()
    monkeypatch.setattr(study_mod, "run_experiment", fixed)
    assert run_study(load_study(path), out, progress=False).failed == [] and fixed.calls == ["ft-0"]


def test_cells_on_other_images_are_not_paired(tmp_path: Path, fake: FakeRun) -> None:
    axes = {"subset": {"small": {"data.max_per_class": 20}, "full": {}}}
    run_study(load_study(write_study(tmp_path, axes=axes, baseline="full")), tmp_path / "out", progress=False)
    rows = {r["cell"]: r for r in read_csv(tmp_path / "out" / "comparison.csv")}
    assert rows["small"]["p_auc_delong"] == "" and rows["small"]["paired_with"] == ""
    assert "small and full were evaluated on different images" in rows["small"]["reason"]


def test_baseline_without_results_leaves_p_blank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study_mod, "run_experiment", FakeRun(fail_when="fe-0"))
    run_study(load_study(write_study(tmp_path)), tmp_path / "out", progress=False)
    rows = read_csv(tmp_path / "out" / "comparison.csv")
    assert len(rows) == 3 and all(r["p_acc_mcnemar"] == "" for r in rows)
    assert rows[0]["reason"] == "baseline cell fe-0 has no results (failed)"


def test_learning_curve(tmp_path: Path, fake: FakeRun) -> None:
    axes = {"strategy": {"ft": {"transfer.strategy": "fine_tune"}, "fe": {"transfer.strategy": "feature_extraction"}},
            "train_fraction": {"key": "data.train_fraction", "values": [0.5, 0.1, 1.0]}}
    out = tmp_path / "out"
    run_study(load_study(write_study(tmp_path, axes=axes, baseline="ft-1.0")), out, progress=False)
    rows = read_csv(out / "learning_curve.csv")
    assert list(rows[0])[:8] == ["series", "train_fraction", "auc", "auc_lo", "auc_hi", "accuracy", "accuracy_lo",
                                 "accuracy_hi"]
    assert [(r["series"], r["train_fraction"]) for r in rows] == [
        ("fe", "0.1"), ("fe", "0.5"), ("fe", "1"), ("ft", "0.1"), ("ft", "0.5"), ("ft", "1")]
    assert all(0.0 <= float(r["auc"]) <= 1.0 for r in rows)


def test_only_and_dry_run(tmp_path: Path, fake: FakeRun) -> None:
    path, out = write_study(tmp_path), tmp_path / "out"
    result = run_study(load_study(path), out, progress=False, dry_run=True)
    assert fake.calls == [] and not out.exists() and [c.status for c in result.study.cells] == ["pending"] * 4
    run_study(load_study(path), out, progress=False, only=["ft-1"])
    assert fake.calls == ["ft-1"]
    states = [c["status"] for c in json.loads((out / "study.json").read_text())["cells"]]
    assert states == ["pending", "pending", "pending", "done"]
    with pytest.raises(ConfigError, match="no cell 'ft-2'. Did you mean 'ft-1'"):
        run_study(load_study(path), out, only=["ft-2"])


def test_cli_study(tmp_path: Path, fake: FakeRun) -> None:
    path, out = write_study(tmp_path), tmp_path / "out"
    runner = CliRunner()
    dry = runner.invoke(app, ["study", str(path), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "fe-0 (baseline)" in dry.output and fake.calls == []
    result = runner.invoke(app, ["study", str(path), "--out", str(out), "--quiet", "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "Study s (95% CI; p against fe-0)" in result.output and len(fake.calls) == 4
    bad = runner.invoke(app, ["study", str(path), "--set", "train.epoch=2", "--dry-run"])
    assert bad.exit_code == 2 and "Did you mean 'epochs'" in bad.output


def test_cli_study_exits_1_when_a_cell_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study_mod, "run_experiment", FakeRun(fail_when="fe-1"))
    result = CliRunner().invoke(app, ["study", str(write_study(tmp_path)), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 1 and "fe-1" in result.output


# --------------------------------------------------------------------------- shipped study files


@pytest.mark.parametrize(("name", "cells", "baseline"), [
    ("brain_mri_strategies", 13, "scratch_cnn-lite0"),
    ("chest_xray_strategies", 5, "fe"),
    ("chest_xray_learning_curve", 10, "ft-1.0"),
])
def test_shipped_studies_validate(name: str, cells: int, baseline: str) -> None:
    study = load_study(REPO_ROOT / "experiments" / "studies" / f"{name}.yaml")
    assert len(study.cells) == cells and study.baseline == baseline
    if name == "brain_mri_strategies":
        scratch = study.cell("scratch_cnn-lite0").config
        assert (scratch.model.backbone, scratch.model.weights) == ("small_cnn", "none")
        assert study.cell("fe_svm-lite2").config.model.backbone == "tf_efficientnet_lite2"
        assert study.cell("gradual-lite0").config.transfer.schedule[1].unfreeze_from == "blocks.5"


# --------------------------------------------------------------------------- real end to end


@pytest.mark.slow
def test_real_four_cell_study_on_brain_mri(brain_mri: Path, tmp_path: Path, one_torch_thread: None) -> None:
    base = {"name": "tiny", "data": {"source": "folder", "root": str(brain_mri), "positive_class": "yes",
                                     "image_size": 32, "max_per_class": 15,
                                     "split": {"method": "kfold", "folds": 2, "seed": 0}},
            "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "lr": 0.001, "progress": False},
            "evaluate": {"bootstrap": 100, "tta": "none"}}
    tree = {"name": "tiny-study", "base": base, "baseline": "fe-0",
            "axes": {"strategy": {"fe": {"transfer.strategy": "feature_extraction", "train.epochs": 5},
                                  "ft": {"transfer.strategy": "fine_tune"}},
                     "seed": {"key": "train.seed", "values": [0, 1]}}}
    result = run_study(parse_study(tree, tmp_path), tmp_path / "study", progress=False)
    assert result.failed == [], [c.error for c in result.study.cells]
    rows = read_csv(tmp_path / "study" / "comparison.csv")
    assert len(rows) == 4 and all(math.isfinite(float(r["auc"])) for r in rows)
    assert all(r["paired_with"] == "fe-0" for r in rows[1:]), [r["reason"] for r in rows]
    assert (tmp_path / "study" / "cells" / "ft-1" / "predictions.csv").is_file()
    again = run_study(parse_study(tree, tmp_path), tmp_path / "study", progress=False)
    assert again.ran == [] and len(again.skipped) == 4, "the stored configs of real runs match: nothing re-runs"


class FittingRun(FakeRun):
    """A fake run that also trains a tiny model with Lightning's progress bar on, as real cells do."""

    def __call__(self, cfg: ExperimentConfig, out_dir: Path, progress: bool = True,
                 resume: bool = False) -> dict[str, Any]:
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset

        from medtl.config import TrainConfig
        from medtl.train.engine import ClassifierModule, fit

        train_cfg = TrainConfig(epochs=1, device="cpu", num_workers=0, progress=progress)
        data = TensorDataset(torch.randn(16, 2), torch.arange(16) % 2)
        fit(ClassifierModule(nn.Linear(2, 2), train_cfg, 1), data, data, train_cfg, seed=0, progress=progress)
        return super().__call__(cfg, out_dir, progress)


def test_a_study_with_progress_bars_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's rich progress bar pops the console's live stack when a fit starts; a study-wide
    rich display around the cells then failed on exit (IndexError) before writing the comparison."""
    monkeypatch.setattr("medtl.study.run_experiment", FittingRun())
    out = tmp_path / "out"
    result = run_study(load_study(write_study(tmp_path)), out, progress=True)
    assert len(result.rows) == 4 and not result.failed
    assert (out / "comparison.csv").is_file()


def test_seed_axis_gives_mean_sd_and_a_paired_test_over_seeds_and_holm(tmp_path: Path, fake: FakeRun) -> None:
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    out = tmp_path / "out"
    run_study(load_study(write_study(tmp_path)), out, progress=False)
    auc = {c: rundir.read_metrics(out / "cells" / c)["auc"]["value"] for c in ("fe-0", "fe-1", "ft-0", "ft-1")}
    seeds = read_csv(out / "seeds.csv")
    assert [r["config"] for r in seeds] == ["fe", "ft"] and seeds[1]["paired_with"] == "fe"
    assert float(seeds[1]["auc_mean"]) == pytest.approx((auc["ft-0"] + auc["ft-1"]) / 2, rel=1e-5)
    expected = sps.ttest_rel([auc["ft-0"], auc["ft-1"]], [auc["fe-0"], auc["fe-1"]]).pvalue
    assert float(seeds[1]["p_ttest"]) == pytest.approx(expected, rel=1e-4)
    md = (out / "comparison.md").read_text()
    assert "## Over seeds" in md and "conditional on the trained models" in md
    rows = read_csv(out / "comparison.csv")
    holm = multipletests([float(r["p_auc_delong"]) for r in rows[1:]], method="holm")[1]
    assert [float(r["p_auc_holm"]) for r in rows[1:]] == pytest.approx(list(holm), rel=1e-4)
