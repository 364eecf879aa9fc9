"""Tests of medtl.evaluate.metrics."""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medtl.errors import ConfigError, DataError
from medtl.evaluate import metrics as m

KEYS = ["accuracy", "sensitivity", "specificity", "precision", "f1", "auc"]


def _binary_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and (n, 2) probabilities of an informative but imperfect scorer."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    return y, np.column_stack([1.0 - score, score])


def _multiclass_data(n: int = 300, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and row-stochastic (n, k) probabilities, informative about the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    probs[np.arange(n), y] += 0.4
    return y, probs / probs.sum(axis=1, keepdims=True)


def _sklearn_specificity(y: np.ndarray, pred: np.ndarray) -> float:
    return float(recall_score(y, pred, pos_label=0))


# --------------------------------------------------------------------------- point metrics


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_match_sklearn(threshold: float) -> None:
    y, probs = _binary_data(seed=1)
    score = probs[:, 1]
    pred = (score >= threshold).astype(int)
    got = m.binary_metrics(y, score, threshold)
    assert list(got) == KEYS
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert got["specificity"] == pytest.approx(_sklearn_specificity(y, pred))
    assert got["precision"] == pytest.approx(precision_score(y, pred))
    assert got["f1"] == pytest.approx(f1_score(y, pred))
    assert got["auc"] == pytest.approx(roc_auc_score(y, score))


def test_multiclass_metrics_match_sklearn() -> None:
    y, probs = _multiclass_data(seed=2)
    pred = probs.argmax(axis=1)
    got = m.multiclass_metrics(y, probs)
    assert list(got) == KEYS
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert got["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert got["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    auc = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert got["auc"] == pytest.approx(auc)
    specs = [recall_score(y != c, pred != c) for c in range(3)]
    assert got["specificity"] == pytest.approx(np.mean(specs))


def test_compute_metrics_dispatches_on_columns() -> None:
    y, probs = _binary_data(seed=3)
    assert m.compute_metrics(y, probs) == m.binary_metrics(y, probs[:, 1])
    flipped = m.compute_metrics(y, probs, positive_index=0, threshold=0.6)
    assert flipped == m.binary_metrics(y == 0, probs[:, 0], 0.6)
    assert flipped != m.compute_metrics(y, probs, positive_index=1, threshold=0.6)
    y3, p3 = _multiclass_data(seed=3)
    assert m.compute_metrics(y3, p3, positive_index=None) == m.multiclass_metrics(y3, p3)


def test_binary_hand_computed() -> None:
    # predictions at 0.5: [0, 1, 0, 1, 0] -> tn=2 fp=1 fn=1 tp=1
    got = m.binary_metrics(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.6, 0.2, 0.7, 0.4]))
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["specificity"] == pytest.approx(2 / 3)
    assert got["sensitivity"] == pytest.approx(1 / 2)
    assert got["precision"] == pytest.approx(1 / 2)
    assert got["f1"] == pytest.approx(1 / 2)
    # positive scores vs negatives: 0.7 beats all 3, 0.4 beats 0.1 and 0.2 -> 5/6
    assert got["auc"] == pytest.approx(5 / 6)


def test_multiclass_specificity_hand_computed() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[pred] * 0.8 + 0.1
    # one-vs-rest specificities: class 0: 3/4, class 1: 3/4, class 2: 4/4
    got = m.multiclass_metrics(y, probs)
    assert got["specificity"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    assert got["sensitivity"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_single_class_gives_nan_auc_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    y = np.zeros(10, dtype=int)
    score = np.linspace(0, 1, 10)
    with caplog.at_level(logging.WARNING, logger="medtl.evaluate.metrics"):
        got = m.binary_metrics(y, score)
    assert math.isnan(got["auc"])
    assert math.isnan(got["sensitivity"])
    assert got["specificity"] == pytest.approx(0.5)
    assert got["accuracy"] == pytest.approx(0.5)
    assert "AUC is undefined" in caplog.text
    multi = m.multiclass_metrics(np.zeros(5, dtype=int), np.full((5, 3), 1 / 3))
    assert math.isnan(multi["auc"])
    assert math.isnan(multi["specificity"])
    assert multi["accuracy"] == 1.0


def test_perfect_separation_auc_one() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    got = m.binary_metrics(y, score)
    assert got["auc"] == 1.0
    assert got["accuracy"] == 1.0
    assert got["f1"] == 1.0
    y3 = np.array([0, 1, 2, 0, 1, 2])
    assert m.multiclass_metrics(y3, np.eye(3)[y3])["auc"] == 1.0


def test_tied_scores() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    assert m.binary_metrics(y, np.full(6, 0.5))["auc"] == pytest.approx(0.5)
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    score = np.round(np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, 200), 0, 1), 1)
    assert m.binary_metrics(y, score)["auc"] == pytest.approx(roc_auc_score(y, score))
    # ties at the threshold count as positive
    assert m.binary_metrics(np.array([0, 1]), np.array([0.2, 0.5]), 0.5)["sensitivity"] == 1.0


