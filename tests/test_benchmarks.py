"""Tests of benchmarks/run.py (the performance suite) and of `medtl cache`.

The fast tests check the JSON's shape, the goals, the Markdown and the subprocess measurements
with stand-ins for `medtl demo` / `medtl study`; the slow one runs (a)-(d) on a few tiny images.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import cases, run  # noqa: E402  (benchmarks/ lives beside src/, not in the package)

KEYS = ["fe_cache_speedup", "cv_cache_ratio", "cutoff_speedup", "ft_throughput_ratio", "demo_seconds",
        "demo_peak_rss_gb", "study_seconds"]
MACHINE_KEYS = ["cpu_model", "logical_cpus", "usable_cpus", "torch", "torch_threads", "load_average_start"]


def _check_shape(result: dict) -> None:
    assert set(KEYS) <= set(result)
    assert set(MACHINE_KEYS) <= set(result["machine"])
    assert result["settings"]["image_size"] > 0
    for key in KEYS:
        e = result[key]
        assert {"value", "unit", "goal", "met"} <= set(e), key
        assert (e["goal"] is None) == (key == "study_seconds")


# ---------------------------------------------------------------- fast


def test_goals_and_met_flags() -> None:
    assert cases.entry("fe_cache_speedup", 12.0)["met"] is True
    assert cases.entry("fe_cache_speedup", 9.9)["met"] is False
    assert cases.entry("cv_cache_ratio", 1.3)["met"] is False
    assert cases.entry("demo_peak_rss_gb", 3.2)["met"] is True
    assert cases.entry("study_seconds", 1000.0)["met"] is None
    assert cases.entry("cutoff_speedup", None)["met"] is None
    assert cases.entry("ft_throughput_ratio", 1.0)["goal"] == "≥ 0.95×"


def test_only_selects_letters_and_rejects_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.parse_args(["--only", "b, a"]).letters == "ab"
    assert run.parse_args(["--quick"]).letters == "abcdsw"
    assert run.parse_args([]).letters == "abcdefghswi"
    assert run.parse_args(["--only", "stream"]).letters == "s" == run.parse_args(["--only", "S"]).letters
    assert cases.BENCHMARKS["s"].keys == ("stream_rss_ratio", "stream_throughput_ratio")
    assert cases.BENCHMARKS["w"].keys == ("study_parallel_ratio",)
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "a,z"])
    assert "use comma-separated letters" in capsys.readouterr().err


def test_settings_overrides_keep_the_preset_name() -> None:
    settings = run.make_settings(run.parse_args(["--quick", "--image-size", "64", "--max-per-class", "5"]))
    assert (settings.suite, settings.image_size, settings.fe_max_per_class, settings.ft_max_per_class) == \
        ("quick", 64, 5, 5)
    assert settings.ft_epochs == cases.PRESETS["quick"].ft_epochs


def test_dry_run_writes_every_key(brain_mri: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dry.json"
    rc = run.main(["--dry-run", "--only", "a,b,c,d,e", "--data", str(brain_mri.parent), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    _check_shape(result)
    assert result["dry_run"] is True and result["selected"] == list("abcde")
    assert result["cutoff_speedup"]["plan"]["cut"]["unfreeze_from"] == "blocks.5"
    assert 0.0 < result["cutoff_speedup"]["plan"]["frozen_parameter_fraction"] < 1.0
    assert result["demo_seconds"]["plan"]["command"][1] == "demo"
    assert "not selected" in result["study_seconds"]["skipped"]


def test_dry_run_of_ddp_scaling_plans_one_and_two_processes(brain_mri: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--dry-run", "--only", "i", "--data", str(brain_mri.parent)]) == 0
    result = json.loads(capsys.readouterr().out)
    plan = result["ddp_cpu_scaling"]["plan"]
    assert plan["processes"] == [1, 2] and plan["command"][1] == "train"
    assert result["ddp_cpu_scaling"]["goal"] is None  # reported, no goal
    assert cases.ddp_yaml(cases.Context(cases.PRESETS["quick"], brain_mri.parent, Path(".")), 2)["train"][
        "strategy"] == "ddp"


def test_epoch_ends_are_read_from_run_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("2026-12-01 10:00:00,000 INFO medtl.experiment: fold 1/1: train 10\n"
                   "2026-12-01 10:00:01,500 INFO medtl.train.engine: epoch 0: train_loss=1\n"
                   "2026-12-01 10:00:04,000 INFO medtl.train.engine: epoch 1: train_loss=1\n")
    ends = cases.log_epoch_ends(log)
    assert len(ends) == 2 and ends[1] - ends[0] == pytest.approx(2.5)


def test_missing_data_is_an_error_entry_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run.main(["--dry-run", "--only", "a", "--data", str(tmp_path)])
    result = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert "brain MRI not found" in result["fe_cache_speedup"]["error"]


def test_exit_code_with_check() -> None:
    result = {"fe_cache_speedup": cases.entry("fe_cache_speedup", 5.0)}
    assert run.exit_code(result, check=False) == 0
    assert run.exit_code(result, check=True) == 1
    result["cv_cache_ratio"] = cases.entry("cv_cache_ratio", None, error="boom")
    assert run.exit_code(result, check=False) == 1


def test_run_measured_reports_wall_time_and_peak_rss(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; b = b'x' * 300_000_000; time.sleep(0.5); print(len(b))"]
    m = cases.run_measured(cmd, dict(os.environ), tmp_path / "log.txt")
    assert m.returncode == 0 and m.log_tail.strip() == "300000000"
    assert 0.3e9 <= m.peak_rss_bytes < 2e9
    assert m.seconds > 0


FAKE_MEDTL = """\
#!{python}
import json, pathlib, sys, time
time.sleep(0.3)  # long enough for the benchmark to read the process's peak RSS from /proc
command, out = sys.argv[1], pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
if command == "demo":
    for name in ("demo-feature-extraction-x", "demo-fine-tune-x"):
        (out / name).mkdir(parents=True)
        (out / name / "metrics.json").write_text(json.dumps({{"seconds": 1.5}}))
