"""Comparing run directories: metrics from metrics.json, paired tests only on the same images."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from medtl.cli import app
from medtl.config import REPO_ROOT
from medtl.errors import DataError
from medtl.evaluate.compare import (
    UnpairedError,
    comparison_csv,
    comparison_markdown,
    comparison_table,
    default_columns,
    format_metric,
    pair_runs,
)
from medtl.evaluate.metrics import METRIC_KEYS, delong_test, mcnemar_test, summarize
from medtl.rundir import compare_runs, mark_complete
from medtl.rundir import load_result as load_run


def write_run(run_dir: Path, ids: list[str], labels: np.ndarray, probs: np.ndarray,
              class_names: tuple[str, ...] = ("no", "yes"), threshold: float = 0.5,
              groups: list[str] | None = None) -> Path:
    """A run directory in the format of medtl.experiment (the files compare reads)."""
    positive = 1 if len(class_names) == 2 else None
    run_dir.mkdir(parents=True)
    metrics = summarize(labels, probs, ids, list(class_names), positive, threshold, n_boot=50, seed=0)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "model").mkdir()
    (run_dir / "model" / "model.json").write_text(json.dumps(
        {"class_names": list(class_names), "positive_index": positive, "threshold": threshold}))
    with open(run_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "fold", "label", "class_name", "group", *[f"prob_{c}" for c in class_names],
                         "pred"])
        for i, (id_, y, p) in enumerate(zip(ids, labels, probs, strict=True)):
            pred = (positive if p[positive] >= threshold else 1 - positive) if positive is not None else p.argmax()
            group = groups[i] if groups is not None else f"g{id_}"
            writer.writerow([id_, f"/data/{id_}.png", i % 2, int(y), class_names[y], group,
                             *[f"{v:.9g}" for v in p], class_names[pred]])
    mark_complete(run_dir)
    return run_dir


def binary_probs(rng: np.random.Generator, labels: np.ndarray, signal: float) -> np.ndarray:
    score = 1 / (1 + np.exp(-(signal * (labels - 0.5) + rng.normal(size=labels.size))))
    return np.stack([1 - score, score], axis=1)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=80)
    ids = [f"img{i:03d}" for i in range(80)]
    pa, pb = binary_probs(rng, labels, 3.0), binary_probs(rng, labels, 1.0)
    a = write_run(tmp_path / "a", ids, labels, pa)
    order = rng.permutation(80)  # the other run lists the same images in another order
    b = write_run(tmp_path / "b", [ids[i] for i in order], labels[order], pb[order], threshold=0.3)
    return a, b, labels, pa, pb


def test_paired_tests_equal_the_metrics_functions(pair) -> None:
    a, b, labels, pa, pb = pair
    rows = compare_runs([a, b])
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[0]["reason"] == "baseline" and rows[0]["p_auc_delong"] is None
    row = rows[1]
    assert row["paired_with"] == "a" and row["reason"] == ""
    assert row["p_auc_delong"] == pytest.approx(delong_test(labels, pb[:, 1], pa[:, 1])[2], rel=1e-9)
    pred_a = (pa[:, 1] >= 0.5).astype(int)
    pred_b = (pb[:, 1] >= 0.3).astype(int)  # McNemar uses each run's own threshold (its pred column)
    assert row["p_acc_mcnemar"] == pytest.approx(mcnemar_test(labels, pred_b, pred_a)[2], rel=1e-12)
    assert 0.0 <= row["p_auc_delong"] <= 1.0


def test_metric_columns_come_from_metrics_json(pair) -> None:
    a, b, *_ = pair
    rows = compare_runs([a, b], baseline=b)
    assert [r["run"] for r in rows] == ["a", "b"] and rows[1]["reason"] == "baseline"
    metrics = json.loads((a / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert rows[0][key] == metrics[key]["value"]
        assert [rows[0][f"{key}_lo"], rows[0][f"{key}_hi"]] == metrics[key]["ci95"]
    assert rows[0]["n"] == 80


def test_baseline_outside_the_list_is_added_first(pair) -> None:
    a, b, *_ = pair
    rows = compare_runs([b], baseline=a)
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[1]["paired_with"] == "a"


def test_runs_on_different_images_are_not_paired(tmp_path: Path, pair) -> None:
    a, _, labels, pa, _ = pair
    ids = [f"img{i:03d}" for i in range(80)]
    ids[:3] = ["other1", "other2", "other3"]
    c = write_run(tmp_path / "c", ids, labels, pa)
    row = compare_runs([a, c])[1]
    assert row["p_auc_delong"] is None and row["p_acc_mcnemar"] is None and row["paired_with"] is None
    assert "c and a were evaluated on different images" in row["reason"]
    assert "3 ids only in c, 3 only in a" in row["reason"]
    with pytest.raises(UnpairedError, match="different images"):
        pair_runs(load_run(a), load_run(c))


def test_runs_with_different_labels_are_not_paired(tmp_path: Path, pair) -> None:
    a, _, labels, pa, _ = pair
    flipped = labels.copy()
    flipped[:5] = 1 - flipped[:5]
    d = write_run(tmp_path / "d", [f"img{i:03d}" for i in range(80)], flipped, pa)
    row = compare_runs([a, d])[1]
    assert row["p_acc_mcnemar"] is None and "5 shared ids have different labels" in row["reason"]


def test_multiclass_has_mcnemar_but_no_delong(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60)
    names = ("glioma", "meningioma", "none")
    ids = [f"x{i}" for i in range(60)]
    pa = rng.dirichlet(np.ones(3), size=60)
    pb = rng.dirichlet(np.ones(3), size=60)
    pa[np.arange(60), labels] += 1.0
    pa /= pa.sum(axis=1, keepdims=True)
    a = write_run(tmp_path / "a", ids, labels, pa, names)
    b = write_run(tmp_path / "b", ids, labels, pb, names)
    row = compare_runs([a, b])[1]
    assert row["p_auc_delong"] is None and "DeLong not available for 3 classes" in row["reason"]
    expected = mcnemar_test(labels, pb.argmax(axis=1), pa.argmax(axis=1))[2]
    assert row["p_acc_mcnemar"] == pytest.approx(expected)


def test_not_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="metrics.json not found"):
        compare_runs([tmp_path])


def test_csv_markdown_and_rich_outputs(pair) -> None:
    a, b, *_ = pair
    rows = compare_runs([a, b])
    text = comparison_csv(rows, default_columns())
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == default_columns() and len(parsed) == 2
    assert parsed[0]["p_auc_delong"] == "" and float(parsed[1]["p_auc_delong"]) == pytest.approx(
        rows[1]["p_auc_delong"], rel=1e-5)
    md = comparison_markdown(rows)
    assert md.splitlines()[0].startswith("| run | n | Accuracy | Precision | Recall (sensitivity)")
    assert "| b | 80 |" in md and "against the baseline (a)" in md
    console = Console(record=True, width=250)
    console.print(comparison_table(rows))
    assert "p AUC (DeLong)" in console.export_text()


def test_cli_compare_writes_csv_and_markdown(pair, tmp_path: Path) -> None:
    a, b, *_ = pair
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--baseline", str(b), "--csv",
                                      str(tmp_path / "c.csv"), "--markdown", str(tmp_path / "c.md")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert [r["run"] for r in rows] == ["a", "b"] and rows[0]["paired_with"] == "b"
    assert "against the baseline (b)" in (tmp_path / "c.md").read_text()
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nope")])
    assert missing.exit_code == 2


def test_real_demo_runs_are_paired() -> None:
    runs = sorted((REPO_ROOT / "runs" / "demo").glob("demo-*"))
    if len(runs) < 2 or not all((r / "predictions.csv").is_file() for r in runs[:2]):
        pytest.skip("no demo runs in runs/demo (medtl demo writes them)")
    rows = compare_runs(runs[:2])
    assert rows[1]["paired_with"] == runs[0].name, rows[1]["reason"]
    assert 0.0 <= rows[1]["p_auc_delong"] <= 1.0 and 0.0 <= rows[1]["p_acc_mcnemar"] <= 1.0
    assert all(math.isfinite(r["auc"]) for r in rows)


def test_cli_compare_json_and_full_width_table(pair) -> None:
    a, b, *_ = pair
    result = CliRunner(env={"COLUMNS": "40"}).invoke(app, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["run"] for r in rows] == ["a", "b"] and rows[1]["paired_with"] == "a"
    assert 0.0 <= rows[1]["p_acc_mcnemar"] <= 1.0 and rows[0]["auc_lo"] <= rows[0]["auc"] <= rows[0]["auc_hi"]
    table = CliRunner(env={"COLUMNS": "40"}).invoke(app, ["compare", str(a), str(b)])
    assert table.exit_code == 0 and "…" not in table.stdout  # a pipe gets the whole table, never cut
    assert format_metric(rows[0], "auc") in table.stdout


def test_patients_with_several_images_get_the_clustered_auc_test(tmp_path: Path) -> None:
    from medtl.evaluate.stats import clustered_auc_test

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=90)
    ids = [f"img{i:03d}" for i in range(90)]
    groups = [f"patient:{i // 3}" for i in range(90)]
    pa, pb = binary_probs(rng, labels, 3.0), binary_probs(rng, labels, 1.0)
    a = write_run(tmp_path / "a", ids, labels, pa, groups=groups)
    b = write_run(tmp_path / "b", ids, labels, pb, groups=groups)
    rows = compare_runs([a, b])
    expected = clustered_auc_test(labels, pb[:, 1], pa[:, 1], groups)[2]
    assert rows[1]["p_auc_clustered"] == pytest.approx(expected, rel=1e-9)
    assert rows[1]["p_auc_delong"] != pytest.approx(expected)
    console = Console(record=True, width=300)
    console.print(comparison_table(rows))
    text = console.export_text()
    assert "p AUC (clustered by patient)" in text and "conditional on the trained models" in text
    assert "clustered by patient (Obuchowski)" in comparison_markdown(rows)


def test_one_image_per_patient_has_no_clustered_column(pair) -> None:
    a, b, *_ = pair
    rows = compare_runs([a, b])
    assert rows[1]["p_auc_clustered"] is None and "clustered" not in comparison_markdown(rows).split("\n")[0]


def test_cli_compare_groups_of_seeds(tmp_path: Path) -> None:
    from scipy import stats as sps

    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, size=60)
    ids = [f"img{i:03d}" for i in range(60)]
    aucs: dict[str, list[float]] = {"a": [], "b": []}
    for name, signal in (("a", 1.0), ("b", 2.5)):
        for seed in range(3):
            run = write_run(tmp_path / f"{name}-seed{seed}", ids, labels, binary_probs(rng, labels, signal))
            aucs[name].append(load_run(run).metrics["auc"]["value"])
    result = CliRunner().invoke(app, ["compare", "--group", ",".join(str(tmp_path / f"a-seed{s}") for s in range(3)),
                                      "--group", str(tmp_path / "b-seed*"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["config"] for r in rows] == ["a-seed", "b-seed"] and rows[1]["runs"] == 3
    assert rows[1]["p_ttest"] == pytest.approx(sps.ttest_rel(aucs["b"], aucs["a"]).pvalue)
    assert rows[1]["auc_sd"] == pytest.approx(np.std(aucs["b"], ddof=1))
    bad = CliRunner().invoke(app, ["compare", "--group", str(tmp_path / "a-seed0"),
                                   "--group", str(tmp_path / "b-seed*")])
    assert bad.exit_code == 2 and "same seeds in every group" in " ".join(bad.output.split())
