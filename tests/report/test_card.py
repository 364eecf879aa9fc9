"""The model card (`medtl card`): contents from the run's files, written into the run, linked by the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medtl import rundir
from medtl.errors import MedtlError
from medtl.report import write_report
from medtl.report.card import card_data, card_markdown, write_card

from .conftest import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rule = {"rule": "sensitivity", "target": 0.9, "threshold": 0.42}
    run_dir = make_run(tmp_path_factory.mktemp("card"), val=True, threshold=0.42, name="carded",
                       extra_model_fields={"threshold_rule": rule, "temperature": 1.7})
    rundir.mark_complete(run_dir)
    return run_dir


def test_card_data_comes_from_the_run(run: Path) -> None:
    card = card_data(run)
    assert card["name"] == "carded"
    assert card["operating_point"]["threshold"] == 0.42 and card["operating_point"]["rule"]["rule"] == "sensitivity"
    assert card["calibration"]["temperature"] == 1.7 and 0 <= card["calibration"]["ece"] <= 1
    assert card["metrics"]["auc"]["ci95"][0] <= card["metrics"]["auc"]["value"] <= card["metrics"]["auc"]["ci95"][1]
    assert card["data"]["duplicate_groups"] == 4  # make_run: images 0-7 in pairs of duplicates
    assert card["data"]["suspect_labels"] == len(rundir.read_rows(run / rundir.LABEL_ISSUES))
    assert card["lineage"][0]["stage"] == "carded"
    assert card["training"]["config"]["transfer"]["strategy"] == "feature_extraction"


def test_markdown_has_every_section(run: Path) -> None:
    text = card_markdown(card_data(run))
    for heading in ("Intended use", "Out-of-scope use", "Data", "Protocol", "Metrics", "Operating point",
                    "Calibration", "Known shifts", "Lineage", "How it was trained"):
        assert f"## {heading}" in text
    assert "| auc |" in text and "Threshold 0.420" in text


def test_known_shift_is_listed_when_validation_and_test_differ(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = rundir.read_rows(copy / rundir.VAL_PREDICTIONS)
    for r in rows:  # every validation image scored as its own label: sensitivity 1, specificity 1
        r["prob_yes"], r["prob_no"] = ("0.99", "0.01") if r["label"] == "1" else ("0.01", "0.99")
    rundir.write_csv(copy / rundir.VAL_PREDICTIONS, list(rows[0]), [list(r.values()) for r in rows])
    shifts = card_data(copy)["known_shifts"]
    assert any(s.startswith("sensitivity 1.000 on validation") for s in shifts) or \
        any(s.startswith("specificity 1.000 on validation") for s in shifts)


def test_write_card_and_report_link(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert 'href="model_card.md"' not in write_report(copy, cam=False, n_boot=20).read_text()
    path = write_card(copy)
    assert path == copy / rundir.MODEL_CARD and path.read_text().startswith("# Model card: carded")
    assert 'href="model_card.md"' in write_report(copy, cam=False, n_boot=20).read_text()


def test_unfinished_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    with pytest.raises(MedtlError, match="not a finished run"):
        card_data(tmp_path / "run")
