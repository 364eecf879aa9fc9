"""Tests of medtl.data.medmnist: MD5 checks and (offline) download behaviour."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from medtl.config import data_root
from medtl.data.medmnist import MEDMNIST_FILES, ensure_medmnist, md5_of
from medtl.errors import DataError


def _shared_medmnist() -> Path:
    folder = data_root() / "medmnist"
    if not (folder / "breastmnist.npz").is_file():
        pytest.skip(f"shared MedMNIST files not in {folder} (set MEDTL_DATA)")
    return folder


def test_present_shared_files_verify() -> None:
    folder = _shared_medmnist()
    for name in MEDMNIST_FILES:
        assert ensure_medmnist(name, folder, download=False) == folder / f"{name}.npz"


def test_official_urls_and_md5() -> None:
    assert (
        MEDMNIST_FILES["breastmnist"]["url"]
        == "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1"
    )
    assert MEDMNIST_FILES["breastmnist"]["md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert MEDMNIST_FILES["pneumoniamnist"]["md5"] == "28209eda62fecd6e6a2d98b1501bb15f"


def test_wrong_md5_raises(tmp_path: Path) -> None:
    (tmp_path / "breastmnist.npz").write_bytes(b"not the official file")
    with pytest.raises(DataError, match=r"breastmnist\.npz: MD5 .* does not match the official 750601b1"):
        ensure_medmnist("breastmnist", tmp_path)


def test_unknown_name_and_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown MedMNIST file 'chestmnist'"):
        ensure_medmnist("chestmnist", tmp_path)
    with pytest.raises(DataError, match="download is off"):
        ensure_medmnist("breastmnist", tmp_path, download=False)


def test_unreachable_url_fails_fast_and_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9/x"
    monkeypatch.setitem(MEDMNIST_FILES, "breastmnist", {**MEDMNIST_FILES["breastmnist"], "url": url})
    start = time.monotonic()
    with pytest.raises(
        DataError, match=r"download of http://127\.0\.0\.1:9/x failed.*offline.*breastmnist\.npz"
    ):
        ensure_medmnist("breastmnist", tmp_path / "cache")
    assert time.monotonic() - start < 10
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind


def test_download_via_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _shared_medmnist() / "breastmnist.npz"
    monkeypatch.setitem(
        MEDMNIST_FILES, "breastmnist", {**MEDMNIST_FILES["breastmnist"], "url": source.as_uri()}
    )
    target = ensure_medmnist("breastmnist", tmp_path)
    assert target == tmp_path / "breastmnist.npz"
    assert md5_of(target) == MEDMNIST_FILES["breastmnist"]["md5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["breastmnist.npz"]


def test_download_with_wrong_md5_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake.npz"
    fake.write_bytes(b"tampered")
    monkeypatch.setitem(
        MEDMNIST_FILES, "breastmnist", {**MEDMNIST_FILES["breastmnist"], "url": fake.as_uri()}
    )
    with pytest.raises(DataError, match="expected 750601b1"):
        ensure_medmnist("breastmnist", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
