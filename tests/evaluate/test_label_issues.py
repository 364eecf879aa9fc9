"""The label audit flags labels that held-out predictions confidently contradict, and never fails a run."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest

from medtl.evaluate.label_issues import audit_labels, label_issues


def separable(n: int = 120, k: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confident, mostly right probabilities (a little noise in the margins)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(0, 0.2, size=(n, k))
    logits[np.arange(n), labels] += 6.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("k", [2, 3])
def test_flipped_labels_are_found_first(k: int) -> None:
    labels, probs = separable(k=k)
    flipped = np.array([3, 17, 40, 88])
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % k
    ranked, quality = label_issues(noisy, probs)
    assert set(ranked[:4].tolist()) == set(flipped.tolist())
    assert len(ranked) <= 8  # the clean majority is not flagged
    assert quality.shape == (len(labels),) and quality[flipped].max() < np.delete(quality, flipped).min()
    assert len(label_issues(labels, probs)[0]) == 0  # nothing flagged without flips


def test_audit_writes_the_ranked_file_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels, probs = separable()
    labels[[5, 9]] = 1 - labels[[5, 9]]
    ids = [f"img{i}" for i in range(len(labels))]
    with caplog.at_level(logging.WARNING):
        summary = audit_labels(tmp_path / "label_issues.csv", ids, [f"/d/{i}.png" for i in ids], [i % 3 for i in
                               range(len(labels))], labels, probs, ["no", "yes"])
    assert summary["n"] == 2 and summary["of"] == len(labels) and summary["file"] == "label_issues.csv"
    with open(tmp_path / "label_issues.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["id"] for r in rows} == {"img5", "img9"} and rows[0]["rank"] == "1"
    assert all(r["given"] != r["predicted"] and float(r["prob_given"]) < 0.5 for r in rows)
    assert "contradict 2 of 120 labels" in caplog.text and "img" in caplog.text


def test_an_audit_that_cannot_run_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels, probs = separable()
    only_ones = np.ones_like(labels)  # class 0 absent from the evaluated images
    with caplog.at_level(logging.WARNING):
        summary = audit_labels(tmp_path / "x.csv", ["a"] * len(labels), ["a"] * len(labels), [0] * len(labels),
                               only_ones, probs, ["no", "yes"])
    assert "no sample" in summary["error"] and "label audit skipped" in caplog.text
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(ValueError, match="do not match"):
        label_issues(labels[:5], probs)