else:
    cells = ["fe", "ft"]
    for cell in cells:
        (out / "cells" / cell).mkdir(parents=True)
        (out / "cells" / cell / "metrics.json").write_text(json.dumps({{"seconds": 2.0}}))
    (out / "study.json").write_text(json.dumps({{"cells": [{{"name": c, "status": "done"}} for c in cells]}}))
sys.exit({rc})
"""


def _fake_medtl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rc: int = 0) -> None:
    fake = tmp_path / "bin" / "medtl"
    fake.parent.mkdir()
    fake.write_text(FAKE_MEDTL.format(python=sys.executable, rc=rc))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(cases, "medtl_executable", lambda: str(fake))


def _context(tmp_path: Path, **settings: object) -> cases.Context:
    data = tmp_path / "data"
    for folder in ("brain_tumor_mri/yes", "brain_tumor_mri/no"):
        (data / folder).mkdir(parents=True)
    (tmp_path / "work").mkdir()
    return cases.Context(cases.with_overrides(cases.PRESETS["full"], **settings), data, tmp_path / "work")


def test_demo_figures_come_from_the_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_medtl(tmp_path, monkeypatch)
    found = cases.measure_e(_context(tmp_path))
    seconds, rss = found["demo_seconds"], found["demo_peak_rss_gb"]
    assert seconds["met"] is True and 0 < seconds["value"] < 60
    assert rss["met"] is True and 0 < rss["value"] < 1
    assert seconds["run_seconds"] == {"demo-feature-extraction-x": 1.5, "demo-fine-tune-x": 1.5}


def test_a_failing_demo_raises_with_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_medtl(tmp_path, monkeypatch, rc=2)
    with pytest.raises(cases.BenchmarkError, match="exited with 2"):
        cases.measure_e(_context(tmp_path))


def test_study_figure_counts_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_medtl(tmp_path, monkeypatch)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n")
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\nbase: {{data: {{source: csv, csv: {manifest}}}}}\n"
                     "axes:\n  strategy:\n    fe: {transfer.strategy: feature_extraction}\n"
                     "    ft: {transfer.strategy: fine_tune}\n")
    found = cases.measure_f(_context(tmp_path, study=str(study)))["study_seconds"]
    assert found["cells_measured"] == 2 and found["cells"] == {"fe": "done", "ft": "done"}
    assert found["cell_seconds"] == {"fe": 2.0, "ft": 2.0}
    assert found["met"] is None and "error" not in found


def _measured_result() -> dict:
    timing = {"steady_epoch_seconds": 10.0}
    raw = {
        "fe_cache_speedup": {"medtl_seconds": 10.0, "naive_seconds": 120.0,
                             "test_auc": {"medtl": 0.9, "naive": None}},
        "cv_cache_ratio": {"folds": 5, "cv_seconds": 11.0, "one_fold_seconds": 10.0},
        "cutoff_speedup": {"measured": "fine-tune from blocks.5 WITH train.prefix_cache", "runs": {"full": timing},
                           "speedup_without_cache": 1.3},
        "ft_throughput_ratio": {"medtl_images_per_s": 9.8, "bare_images_per_s": 10.0},
        "demo_seconds": {"wall_seconds": 250.0},
        "demo_peak_rss_gb": {"peak_rss_bytes": 2.5e9},
        "study_seconds": {"cells_measured": 3, "peak_rss_gb": 3.0},
    }
    values = dict(zip(KEYS, [12.0, 1.1, 2.5, 0.98, 250.0, 2.5, 3000.0], strict=True))
    result = {k: cases.entry(k, values[k], benchmark="x", **raw[k]) for k in KEYS}
    machine = {"cpu_model": "CPU", "usable_cpus": 2, "logical_cpus": 2, "memory_gb": 8, "torch": "2",
               "torch_threads": 2, "medtl_commit": "abc", "medtl_dirty": True}
    return result | {"machine": machine, "suite": "full", "suite_seconds": 4000.0, "command": "run.py",
                     "warnings": ["busy"]}


def test_markdown_has_a_row_per_figure() -> None:
    text = run.to_markdown(_measured_result())
    for key in KEYS:
        assert f"`{key}`" in text
    assert "| 12.00× | yes |" in text and "| 3000 s | — |" in text and "| 2.50 GB | yes |" in text
    assert "medtl 10.0 s vs naive 120.0 s; test AUC 0.900 vs n/a" in text
    assert "uncommitted changes" in text and "Warning: busy" in text


def test_from_json_renders_a_stored_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = tmp_path / "r.json"
    stored.write_text(json.dumps(_measured_result()))
    assert run.main(["--from-json", str(stored), "--markdown"]) == 0
    assert "`cutoff_speedup`" in capsys.readouterr().out


# ---------------------------------------------------------------- medtl cache


def test_cache_cli_info_and_clear(tmp_path: Path) -> None:
    from medtl.cli import app
    from medtl.transfer.prefix_cache import ActivationCache

    runner = CliRunner(env={"MEDTL_CACHE": str(tmp_path), "COLUMNS": "300"})
    result = runner.invoke(app, ["cache", "info"])
    assert result.exit_code == 0 and "entries: 0" in result.output
    cache = ActivationCache(tmp_path / "activations")
    cache.get_or_compute({"backbone": "b", "cut": "blocks.5"}, np.zeros((3, 4, 4, 1), np.uint8), np.arange(3),
                         lambda images, idx, view: [np.ones((len(idx), 8), np.float32)])
    result = runner.invoke(app, ["cache", "info", "--entries"])
    assert result.exit_code == 0, result.output
    assert "entries: 1" in result.output and "blocks.5" in result.output
    assert str(tmp_path / "activations") in result.output.replace("\n", "")
    result = runner.invoke(app, ["cache", "clear"], input="n\n")
    assert result.exit_code == 1 and cache.info().entries == 1
    result = runner.invoke(app, ["cache", "clear", "--yes"])
    assert result.exit_code == 0 and "removed 1 entries" in result.output
    assert cache.info().entries == 0


# ---------------------------------------------------------------- slow: a real tiny run


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_suite_a_to_d(brain_mri: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rc = run.main(["--only", "a,b,c,d", "--data", str(brain_mri.parent), "--image-size", "32", "--fe-epochs", "1",
                   "--ft-epochs", "2", "--max-per-class", "12", "--folds", "2", "--threads", "1", "--out", str(out),
                   "--work-dir", str(tmp_path / "work")])
    result = json.loads(out.read_text())
    assert rc == 0, json.dumps({k: result[k].get("error") for k in KEYS})
    _check_shape(result)
    assert result["custom_settings"] and result["suite_seconds"] > 0
    for key in KEYS[:4]:
        assert result[key]["value"] > 0 and result[key]["met"] in (True, False), key
    a = result["fe_cache_speedup"]
    assert a["medtl_seconds"] > 0 and a["naive_seconds"] > 0 and a["same_test_images"] is True
    assert a["backbone_forwards"]["medtl"] == 24
    assert result["cv_cache_ratio"]["cv_seconds"] > 0 and len(result["cv_cache_ratio"]["cv_fold_seconds"]) == 2
    c = result["cutoff_speedup"]
    assert c["runs"]["full"]["steady_epoch_seconds"] > 0
    if c["prefix_cache"]["available"]:
        assert c["prefix_cache"]["cache_used"] is True and "WITH train.prefix_cache" in c["measured"]
    d = result["ft_throughput_ratio"]
    assert d["medtl_images_per_s"] > 0 and len(d["bare"]["epoch_seconds"]) == 2
    assert result["demo_seconds"]["value"] is None and "not selected" in result["demo_seconds"]["skipped"]
    assert "| (a) | `fe_cache_speedup`" in run.to_markdown(result)


def test_stream_set_copies_are_unique_and_sized(tmp_path: Path, datasets: Path) -> None:
    from PIL import Image

    from benchmarks import scale

    ctx = cases.Context(cases.PRESETS["quick"], datasets, tmp_path)
    root = scale.stream_set(ctx, 30, 64)
    files = sorted(root.glob("*/*.png"))
    assert len(files) == 30 and {p.parent.name for p in files} <= {"NORMAL", "PNEUMONIA"}
    assert {Image.open(p).size for p in files} == {(64, 64)}
    assert len({p.read_bytes() for p in files}) == 30
    assert scale.stream_set(ctx, 30, 64) == root  # built once


def test_rss_timeline_puts_the_peak_next_to_the_output_line_of_its_phase(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import rss_timeline

    child = ("import time, numpy as np\n"
             "print('phase: small', flush=True); time.sleep(1.0)\n"
             "print('phase: big', flush=True); a = np.ones(300_000_000, np.uint8); time.sleep(1.5)\n"
             "del a; print('phase: done', flush=True); time.sleep(0.5)\n")
    out = tmp_path / "timeline.json"
    code = rss_timeline.main(["--interval", "0.05", "--top", "3", "--out", str(out), "--", sys.executable, "-c", child])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["returncode"] == 0
    assert 0.3 <= result["peak_rss_gb"] < 1.0  # the 0.3 GB array and the interpreter
    assert all(p["during"] == "phase: big" for p in result["peaks"])
    full = json.loads(out.read_text())
    assert [line for _, line in full["lines"]] == ["phase: small", "phase: big", "phase: done"]
    assert rss_timeline.main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 1