def test_no_predicted_positive(caplog: pytest.LogCaptureFixture) -> None:
    y = np.array([0, 0, 1, 1])
    with caplog.at_level(logging.WARNING, logger="medtl.evaluate.metrics"):
        got = m.binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(got["precision"])
    assert got["sensitivity"] == 0.0
    assert got["f1"] == 0.0
    assert got["specificity"] == 1.0
    assert got["auc"] == 1.0
    assert "precision is undefined" in caplog.text
    none_at_all = m.binary_metrics(np.zeros(3, dtype=int), np.zeros(3))
    assert math.isnan(none_at_all["f1"])
    assert math.isnan(none_at_all["precision"])


def test_multiclass_absent_class_averages_present(caplog: pytest.LogCaptureFixture) -> None:
    y, probs = _multiclass_data(n=200, k=4, seed=5)
    keep = y != 3
    y, probs = y[keep], probs[keep]
    with caplog.at_level(logging.WARNING, logger="medtl.evaluate.metrics"):
        got = m.multiclass_metrics(y, probs)
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert got["auc"] == pytest.approx(expected)
    pred = probs.argmax(axis=1)
    assert got["sensitivity"] == pytest.approx(recall_score(y, pred, labels=[0, 1, 2], average="macro"))
    assert "absent from y_true" in caplog.text


def test_multiclass_never_predicted_class_has_zero_precision() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1]]
    got = m.multiclass_metrics(y, probs)
    assert got["precision"] == pytest.approx((1.0 + 1 / 3 + 0.0) / 3)
    assert got["f1"] == pytest.approx(f1_score(y, [0, 1, 1, 1], average="macro", zero_division=0))


def test_confusion_binary_and_multiclass() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    assert m.confusion(y, probs, 1, 0.5) == [[1, 1], [1, 1]]
    assert m.confusion(y, probs, 1, 0.05) == [[0, 2], [0, 2]]
    # positive class 0 at threshold 0.85: only the first case is predicted 0
    assert m.confusion(y, probs, 0, 0.85) == [[1, 1], [0, 2]]
    y3, p3 = _multiclass_data(seed=6)
    expected = confusion_matrix(y3, p3.argmax(axis=1), labels=[0, 1, 2]).tolist()
    got = m.confusion(y3, p3, None)
    assert got == expected
    assert all(type(v) is int for row in got for v in row)


def test_invalid_input_raises() -> None:
    with pytest.raises(DataError):
        m.compute_metrics(np.array([0, 1]), np.array([0.2, 0.8]))
    with pytest.raises(DataError):
        m.compute_metrics(np.array([0, 2]), np.array([[0.2, 0.8], [0.5, 0.5]]))
    with pytest.raises(DataError):
        m.binary_metrics(np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ConfigError):
        m.compute_metrics(np.array([0, 1]), np.array([[0.2, 0.8], [0.5, 0.5]]), positive_index=2)


# --------------------------------------------------------------------------- bootstrap


