"""The leaf module medtl.data.samples: CSV reading (encodings), label checks and split values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medtl.data.samples import check_labels, read_csv, sorted_labels, split_value
from medtl.errors import DataError


def test_read_csv_utf8_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffpath , label\r\nx.png,naïve\r\ny.png,yes\r\n".encode())
    header, rows = read_csv(path)
    assert header == ["path", "label"]
    assert [(line, row["label"]) for line, row in rows] == [(2, "naïve"), (3, "yes")]


def test_read_csv_falls_back_to_cp1252_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("path,label\nx.png,naïve – ok\n".encode("cp1252"))
    with caplog.at_level(logging.WARNING, logger="medtl.data.samples"):
        _, rows = read_csv(path)
    assert rows[0][1]["label"] == "naïve – ok"
    assert "is not UTF-8" in caplog.text and "read it as cp1252" in caplog.text


def test_read_csv_latin1_as_last_resort(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "odd.csv"
    path.write_bytes(b"path,label\nx.png,a\x81b\n")  # 0x81 is undefined in cp1252
    with caplog.at_level(logging.WARNING, logger="medtl.data.samples"):
        _, rows = read_csv(path)
    assert rows[0][1]["label"] == "a\x81b" and "read it as latin-1" in caplog.text


def test_read_csv_empty_and_header_only(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty CSV"):
        read_csv(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="header but no rows"):
        read_csv(tmp_path / "h.csv")


def test_empty_labels_are_refused_or_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels = [(2, "a"), (3, ""), (4, "b"), (5, "")]
    with pytest.raises(DataError, match=r"2 rows have an empty 'label' label \(lines 3, 5\).*drop_unlabelled"):
        check_labels(labels, tmp_path / "l.csv", "label", drop=False)
    with caplog.at_level(logging.WARNING, logger="medtl.data.samples"):
        assert check_labels(labels, tmp_path / "l.csv", "label", drop=True) == {3, 5}
    assert "leaving out 2 rows" in caplog.text


def test_labels_differing_by_case_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'Yes' \(line 2\) / 'yes' \(line 4\)"):
        check_labels([(2, "Yes"), (3, "no"), (4, "yes"), (5, "Yes")], tmp_path / "l.csv", "label", drop=False)
    assert check_labels([(2, "yes"), (3, "no")], tmp_path / "l.csv", "label", drop=False) == set()


def test_sorted_labels_and_split_values(tmp_path: Path) -> None:
    assert sorted_labels({"10", "2", "-1"}) == ["-1", "2", "10"]
    assert sorted_labels({"b", "a", "10"}) == ["10", "a", "b"]
    assert split_value("Validation", 2, "split", tmp_path) == "val" and split_value("", 2, "split", tmp_path) is None
    with pytest.raises(DataError, match="line 7: split 'tst'"):
        split_value("tst", 7, "split", tmp_path)
