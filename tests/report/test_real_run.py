"""A report of a tiny real run: 24 brain MRI images, 2 folds, feature extraction (marked slow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medtl.config import parse_config
from medtl.experiment import run_experiment
from medtl.report import write_report

from .conftest import RUN_HEADINGS
from .test_browser import CHROMIUM, assert_clean, open_page
from .test_build import assert_self_contained, headings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def real_run(brain_mri: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {"name": "report-e2e",
           "data": {"source": "folder", "root": str(brain_mri), "positive_class": "yes", "image_size": 64,
                    "max_per_class": 12, "split": {"method": "kfold", "folds": 2, "seed": 0}},
           "transfer": {"strategy": "feature_extraction"},
           "train": {"epochs": 2, "warmup_epochs": 0, "batch_size": 8, "progress": False},
           "evaluate": {"bootstrap": 100}}
    out = tmp_path_factory.mktemp("real") / "run"
    run_experiment(parse_config(cfg), out, progress=False)
    return out


def test_report_of_a_real_run(real_run: Path, tmp_path: Path) -> None:
    html_path = write_report(real_run, tmp_path / "report.html")
    html = html_path.read_text()
    assert headings(html) == list(RUN_HEADINGS)
    assert_self_contained(html)
    assert "tf_efficientnet_lite0" in html and "feature_extraction" in html
    assert len(re.findall(r'<div class="card">', html)) >= 2, "Grad-CAM of real images"
    assert "Sanity check (model randomisation" in html
    if CHROMIUM is not None:
        assert_clean(open_page(html_path, tmp_path), RUN_HEADINGS)