def _expand(counts: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Sample indices of a resample that takes group g ``counts[g]`` times."""
    members = [np.flatnonzero(inv == g) for g in range(counts.size)]
    return np.concatenate([np.tile(members[g], int(c)) for g, c in enumerate(counts)])


@pytest.mark.parametrize("kind", ["binary", "binary_pos0", "multiclass"])
def test_bootstrap_replicates_equal_explicit_resamples(kind: str, caplog) -> None:
    if kind == "multiclass":
        y, probs = _multiclass_data(n=90, seed=7)
        pos = None
    else:
        y, probs = _binary_data(n=90, seed=7)
        probs = np.round(probs, 1)  # ties
        pos = 0 if kind == "binary_pos0" else 1
    inv = np.arange(90) // 3  # 30 groups of 3 images
    rng = np.random.default_rng(8)
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=6).astype(float)
    counts[5] = 0
    counts[5, 0] = 30  # a resample made of one group only
    stats_ = m._group_stats(y, probs, inv, 30, pos, 0.5)
    values = m._replicates(stats_, counts)
    for b in range(counts.shape[0]):
        idx = _expand(counts[b], inv)
        expected = m.compute_metrics(y[idx], probs[idx], pos, 0.5)
        np.testing.assert_allclose(values[b], [expected[k] for k in KEYS], equal_nan=True)


def test_grouped_bootstrap_wider_than_image_bootstrap() -> None:
    # 40 patients, each imaged 50 times identically: only 40 independent observations
    y_pat, probs_pat = _binary_data(n=40, seed=9)
    y, probs = np.repeat(y_pat, 50), np.repeat(probs_pat, 50, axis=0)
    by_patient = np.repeat([f"p{i}" for i in range(40)], 50)
    by_image = np.array([f"i{i}" for i in range(2000)])
    ci_pat = m.bootstrap_ci(y, probs, by_patient, 1, n_boot=300, seed=0)
    ci_img = m.bootstrap_ci(y, probs, by_image, 1, n_boot=300, seed=0)
    for key in ("accuracy", "auc"):
        width_pat = ci_pat[key][1] - ci_pat[key][0]
        width_img = ci_img[key][1] - ci_img[key][0]
        assert width_pat > 3 * width_img, key


def test_bootstrap_contains_point_estimate() -> None:
    y, probs = _binary_data(n=400, seed=10)
    groups = [f"p{i // 2}" for i in range(400)]
    point = m.compute_metrics(y, probs, 1)
    ci = m.bootstrap_ci(y, probs, groups, 1, n_boot=400, seed=1)
    assert list(ci) == KEYS
    for key in KEYS:
        lo, hi = ci[key]
        assert lo < point[key] < hi, key
    y3, p3 = _multiclass_data(n=400, seed=10)
    point3 = m.compute_metrics(y3, p3, None)
    ci3 = m.bootstrap_ci(y3, p3, groups, None, n_boot=400, seed=1)
    assert all(ci3[k][0] < point3[k] < ci3[k][1] for k in KEYS)


def test_bootstrap_level_narrows_interval() -> None:
    y, probs = _binary_data(n=200, seed=11)
    groups = np.arange(200)
    wide = m.bootstrap_ci(y, probs, groups, 1, n_boot=300, seed=2, level=0.95)
    narrow = m.bootstrap_ci(y, probs, groups, 1, n_boot=300, seed=2, level=0.5)
    assert narrow["auc"][0] > wide["auc"][0]
    assert narrow["auc"][1] < wide["auc"][1]


def test_bootstrap_deterministic_per_seed() -> None:
    y, probs = _binary_data(n=200, seed=12)
    groups = np.array([f"p{i // 4}" for i in range(200)])
    a = m.bootstrap_ci(y, probs, groups, 1, n_boot=200, seed=5)
    b = m.bootstrap_ci(y, probs, groups, 1, n_boot=200, seed=5)
    c = m.bootstrap_ci(y, probs, groups, 1, n_boot=200, seed=6)
    assert a == b
    assert a != c


def test_bootstrap_one_class_resamples_are_skipped() -> None:
    # 3 patients: one all positive, two all negative; about a third of resamples lack a class
    y = np.array([1, 1, 0, 0, 0, 0])
    probs = np.column_stack([1 - np.array([0.9, 0.6, 0.7, 0.2, 0.1, 0.3]), [0.9, 0.6, 0.7, 0.2, 0.1, 0.3]])
    groups = ["a", "a", "b", "b", "c", "c"]
    ci = m.bootstrap_ci(y, probs, groups, 1, n_boot=300, seed=0)
    assert all(math.isfinite(v) for v in ci["auc"])
    assert 0.0 <= ci["auc"][0] <= ci["auc"][1] <= 1.0


def test_bootstrap_mostly_undefined_gives_nan(caplog: pytest.LogCaptureFixture) -> None:
    y = np.zeros(6, dtype=int)
    probs = np.tile([0.8, 0.2], (6, 1))
    with caplog.at_level(logging.WARNING, logger="medtl.evaluate.metrics"):
        ci = m.bootstrap_ci(y, probs, ["a", "a", "b", "b", "c", "c"], 1, n_boot=50)
    assert all(math.isnan(v) for v in ci["auc"])
    assert all(math.isnan(v) for v in ci["sensitivity"])
    assert ci["accuracy"] == (1.0, 1.0)
    assert "CI set to (nan, nan)" in caplog.text


def test_bootstrap_zero_resamples_and_bad_options() -> None:
    y, probs = _binary_data(n=20)
    ci = m.bootstrap_ci(y, probs, np.arange(20), 1, n_boot=0)
    assert list(ci) == KEYS
    assert all(math.isnan(v) for pair in ci.values() for v in pair)
    with pytest.raises(ConfigError):
        m.bootstrap_ci(y, probs, np.arange(20), 1, n_boot=10, level=1.5)
    with pytest.raises(DataError):
        m.bootstrap_ci(y, probs, np.arange(19), 1, n_boot=10)


def test_bootstrap_is_fast() -> None:
    y, probs = _binary_data(n=6000, seed=13)
    groups = np.array([f"patient-{i // 2}" for i in range(6000)])
    start = time.perf_counter()
    m.bootstrap_ci(y, probs, groups, 1, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 8.0


# --------------------------------------------------------------------------- summaries


def test_summarize_keys_and_json_safe() -> None:
    y, probs = _binary_data(n=120, seed=14)
    groups = [f"p{i // 3}" for i in range(120)]
    out = m.summarize(y, probs, groups, ["benign", "malignant"], 1, threshold=0.4, n_boot=100)
    assert list(out) == [
        *KEYS,
        "n",
        "n_groups",
        "class_names",
        "positive_class",
        "threshold",
        "confusion_matrix",
        "class_counts",
    ]
    json.dumps(out, allow_nan=False)
    assert out["n"] == 120
    assert out["n_groups"] == 40
    assert out["positive_class"] == "malignant"
    assert out["threshold"] == 0.4
    assert out["class_counts"] == {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}
    assert out["confusion_matrix"] == m.confusion(y, probs, 1, 0.4)
    point = m.compute_metrics(y, probs, 1, 0.4)
    for key in KEYS:
        assert set(out[key]) == {"value", "ci95"}
        assert out[key]["value"] == pytest.approx(point[key])
        assert len(out[key]["ci95"]) == 2


def test_summarize_degenerate_and_multiclass() -> None:
    y = np.zeros(4, dtype=int)
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    out = m.summarize(y, probs, ["a", "a", "b", "c"], ["neg", "pos"], None, n_boot=20)
    text = json.dumps(out, allow_nan=False)
    assert out["auc"] == {"value": None, "ci95": [None, None]}
    assert out["positive_class"] == "pos"
    assert "NaN" not in text
    y3, p3 = _multiclass_data(n=60, seed=15)
    out3 = m.summarize(y3, p3, np.arange(60), ["a", "b", "c"], None, n_boot=20)
    json.dumps(out3, allow_nan=False)
    assert out3["positive_class"] is None
    assert sum(out3["class_counts"].values()) == 60
    with pytest.raises(DataError):
        m.summarize(y3, p3, np.arange(60), ["a", "b"], None, n_boot=0)


def test_per_fold_summary() -> None:
    folds = [
        {"accuracy": 0.8, "auc": 0.9},
        {"accuracy": 0.7, "auc": float("nan")},
        {"accuracy": 0.9, "auc": 0.7},
    ]
    out = m.per_fold_summary(folds)
    assert out["accuracy"]["mean"] == pytest.approx(0.8)
    assert out["accuracy"]["sd"] == pytest.approx(np.std([0.8, 0.7, 0.9], ddof=1))
    assert out["auc"]["mean"] == pytest.approx(0.8)
    assert out["auc"]["sd"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert out["auc"]["values"] == [0.9, None, 0.7]
    json.dumps(out, allow_nan=False)
    single = m.per_fold_summary([{"f1": 0.5}])
    assert single["f1"] == {"mean": 0.5, "sd": 0.0, "values": [0.5]}
    assert m.per_fold_summary([{"auc": float("nan")}])["auc"]["mean"] is None


# --------------------------------------------------------------------------- DeLong


def _delong_reference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """O(n^2) DeLong (1988) from its structural-components definition."""

    def components(s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, v10_a, v01_a = components(a)
    auc_b, v10_b, v01_b = components(b)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    cov = s10 / v10_a.size + s01 / v01_a.size
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a, auc_b, math.erfc(abs(z) / math.sqrt(2))


def test_delong_matches_reference_and_sklearn() -> None:
    rng = np.random.default_rng(16)
    y = rng.integers(0, 2, 60)
    a = np.round(y * 0.8 + rng.normal(0, 0.6, 60), 1)  # rounding creates ties
    b = np.round(y * 0.4 + rng.normal(0, 0.6, 60), 1)
    auc_a, auc_b, p = m.delong_test(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a))
    assert auc_b == pytest.approx(roc_auc_score(y, b))
    ref = _delong_reference(y, a, b)
    assert (auc_a, auc_b, p) == pytest.approx(ref, rel=1e-9)
    assert 0.0 < p < 1.0


def test_delong_identical_and_clearly_different() -> None:
    rng = np.random.default_rng(17)
    y = rng.integers(0, 2, 200)
    good = y + rng.normal(0, 0.5, 200)
    random = rng.normal(0, 1, 200)
    assert m.delong_test(y, good, good)[2] == 1.0
    auc_good, auc_random, p = m.delong_test(y, good, random)
    assert auc_good > 0.8
    assert abs(auc_random - 0.5) < 0.15
    assert p < 1e-6


def test_delong_single_class_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medtl.evaluate.metrics"):
        result = m.delong_test(np.ones(5, dtype=int), np.arange(5.0), np.arange(5.0))
    assert all(math.isnan(v) for v in result)
    assert "single class" in caplog.text


# --------------------------------------------------------------------------- McNemar


def _paired(b: int, c: int, both_right: int = 5, both_wrong: int = 3) -> tuple[np.ndarray, ...]:
    """Labels and two prediction vectors with b cases only A gets right, c only B."""
    y = np.zeros(b + c + both_right + both_wrong, dtype=int)
    a_right = np.r_[np.ones(b), np.zeros(c), np.ones(both_right), np.zeros(both_wrong)].astype(bool)
    b_right = np.r_[np.zeros(b), np.ones(c), np.ones(both_right), np.zeros(both_wrong)].astype(bool)
    return y, np.where(a_right, 0, 1), np.where(b_right, 0, 2)


def test_mcnemar_exact_branch() -> None:
    b, c, p = m.mcnemar_test(*_paired(7, 2))
    assert (b, c) == (7, 2)
    # two-sided exact binomial: 2 * (C(9,0) + C(9,1) + C(9,2)) / 2**9
    assert p == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert p == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    _, _, p24 = m.mcnemar_test(*_paired(16, 8))
    assert p24 == pytest.approx(stats.binomtest(16, 24, 0.5).pvalue)


def test_mcnemar_chi_square_branch() -> None:
    b, c, p = m.mcnemar_test(*_paired(30, 10))
    assert (b, c) == (30, 10)
    chi2 = (abs(30 - 10) - 1) ** 2 / 40  # 9.025
    assert p == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))
    assert p == pytest.approx(stats.chi2.sf(chi2, 1))
    _, _, p25 = m.mcnemar_test(*_paired(17, 8))
    assert p25 == pytest.approx(stats.chi2.sf(8**2 / 25, 1))
    assert p25 != pytest.approx(stats.binomtest(17, 25, 0.5).pvalue)


def test_mcnemar_no_discordant_pairs() -> None:
    y = np.array([0, 1, 1, 0])
    assert m.mcnemar_test(y, y, y) == (0, 0, 1.0)
