"""A per-layer statistic against model size (`qlora.report.size_trend`): slope, rank correlation and
within-family differences with a stratified bootstrap over layers."""

import math

import numpy as np
import pytest

from qlora.report.size_trend import size_trend

SIZES = {"small": 10**8, "medium": 10**9, "large": 10**10}


def test_constant_layers_give_the_exact_slope_and_a_degenerate_interval():
    values = {"small": [1.0] * 5, "medium": [2.0] * 7, "large": [3.0] * 3}
    t = size_trend(values, SIZES, pairs=[("small", "medium")], n_resamples=200)
    assert t.slope.value == pytest.approx(1.0) and t.slope.low == pytest.approx(1.0) and t.slope.high == pytest.approx(1.0)
    assert t.slope.se == pytest.approx(0.0, abs=1e-12) and t.slope.mde == pytest.approx(0.0, abs=1e-12)
    assert t.within["medium - small"].value == pytest.approx(1.0)
    assert t.layers == {"small": 5, "medium": 7, "large": 3}
    assert t.spearman.value == pytest.approx(1.0)


def test_a_rising_statistic_has_an_interval_above_zero_and_a_falling_one_below():
    rng = np.random.default_rng(0)
    rising = {m: rng.normal(mu, 0.5, size=40) for m, mu in zip(SIZES, (1.0, 2.0, 3.0))}
    t = size_trend(rising, SIZES, pairs=[("medium", "large")], seed=1)
    assert 0.6 < t.slope.value < 1.4 and t.slope.low > 0
    assert t.within["large - medium"].low > 0
    # the interval of a model's mean is about its standard error x 1.96 either side
    m = t.means["small"]
    assert m.high - m.low == pytest.approx(2 * 1.96 * rising["small"].std() / math.sqrt(40), rel=0.2)
    assert t.slope.mde == pytest.approx(2.8016 * t.slope.se, rel=1e-3)
    falling = {m: -v for m, v in rising.items()}
    assert size_trend(falling, SIZES, seed=1).slope.high < 0


def test_noise_without_a_trend_covers_zero():
    rng = np.random.default_rng(2)
    t = size_trend({m: rng.normal(0.0, 1.0, size=30) for m in SIZES}, SIZES, seed=3)
    assert t.slope.low < 0 < t.slope.high


def test_the_bootstrap_is_seeded():
    values = {m: np.arange(10.0) * (i + 1) for i, m in enumerate(SIZES)}
    a, b = size_trend(values, SIZES, seed=5), size_trend(values, SIZES, seed=5)
    assert a.as_dict() == b.as_dict()
    assert size_trend(values, SIZES, seed=6).slope.low != a.slope.low


def test_two_models_give_a_slope_but_no_rank_correlation():
    t = size_trend({"small": [1.0, 1.2], "large": [2.0, 2.2]}, SIZES, n_resamples=100)
    assert t.slope.value == pytest.approx(0.5) and t.spearman is None


@pytest.mark.parametrize("values, sizes, pairs, message", [
    ({"small": []}, SIZES, (), "model 'small' has no layers"),
    ({"x": [1.0]}, SIZES, (), "model 'x' needs a positive parameter count, got None"),
    ({"small": [1.0], "medium": [2.0]}, {"small": 5, "medium": 5}, (), "same parameter count"),
    ({"small": [1.0]}, SIZES, [("small", "large")], r"pair \('small', 'large'\) names a model without layers"),
])  # fmt: skip
def test_bad_inputs(values, sizes, pairs, message):
    with pytest.raises(ValueError, match=message):
        size_trend(values, sizes, pairs=pairs, n_resamples=100)
