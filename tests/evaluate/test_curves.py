"""Tests of medtl.evaluate.curves: curves and areas against scikit-learn, bands by construction."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from medtl.errors import ConfigError, DataError
from medtl.evaluate.curves import one_vs_rest_bands, per_class_auc, pr_band, roc_band


def _data(n: int = 300, seed: int = 0, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(rng.normal(0.8 * y, 1.0), decimals)  # rounded: ties


@pytest.mark.parametrize("decimals", [1, 6])
def test_roc_points_and_auc_match_sklearn(decimals: int) -> None:
    y, s = _data(decimals=decimals)
    band = roc_band(y, s, n_boot=0)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(band.x, fpr)
    np.testing.assert_allclose(band.y, tpr)
    assert band.area == pytest.approx(roc_auc_score(y, s))
    assert np.all(np.isnan(band.lo)) and band.n_valid == 0


@pytest.mark.parametrize("decimals", [1, 6])
def test_pr_points_and_average_precision_match_sklearn(decimals: int) -> None:
    y, s = _data(seed=1, decimals=decimals)
    band = pr_band(y, s, n_boot=0)
    precision, recall, _ = precision_recall_curve(y, s)
    np.testing.assert_allclose(band.x, recall[::-1][1:])  # sklearn appends (recall 0, precision 1)
    np.testing.assert_allclose(band.y, precision[::-1][1:])
    assert band.area == pytest.approx(average_precision_score(y, s))
    assert band.prevalence == pytest.approx(y.mean())


def test_roc_read_on_the_grid_follows_the_curve() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.5, 0.5, 0.9, 0.3, 0.7])  # a tie between a negative and a positive at 0.5
    band = roc_band(y, s, n_boot=0, n_grid=11)
    # points: (0,0) (0,1/3) (0,2/3) (1/3,1) (2/3,1) (1,1); the tie gives the sloped segment to (1/3, 1)
    assert band.y_grid[0] == pytest.approx(2 / 3)  # top of the vertical step at FPR 0
    assert band.y_grid[1] == pytest.approx(2 / 3 + 0.1)  # linear along the tie segment
    assert np.all(band.y_grid[4:] == 1.0)


def test_band_brackets_the_curve_and_area() -> None:
    y, s = _data(seed=2)
    band = roc_band(y, s, n_boot=300, seed=0)
    assert band.n_valid == 300
    assert np.all(band.lo <= band.hi + 1e-12)
    inside = (band.lo - 1e-9 <= band.y_grid) & (band.y_grid <= band.hi + 1e-9)
    assert inside.mean() > 0.9
    assert band.area_ci[0] < band.area < band.area_ci[1]
    assert roc_band(y, s, n_boot=300, seed=0).lo.tolist() == band.lo.tolist(), "same seed, same band"


def test_resampling_is_by_group_not_by_image() -> None:
    y, s = _data(n=120, seed=3)
    base = pr_band(y, s, groups=None, n_boot=100, seed=5)
    same = pr_band(y, s, groups=[f"g{i}" for i in range(y.size)], n_boot=100, seed=5)
    np.testing.assert_allclose(base.lo, same.lo)
    # Every case twice, both copies in one group: the curves are the same and so is every resample.
    twice = pr_band(np.repeat(y, 2), np.repeat(s, 2), groups=np.repeat(np.arange(y.size), 2), n_boot=100, seed=5)
    np.testing.assert_allclose(twice.lo, base.lo)
    np.testing.assert_allclose(twice.hi, base.hi)
    assert twice.area_ci == pytest.approx(base.area_ci)
    # Resampling images instead would make the band of the doubled data narrower.
    by_image = pr_band(np.repeat(y, 2), np.repeat(s, 2), groups=None, n_boot=100, seed=5)
    assert np.mean(by_image.hi - by_image.lo) < np.mean(base.hi - base.lo)


def _valid_draws(groups_of_positives: set[int], n_groups: int, n_boot: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    valid = 0
    for _ in range(n_boot):
        drawn = set(rng.integers(0, n_groups, n_groups).tolist())
        valid += bool(drawn & groups_of_positives) and bool(drawn - groups_of_positives)
    return valid


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_single_class_resamples_are_skipped(seed: int, caplog: pytest.LogCaptureFixture) -> None:
    # Two groups, one per class: a resample holds both classes only when it draws both groups.
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.5, 0.2, 0.1])
    groups = np.array([0, 0, 0, 1, 1, 1])
    n_boot = 20
    with caplog.at_level(logging.WARNING):
        band = roc_band(y, s, groups, n_boot=n_boot, seed=seed)
    assert band.n_valid == _valid_draws({0}, 2, n_boot, seed)
    assert band.n_valid < n_boot
    if 2 * band.n_valid < n_boot:
        assert np.all(np.isnan(band.lo)) and "hold both classes" in caplog.text
    else:
        assert np.all(np.isfinite(band.lo))


def test_perfect_separation() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    roc, pr = roc_band(y, s, n_boot=200), pr_band(y, s, n_boot=200)
    assert roc.area == 1.0 and pr.area == 1.0
    assert np.all(roc.y_grid == 1.0) and np.all(roc.lo == 1.0) and np.all(roc.hi == 1.0)
    assert np.all(pr.lo == 1.0) and roc.area_ci == (1.0, 1.0)


def test_all_scores_tied_give_the_diagonal() -> None:
    y = np.array([0, 1, 0, 1, 1])
    band = roc_band(y, np.full(5, 0.5), n_boot=0, n_grid=11)
    assert band.area == pytest.approx(0.5)
    np.testing.assert_allclose(band.y_grid, band.grid)
    assert pr_band(y, np.full(5, 0.5), n_boot=0).area == pytest.approx(0.6)


def test_single_class_and_bad_options_raise() -> None:
    with pytest.raises(DataError, match="both classes"):
        roc_band([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError):
        roc_band([0, 1], [0.1, 0.2], n_boot=-1)
    with pytest.raises(ConfigError):
        one_vs_rest_bands([0, 1], [[0.6, 0.4], [0.3, 0.7]], ["a", "b"], kind="det")


def test_per_class_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 240)
    probs = rng.dirichlet(np.ones(3), 240)
    probs[np.arange(240), y] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    out = per_class_auc(y, probs, ["a", "b", "c"], groups=rng.integers(0, 80, 240), n_boot=200)
    for c, name in enumerate("abc"):
        assert out["per_class"][name]["value"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
        lo, hi = out["per_class"][name]["ci95"]
        assert lo < out["per_class"][name]["value"] < hi
    assert out["macro"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_one_vs_rest_leaves_out_absent_classes() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    bands = one_vs_rest_bands(y, probs, ["a", "b", "c"], n_boot=0)
    assert list(bands) == ["a", "b"]
