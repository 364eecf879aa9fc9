"""The run summary's collapse guard (medtl.experiment.collapse_warnings) on hand-made metrics."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.experiment import collapse_warnings


def metrics(accuracy: float, sensitivity: float, specificity: float, auc: float) -> dict:
    return {k: {"value": v} for k, v in
            {"accuracy": accuracy, "sensitivity": sensitivity, "specificity": specificity, "auc": auc}.items()}


LABELS = np.array([0] * 40 + [1] * 60)


@pytest.mark.parametrize(("m", "warned"), [
    (metrics(0.60, 1.00, 0.00, 0.50), True),   # all positive, AUC at chance
    (metrics(0.648, 1.00, 0.092, 0.757), True),  # the brain MRI scratch CNN: one-sided although AUC > 0.6
    (metrics(0.60, 0.70, 0.45, 0.55), True),   # accuracy at the majority rate and AUC < 0.6
    (metrics(0.877, 0.871, 0.888, 0.955), False),
    (metrics(0.60, 0.70, 0.45, 0.80), False),  # majority-rate accuracy but a useful ranking
])
def test_collapse_guard(m: dict, warned: bool) -> None:
    found = collapse_warnings(m, LABELS)
    assert bool(found) == warned
    if warned:
        assert "collapsed" in found[0] and "class_weights" in found[0]
