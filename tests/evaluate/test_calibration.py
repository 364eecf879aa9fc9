"""Tests of medtl.evaluate.calibration against scikit-learn, scipy and hand-computed values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy import optimize, special
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from medtl.errors import ConfigError, DataError
from medtl.evaluate import calibration as cal


def _overconfident(n: int = 4000, k: int = 3, temperature: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z) and logits z * temperature (an over-confident model)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = special.softmax(z, axis=1)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z * temperature, y


def test_reliability_matches_sklearn_calibration_curve() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 500)
    y = (rng.uniform(0, 1, 500) < p**1.5).astype(int)
    curve = cal.reliability_curve(y, p, n_bins=10)
    true, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = curve.counts > 0
    np.testing.assert_allclose(curve.observed[full], true)
    np.testing.assert_allclose(curve.confidence[full], pred)
    assert curve.kind == "positive" and curve.counts.sum() == 500


def test_ece_by_hand() -> None:
    # bin (0, .1]: conf .1, observed .5 -> .4 * 2/4; bin (.8, .9]: conf .9, observed 1 -> .1 * 2/4
    assert cal.expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.25)


def test_bins_are_closed_on_the_right() -> None:
    curve = cal.reliability_curve([0, 0, 1, 1], [0.0, 0.1, 0.5, 1.0], n_bins=10)
    assert curve.counts.tolist() == [2, 0, 0, 0, 1, 0, 0, 0, 0, 1]


def test_two_column_binary_equals_positive_column() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 200)
    y = rng.integers(0, 2, 200)
    probs = np.column_stack([1 - p, p])
    assert cal.expected_calibration_error(y, probs) == pytest.approx(cal.expected_calibration_error(y, p))
    flipped = cal.expected_calibration_error(1 - y, probs[:, ::-1], positive_index=0)
    assert flipped == pytest.approx(cal.expected_calibration_error(y, p))


def test_multiclass_uses_top_label_confidence() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.15, 0.75], [0.2, 0.45, 0.35]])
    y = np.array([0, 1, 2, 1])
    curve = cal.reliability_curve(y, probs, n_bins=10)
    assert curve.kind == "top-label"
    # confidences .7 (right), .6 (wrong), .75 (right), .45 (right): bins (.6,.7], (.5,.6], (.7,.8], (.4,.5]
    expected = (abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.75) + abs(1 - 0.45)) / 4
    assert curve.ece == pytest.approx(expected)


def test_perfectly_calibrated_ece_is_small() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 50_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert cal.expected_calibration_error(y, p) < 0.01


def test_reliability_rejects_bad_input() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        cal.reliability_curve([0, 1], [-0.2, 0.5])
    with pytest.raises(ConfigError):
        cal.reliability_curve([0, 1], [0.2, 0.5], n_bins=0)
    with pytest.raises(DataError):
        cal.reliability_curve([0, 1, 1], [0.2, 0.5])


def test_fit_temperature_recovers_overconfidence() -> None:
    logits, y = _overconfident(temperature=3.0)
    t = cal.fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.15)


def test_fit_temperature_equals_scipy_bounded_minimum() -> None:
    logits, y = _overconfident(n=1500, temperature=2.0, seed=4)

    def nll(log_t: float) -> float:
        return log_loss(y, special.softmax(logits / math.exp(log_t), axis=1), labels=[0, 1, 2])

    best = optimize.minimize_scalar(nll, bounds=(math.log(0.05), math.log(20)), method="bounded",
                                    options={"xatol": 1e-8})
    assert cal.fit_temperature(logits, y) == pytest.approx(math.exp(best.x), rel=1e-3)


def test_fit_on_log_probabilities_equals_fit_on_logits() -> None:
    logits, y = _overconfident(n=1000, seed=5)
    probs = special.softmax(logits, axis=1)
    assert cal.fit_temperature(probs, y, kind="probs") == pytest.approx(cal.fit_temperature(logits, y), rel=1e-4)


def test_temperature_lowers_validation_nll() -> None:
    logits, y = _overconfident(n=1000, seed=6)
    probs = special.softmax(logits, axis=1)
    t = cal.fit_temperature(probs, y, kind="probs")
    scaled = cal.apply_temperature(probs, t)
    assert cal.negative_log_likelihood(y, scaled) < cal.negative_log_likelihood(y, probs)
    assert cal.expected_calibration_error(y, scaled) < cal.expected_calibration_error(y, probs)


def test_apply_temperature_roundtrip_and_identity() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), 50)
    np.testing.assert_allclose(cal.apply_temperature(probs, 1.0), probs, atol=1e-12)
    np.testing.assert_allclose(cal.apply_temperature(cal.apply_temperature(probs, 1.8), 1 / 1.8), probs, atol=1e-9)
    logits = rng.normal(size=(5, 2))
    np.testing.assert_allclose(cal.apply_temperature(logits, 2.0, kind="logits"),
                               special.softmax(logits / 2.0, axis=1))
    with pytest.raises(ConfigError):
        cal.apply_temperature(probs, 0.0)


def test_separable_validation_keeps_temperature_one(caplog: pytest.LogCaptureFixture) -> None:
    logits = np.array([[2.0, -2.0], [-2.0, 2.0], [3.0, -1.0], [-1.0, 3.0]])
    with caplog.at_level(logging.WARNING):
        t = cal.fit_temperature(logits, [0, 1, 0, 1])
    assert t == 1.0 and "classified correctly" in caplog.text


def test_fit_at_a_bound_warns(caplog: pytest.LogCaptureFixture) -> None:
    logits = np.array([[5.0, -5.0], [-5.0, 5.0], [4.0, -4.0]])  # confidently wrong: softer is always better
    with caplog.at_level(logging.WARNING):
        t = cal.fit_temperature(logits, [1, 0, 1])
    assert t == pytest.approx(cal.TEMPERATURE_BOUNDS[1]) and "bound" in caplog.text


def test_single_class_fit_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cal.fit_temperature(np.array([[1.0, 0.0], [0.5, 0.2]]), [0, 0])
    assert "single class" in caplog.text


def test_nll_matches_sklearn() -> None:
    rng = np.random.default_rng(8)
    probs = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 4, 300)
    assert cal.negative_log_likelihood(y, probs) == pytest.approx(log_loss(y, probs, labels=[0, 1, 2, 3]))
