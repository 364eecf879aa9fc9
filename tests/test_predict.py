"""medtl predict on DICOM files and folders: every frame with the run's DICOM policy, bad files kept as rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from report.conftest import make_run
from typer.testing import CliRunner

from medtl.cli import app
from medtl.predict import expand_paths, predict_files


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("fabricated"))


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct")            # no extension: found by content
    shutil.copy(get_testdata_file("emri_small.dcm"), folder / "mri.dcm")     # 10 frames
    shutil.copy(get_testdata_file("rtplan.dcm"), folder / "plan.dcm")       # a DICOM file without pixels
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_dicom_folder_gives_one_row_per_frame_and_keeps_the_bad_file(run: Path, scans: Path) -> None:
    assert [p.name for p in expand_paths([scans])] == ["ct", "mri.dcm", "plan.dcm"]
    rows = predict_files(run, [scans])
    good = [r for r in rows if not r["error"]]
    assert [r["path"] for r in good][:2] == [str(scans / "ct"), f"{scans / 'mri.dcm'}#frame=0"]
    assert len(good) == 1 + 10
    assert all(abs(r["prob_no"] + r["prob_yes"] - 1) < 1e-5 and r["pred"] in ("no", "yes") for r in good)
    bad = [r for r in rows if r["error"]]
    assert [r["path"] for r in bad] == [str(scans / "plan.dcm")] and "plan.dcm" in bad[0]["error"]


def test_cli_predict_reads_dicom(run: Path, scans: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(run), str(scans / "ct")])
    assert result.exit_code == 0, result.output
    assert "prob_yes" in result.stdout and str(scans / "ct") in result.stdout
