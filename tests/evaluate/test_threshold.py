"""Tests of medtl.evaluate.threshold: rules checked by hand and against scikit-learn's ROC curve."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_curve

from medtl.errors import ConfigError, DataError
from medtl.evaluate.metrics import binary_metrics
from medtl.evaluate.threshold import RULES, choose_threshold, describe_rule, operating_point

# The classic four-case example: cuts at 0.8 / 0.4 / 0.35 / 0.1 give (sens, spec) (.5, 1), (.5, .5), (1, .5), (1, 0).
Y = np.array([0, 0, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8])


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1), 2)  # rounded: many ties


def _sens_spec(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    pred = (s >= t).astype(int)
    return recall_score(y, pred, pos_label=1), recall_score(y, pred, pos_label=0)


@pytest.mark.parametrize(("rule", "target", "expected"), [
    ("fixed", None, 0.5),
    ("fixed", 0.3, 0.3),
    ("youden", None, 0.225),  # J ties at 0.8 and 0.35: the higher sensitivity wins; midpoint of 0.35 and 0.1
    ("sensitivity", 1.0, 0.225),
    ("sensitivity", 0.5, 0.6),  # highest cut reaching 0.5 is 0.8; midpoint of 0.8 and 0.4
    ("specificity", 1.0, 0.6),
    ("specificity", 0.5, 0.225),  # lowest cut keeping specificity 0.5 is 0.35
])
def test_hand_computed_thresholds(rule: str, target: float | None, expected: float) -> None:
    assert choose_threshold(Y, S, rule, target) == pytest.approx(expected)


def test_fixed_needs_no_data() -> None:
    assert choose_threshold([], [], "fixed") == 0.5
    point = operating_point([], [], "fixed", 0.4)
    assert point.threshold == 0.4 and point.n_positive == 0
    assert json.loads(json.dumps(point.to_dict()))["sensitivity"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_matches_sklearn_roc(seed: int) -> None:
    y, s = _data(seed=seed)
    fpr, tpr, _ = roc_curve(y, s)
    t = choose_threshold(y, s, "youden")
    sens, spec = _sens_spec(y, s, t)
    assert sens + spec - 1 == pytest.approx(np.max(tpr - fpr))
    assert t not in set(s.tolist()), "the threshold lies between validation scores"


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_target_is_met_with_best_specificity(target: float) -> None:
    y, s = _data(seed=3)
    t = choose_threshold(y, s, "sensitivity", target)
    sens, spec = _sens_spec(y, s, t)
    assert sens >= target
    fpr, tpr, _ = roc_curve(y, s)
    assert spec == pytest.approx(np.max(1 - fpr[tpr >= target]))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_specificity_target_is_met_with_best_sensitivity(target: float) -> None:
    y, s = _data(seed=4)
    t = choose_threshold(y, s, "specificity", target)
    sens, spec = _sens_spec(y, s, t)
    assert spec >= target
    fpr, tpr, _ = roc_curve(y, s)
    assert sens == pytest.approx(np.max(tpr[1 - fpr >= target]))


def test_ties_are_classified_together() -> None:
    y, s = np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])
    t = choose_threshold(y, s, "youden")  # J .5 at 0.9 and at 0.5 -> the lower cut, between 0.5 and 0.2
    assert t == pytest.approx(0.35)
    assert (s[:2] >= t).all()


def test_perfect_separation_threshold_is_between_the_classes() -> None:
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    t = choose_threshold(y, s, "youden")
    assert t == pytest.approx(0.5)
    assert binary_metrics(y, s, t)["accuracy"] == 1.0


def test_unreachable_specificity_predicts_nothing_positive(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        t = choose_threshold([0, 1], [0.9, 0.9], "specificity", 1.0)
    assert t > 0.9 and "no validation threshold" in caplog.text


def test_sensitivity_rule_works_without_negatives() -> None:
    assert choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], "sensitivity", 1.0) == pytest.approx(0.2)


@pytest.mark.parametrize(("rule", "target", "labels"), [
    ("youden", None, [1, 1, 1]), ("youden", None, [0, 0, 0]),
    ("sensitivity", 0.9, [0, 0, 0]), ("specificity", 0.9, [1, 1, 1])])
def test_missing_class_raises_data_error(rule: str, target: float | None, labels: list[int]) -> None:
    with pytest.raises(DataError, match="validation data"):
        choose_threshold(labels, [0.1, 0.5, 0.9], rule, target)


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'youden'"):
        choose_threshold(Y, S, "youdn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a target"):
        choose_threshold(Y, S, "sensitivity")
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        choose_threshold(Y, S, "specificity", 1.5)


def test_malformed_input_raises_data_error() -> None:
    with pytest.raises(DataError):
        choose_threshold([0, 1], [0.1, np.nan], "youden")
    with pytest.raises(DataError):
        choose_threshold([0, 1, 1], [0.1, 0.2], "youden")
    with pytest.raises(DataError):
        choose_threshold([0, 2], [0.1, 0.2], "youden")


def test_operating_point_records_what_the_threshold_achieves() -> None:
    y, s = _data(seed=5)
    point = operating_point(y, s, "sensitivity", 0.9)
    m = binary_metrics(y, s, point.threshold)
    assert point.sensitivity == pytest.approx(m["sensitivity"]) and point.sensitivity >= 0.9
    assert point.specificity == pytest.approx(m["specificity"])
    assert (point.n_positive, point.n_negative) == (int(y.sum()), int((1 - y).sum()))
    stored = json.loads(json.dumps(point.to_dict()))
    assert stored["rule"] == "sensitivity" and stored["target"] == 0.9
    assert "sensitivity >= 0.9" in point.describe()


def test_rule_names() -> None:
    assert set(RULES) == {"fixed", "youden", "sensitivity", "specificity"}
    assert describe_rule("youden", None) == "Youden's J"
    assert describe_rule("fixed", None) == "fixed 0.5"
