"""Seed, clustered-AUC and Holm statistics: against reference implementations and simulations with known answers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from medtl.errors import DataError
from medtl.evaluate.metrics import delong_test
from medtl.evaluate.stats import clustered_auc_test, has_clusters, holm, mean_sd, paired_seed_test


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=int(rng.integers(1, 12)))
    expected = multipletests(p, method="holm")[1]
    np.testing.assert_allclose(holm(list(p)), expected, rtol=1e-12)


def test_holm_skips_missing_p_values() -> None:
    p = [0.01, None, 0.04, float("nan"), 0.03]
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    out = holm(p)
    assert out[1] is None and out[3] is None
    np.testing.assert_allclose([out[0], out[2], out[4]], expected)


def test_paired_seed_test_matches_scipy() -> None:
    a = [0.91, 0.93, 0.90, 0.95, 0.92]
    b = [0.89, 0.92, 0.91, 0.90, 0.88]
    out = paired_seed_test(a, b)
    assert out["n"] == 5
    assert out["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert out["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert out["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue)


def test_paired_seed_test_edge_cases() -> None:
    assert paired_seed_test([0.9], [0.8])["p_ttest"] is None
    same = paired_seed_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same["p_ttest"] == 1.0 and same["p_wilcoxon"] == 1.0
    with pytest.raises(DataError, match="same seeds"):
        paired_seed_test([0.9, 0.8], [0.9])
    assert mean_sd([0.9, 0.8, 0.7]) == (pytest.approx(0.8), pytest.approx(0.1))


def test_paired_seed_test_type_one_error_over_seeds() -> None:
    """Null: both configurations' AUCs vary by seed around the same mean; the t-test rejects ~5%."""
    rng = np.random.default_rng(0)
    rejections = sum(paired_seed_test(0.9 + rng.normal(0, 0.01, 8), 0.9 + rng.normal(0, 0.01, 8))["p_ttest"] < 0.05
                     for _ in range(400))
    assert 0.02 <= rejections / 400 <= 0.09


def test_clustered_equals_delong_with_one_image_per_group() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    a, b = y + rng.normal(0, 1, 120), y + rng.normal(0, 1.3, 120)
    expected = delong_test(y, a, b)
    got = clustered_auc_test(y, a, b, [f"p{i}" for i in range(120)])
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def _clustered_null(rng: np.random.Generator, n_patients: int = 40,
                    per_patient: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Two models of equal expected AUC whose relative skill differs by patient (a patient-level effect)."""
    groups = np.repeat(np.arange(n_patients), per_patient)
    y = rng.integers(0, 2, groups.size)
    skill = rng.normal(0, 1.0, n_patients)[groups]  # which model is better on this patient
    a = y * (1.0 + skill) + rng.normal(0, 1, groups.size)
    b = y * (1.0 - skill) + rng.normal(0, 1, groups.size)
    return y, a, b, [f"patient:{g}" for g in groups]


def test_clustered_test_holds_its_level_where_image_level_delong_does_not() -> None:
    """200 null data sets clustered by patient: the clustered test rejects <= 9% at 5%, DeLong clearly more."""
    rng = np.random.default_rng(2024)
    started = time.perf_counter()
    clustered = image = 0
    reps = 200
    for _ in range(reps):
        y, a, b, groups = _clustered_null(rng)
        clustered += clustered_auc_test(y, a, b, groups)[2] < 0.05
        image += delong_test(y, a, b)[2] < 0.05
    assert clustered / reps <= 0.09, clustered / reps
    assert image / reps >= 0.15 and image > 2 * clustered, (image / reps, clustered / reps)
    assert time.perf_counter() - started < 30


def test_clustered_test_has_power_against_a_real_difference() -> None:
    rng = np.random.default_rng(3)
    rejections = 0
    for _ in range(50):
        groups = np.repeat(np.arange(60), 3)
        y = rng.integers(0, 2, groups.size)
        a = 2.0 * y + rng.normal(0, 1, groups.size)
        b = 0.5 * y + rng.normal(0, 1, groups.size)
        rejections += clustered_auc_test(y, a, b, [str(g) for g in groups])[2] < 0.05
    assert rejections >= 45


def test_has_clusters() -> None:
    assert has_clusters(["a", "a", "b"])
    assert not has_clusters(["a", "b", "c"])
    assert not has_clusters(["", "", "a"])
