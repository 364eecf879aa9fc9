"""Tests of medtl.report: the HTML of run and study reports (fabricated directories, seconds)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import matplotlib
import pytest
from PIL import Image
from typer.testing import CliRunner

from medtl.cli import app
from medtl.errors import DataError
from medtl.report import write_report

from .conftest import RUN_HEADINGS, STUDY_HEADINGS, make_run, make_study


def headings(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def assert_self_contained(html: str) -> None:
    """Every image is an embedded PNG; nothing refers to the network."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(|@import|<link|<script", html, re.I)
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert sources
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()


@pytest.fixture(scope="module")
def binary_html(binary_run: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = write_report(binary_run, tmp_path_factory.mktemp("out") / "report.html", n_boot=100)
    return out.read_text()


def test_run_report_sections_and_self_containment(binary_html: str) -> None:
    assert headings(binary_html) == list(RUN_HEADINGS)
    assert_self_contained(binary_html)
    assert "@media print" in binary_html


def test_run_report_content(binary_html: str) -> None:
    assert "kfold, 2 fold(s)" in binary_html
    assert "Class balance per fold and split role" in binary_html
    assert "warning: no patient ids" in binary_html, "audit findings from run.log"
    assert "ROC AUC (95% CI)" in binary_html and "100/100" in binary_html
    assert "fixed in the config" in binary_html
    assert "No patient ids" in binary_html
    assert "mean ± SD" in binary_html


def test_suspect_labels_are_shown_with_their_images(binary_run: Path, binary_html: str) -> None:
    audit = json.loads((binary_run / "metrics.json").read_text())["label_issues"]
    with open(binary_run / "label_issues.csv") as fh:
        flagged = list(csv.DictReader(fh))
    assert audit["n"] == len(flagged) > 0, "the fixture's noisy probabilities contradict some labels"
    section = binary_html.split("<h3>Suspect labels</h3>", 1)[1].split("</section>", 1)[0]
    assert f"contradict <strong>{audit['n']}</strong> of {audit['of']} labels" in section
    for row in flagged[:12]:
        assert f"#{row['rank']} · {row['id']}" in section
    assert section.count('<img src="data:image/png;base64,') == min(len(flagged), 12)


def test_a_run_without_label_audit_says_so(binary_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(binary_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["label_issues"] = {"error": "class index(es) [0] have no sample among the predictions"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "the label audit could not run: class index(es) [0]" in write_report(run, n_boot=20, cam=False).read_text()
    del metrics["label_issues"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "no label audit in this run" in write_report(run, n_boot=20, cam=False).read_text()


def test_grad_cam_gallery(binary_html: str) -> None:
    cards = re.findall(r'<div class="card">', binary_html)
    assert 4 <= len(cards) <= 8, "up to two each of TP/FP/FN/TN"
    assert "target layer <code>bn2</code>" in binary_html
    assert "Sanity check (model randomisation" in binary_html and "Spearman" in binary_html


def test_default_output_path_and_degrading_gracefully(binary_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(binary_run, run)
    for name in ("history.csv", "splits.csv", "run.log"):
        (run / name).unlink()
    shutil.rmtree(run / "model")
    out = write_report(run, cam=True, n_boot=20)
    assert out == run / "report.html"
    html = out.read_text()
    assert headings(html) == list(RUN_HEADINGS)
    assert "no history.csv" in html and "no splits.csv" in html and "could not be loaded" in html


def test_missing_image_files_are_noted(binary_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(binary_run, run)
    for name in ("predictions.csv", "label_issues.csv"):
        text = (run / name).read_text()
        (run / name).write_text(text.replace(str(binary_run.parent / "images"), str(tmp_path / "gone")))
    html = write_report(run, n_boot=20).read_text()
    gradcam = html.split('<section id="gradcam">', 1)[1].split("</section>", 1)[0]
    assert "not shown" in gradcam and "file not found" in gradcam and '<div class="card">' not in gradcam
    labels = html.split("<h3>Suspect labels</h3>", 1)[1].split("</section>", 1)[0]
    assert "not shown" in labels and "<img" not in labels and '<div class="card">' in labels  # listed, no image


def test_validation_threshold_temperature_and_patients(calibrated_run: Path, tmp_path: Path) -> None:
    html = write_report(calibrated_run, tmp_path / "r.html", n_boot=50).read_text()
    assert "chosen on validation data by sensitivity &gt;= 0.9" in html
    assert "T = 1.700" in html and "test, without temperature scaling" in html and ">validation<" in html
    assert "Threshold rules fitted on validation data" in html and "Youden&#39;s J" in html
    assert "for reference: 0.5" in html
    assert "8 patients, 24 images" in html, "patient-level results computed from splits.csv patients"
    assert headings(html) == list(RUN_HEADINGS)


def test_multiclass_report(multiclass_run: Path, tmp_path: Path) -> None:
    html = write_report(multiclass_run, tmp_path / "r.html", n_boot=50).read_text()
    assert "Per-class AUC (one vs rest)" in html and "macro average" in html
    for name in ("glioma", "meningioma", "pituitary"):
        assert name in html
    assert "argmax (multiclass)" in html
    assert_self_contained(html)


def test_text_is_escaped(binary_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(binary_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["name"] = "<script>alert(1)</script>"
    (run / "metrics.json").write_text(json.dumps(metrics))
    html = write_report(run, cam=False, n_boot=0).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_plotting_leaves_the_global_backend_alone(binary_run: Path, tmp_path: Path) -> None:
    before = matplotlib.rcParams._get_backend_or_none()  # type: ignore[attr-defined]
    write_report(binary_run, tmp_path / "r.html", cam=False, n_boot=0)
    assert matplotlib.rcParams._get_backend_or_none() == before  # type: ignore[attr-defined]


def test_study_report(tmp_path: Path) -> None:
    html = write_report(make_study(tmp_path)).read_text()
    assert headings(html) == list(STUDY_HEADINGS)
    assert_self_contained(html)
    assert "6 of 7 cells done" in html and "TrainingError: loss is NaN" in html
    assert html.count("<img") == 3, "two forest plots and the data-size curves"
    assert "fe-0.25 (baseline)" in html


def test_study_curves_from_the_fraction_axis(tmp_path: Path) -> None:
    html = write_report(make_study(tmp_path / "a", with_curve_csv=False)).read_text()
    assert "Data-size learning curves" in html
    html = write_report(make_study(tmp_path / "b", fraction_axis=False)).read_text()
    assert "Data-size learning curves" not in html and headings(html) == ["Study", "Comparison"]


def test_not_a_result_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither a run directory"):
        write_report(tmp_path)


def test_cli_report(binary_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(app, ["report", str(binary_run), "--out", str(out), "--no-cam", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "Grad-CAM was switched off" in out.read_text()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2


def test_make_run_writes_every_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, val=True)
    for name in ("config.yaml", "splits.csv", "history.csv", "predictions.csv", "val_predictions.csv",
                 "metrics.json", "run.log", "model/model.json", "model/fold0.safetensors"):
        assert (run / name).is_file(), name
