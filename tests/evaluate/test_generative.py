"""Fréchet distance and improved precision/recall on feature vectors (hand-checked cases)."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.evaluate.generative import frechet_distance, precision_recall


def test_fd_of_a_set_with_itself_is_zero_and_with_noise_large() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    noise = rng.uniform(-5, 5, size=(300, 16)) + 3.0
    assert frechet_distance(x, noise) > 100 * frechet_distance(x, rng.normal(size=(300, 16)))


def test_fd_matches_the_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(2.0, 3.0, size=(20000, 3))
    # |mu1-mu2|^2 + sum (s1 - s2)^2 = 3·4 + 3·(1-3)^2 = 24
    assert frechet_distance(a, b) == pytest.approx(24.0, rel=0.03)


def test_fd_with_fewer_samples_than_dimensions_stays_finite() -> None:
    rng = np.random.default_rng(2)
    value = frechet_distance(rng.normal(size=(10, 64)), rng.normal(size=(12, 64)))
    assert np.isfinite(value) and value > 0


def test_precision_recall_identical_sets_are_one_and_far_sets_zero() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_and_recall_separate_fidelity_from_coverage() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(400, 2))
    collapsed = rng.normal(scale=0.1, size=(400, 2))  # all inside the real manifold, covering only its centre
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.95 and recall < 0.5
    spread = rng.normal(scale=4.0, size=(400, 2))  # covers the real set, mostly outside it
    precision, recall = precision_recall(real, spread)
    assert precision < 0.5 and recall > 0.9


def test_precision_recall_needs_more_points_than_k() -> None:
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
