"""Tests of medtl.evaluate.aggregate: per-patient aggregation of slice predictions."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.errors import ConfigError, DataError
from medtl.evaluate.aggregate import aggregate_by_group, aggregate_scores, patient_level_metrics
from medtl.evaluate.metrics import METRIC_KEYS


def test_aggregators_by_hand() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert aggregate_scores(scores, "mean") == pytest.approx(0.55)
    assert aggregate_scores(scores, "max") == pytest.approx(0.9)
    assert aggregate_scores(scores, "topk_mean", k=2) == pytest.approx(0.8)
    assert aggregate_scores(scores, "topk_mean", k=10) == pytest.approx(0.55)  # k > n uses all


def test_bad_aggregation_options() -> None:
    with pytest.raises(ConfigError, match="unknown aggregation"):
        aggregate_scores(np.ones(2), "median")
    with pytest.raises(ConfigError, match="k >= 1"):
        aggregate_scores(np.ones(2), "topk_mean", k=0)
    with pytest.raises(DataError, match="no scores"):
        aggregate_scores(np.zeros((0, 2)))
    with pytest.raises(DataError, match="one of each"):
        aggregate_by_group(np.zeros(2), np.zeros((3, 2)), ["a", "b"])


def test_binary_groups_positive_if_any_slice_is() -> None:
    labels = np.array([0, 1, 0, 0, 0])
    p_pos = np.array([0.2, 0.9, 0.1, 0.3, 0.2])
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    agg = aggregate_by_group(labels, probs, ["a", "a", "b", "b", "b"], "max")
    assert agg.groups == ["a", "b"]
    assert agg.labels.tolist() == [1, 0]
    assert agg.probs[:, 1] == pytest.approx([0.9, 0.3])
    assert agg.probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert agg.sizes.tolist() == [2, 3]


def test_multiclass_rows_renormalised() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    agg = aggregate_by_group(np.array([0, 0]), probs, ["g", "g"], "max")
    assert agg.probs[0] == pytest.approx(np.array([0.7, 0.2, 0.8]) / 1.7)


def test_patient_level_metrics_have_the_image_level_shape() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(30)], 5)
    labels = np.repeat(rng.integers(0, 2, 30), 5)
    p_pos = np.clip(labels * 0.4 + rng.uniform(0, 0.6, len(labels)), 0, 1)
    out = patient_level_metrics(labels, np.stack([1 - p_pos, p_pos], 1), groups, ["neg", "pos"], 1, "mean",
                                n_boot=50)
    assert set(METRIC_KEYS) <= set(out)
    assert out["n"] == 30 and out["n_groups"] == 30
    assert out["aggregation"]["n_images"] == 150 and out["aggregation"]["k"] is None
    assert out["auc"]["value"] > 0.9
