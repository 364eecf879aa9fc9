"""The decision rule: chosen on validation predictions only, checked before training, a pure function."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.config import EvaluateConfig
from medtl.errors import MedtlError
from medtl.evaluate.operating import calibrate, check_validation, choose_operating_point, needs_validation


def test_a_rule_that_needs_validation_fails_before_training() -> None:
    ev = EvaluateConfig(threshold_rule="youden")
    assert needs_validation(ev, 1, 2) == ["evaluate.threshold_rule 'youden'"]
    with pytest.raises(MedtlError, match=r"fold\(s\) \[1\] have no validation images"):
        check_validation(ev, 1, 2, [5, 0])
    check_validation(ev, None, 3, [0, 0])  # multiclass: the threshold is not chosen, nothing needs validation
    check_validation(EvaluateConfig(threshold_rule="fixed"), 1, 2, [0])


def test_choice_is_pure_and_comes_from_validation() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    p1 = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    before = probs.copy()
    choice = choose_operating_point(EvaluateConfig(threshold_rule="youden", temperature_scaling=True), labels,
                                    probs, 1, 2)
    np.testing.assert_array_equal(probs, before)  # inputs untouched
    assert choice.rule["rule"] == "youden" and choice.temperature is not None
    assert not np.allclose(calibrate(probs, choice), probs)
    fixed = choose_operating_point(EvaluateConfig(), labels, probs, 1, 2)
    assert fixed.rule == {"rule": "fixed", "threshold": 0.5} and fixed.temperature is None
    np.testing.assert_array_equal(calibrate(probs, fixed), probs)
