"""Output-length predictor: prior, online least squares per language, error spread."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.policy import LengthConfig, LengthModel, observe_length, predict_length

CFG = LengthConfig()


def test_empty_model_predicts_the_prior_line():
    p = predict_length(LengthModel(), "en", 10, CFG)
    assert p.tokens == pytest.approx(CFG.prior_intercept + CFG.prior_slope * 10)
    assert p.sd > 0


def test_learns_a_line_per_language():
    rng = np.random.default_rng(0)
    model = LengthModel()
    for _ in range(400):
        x = int(rng.integers(3, 40))
        model = observe_length(model, "en", x, round(2 + 1.0 * x), CFG)
        model = observe_length(model, "de", x, round(5 + 2.0 * x), CFG)
    assert predict_length(model, "en", 20, CFG).tokens == pytest.approx(22, abs=0.7)
    assert predict_length(model, "de", 20, CFG).tokens == pytest.approx(45, abs=0.7)
    # An unseen language borrows the pooled line, between the two.
    assert 22 < predict_length(model, "fr", 20, CFG).tokens < 45
    # Exact lines leave rounding errors and the fading errors of the first guesses: the spread
    # shrinks far below the prior's (half the prediction, 11 steps).
    assert predict_length(model, "en", 20, CFG).sd < 3


def test_noisy_lengths_give_a_matching_spread():
    rng = np.random.default_rng(1)
    model = LengthModel()
    for _ in range(1500):
        x = int(rng.integers(3, 40))
        model = observe_length(model, "es", x, int(round(10 + x + rng.normal(0, 5))), CFG)
    assert predict_length(model, "es", 20, CFG).sd == pytest.approx(5, rel=0.25)


def test_predictions_stay_within_bounds():
    model = observe_length(LengthModel(), "en", 5, 1, CFG)
    assert predict_length(model, "en", 0, CFG).tokens >= CFG.min_tokens
    assert predict_length(model, "en", 10**6, CFG).tokens <= CFG.max_tokens
