"""Outlier statistics of a weight matrix (`qlora.quant.weight_stats`) on synthetic weights whose kurtosis
and outliers are known."""

import numpy as np
import pytest
import torch
from scipy import stats

from qlora.quant.weight_stats import weight_stats


def test_normal_weights_have_no_excess_kurtosis_and_no_block_outliers():
    w = np.random.default_rng(0).standard_normal((512, 1024))
    s = weight_stats(w)
    assert s.numel == 512 * 1024
    assert abs(s.excess_kurtosis) < 0.03  # sd of the estimate ~ sqrt(24 / n) ~ 0.007
    assert s.outliers == 0 and s.outlier_share == 0.0  # beyond 6 sigma of a block of 64 needs ~9x the block's scale
    assert s.tensor_outlier_share < 1e-5  # P(|z| > 6) ~ 2e-9
    assert 1.2 < s.absmax_spread < 2.5  # Gaussian blocks of 64: absmax ~2.4 sigma, the largest of 8,192 ~4.5 sigma


def test_laplace_weights_have_excess_kurtosis_three():
    w = np.random.default_rng(1).laplace(size=(1024, 1024))
    assert weight_stats(w).excess_kurtosis == pytest.approx(3.0, abs=0.15)


def test_planted_outliers_are_counted_exactly_in_their_blocks():
    rng = np.random.default_rng(2)
    w = rng.standard_normal(64 * 1000) * 0.02
    planted = [5, 64 * 10 + 3, 64 * 500 + 63, 64 * 999]  # one in each of four blocks
    w[planted] = [0.5, -0.6, 0.7, -0.5]  # ~25-35x the scale: beyond 6 sigma of their block (sigma includes the outlier)
    s = weight_stats(w.reshape(1000, 64))
    assert s.outliers == 4
    assert s.outlier_share == 4 / w.size
    median = np.median(np.abs(w.reshape(-1, 64)).max(axis=1))
    assert s.absmax_spread == pytest.approx(0.7 / median)
    assert s.excess_kurtosis == pytest.approx(stats.kurtosis(w, fisher=True, bias=True), rel=1e-9)
    assert 40 < s.excess_kurtosis < 47  # four values of ~30 sigma among 64,000: m4 / m2^2 - 3 ~ 43


def test_two_outliers_in_one_block_hide_each_other_at_six_sigma():
    w = np.random.default_rng(3).standard_normal(64 * 4) * 0.02
    w[[0, 1]] = [0.5, 0.5]  # the block's sigma grows with both: each is below 6 of it
    assert weight_stats(w).outliers == 0
    assert weight_stats(w, sigmas=4.0).outliers == 2


def test_constant_blocks_and_a_short_last_block():
    w = np.zeros(64 * 3 + 10)
    w[64 * 3 + 2] = 1.0  # the short last block (10 weights): 1.0 is 3 sigma of it, not 6
    s = weight_stats(w)
    assert s.numel == 202 and s.outliers == 0
    assert weight_stats(w, sigmas=2.5).outliers == 1  # the short block counts as a block
    assert s.absmax_spread == float("inf")  # the median block absmax is 0
    assert weight_stats(np.ones(128)).absmax_spread == 1.0 and weight_stats(np.ones(128)).excess_kurtosis == 0.0


def test_torch_tensors_and_block_size():
    t = torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    t[0, 0] = 40.0
    assert weight_stats(t).outliers == 1
    assert weight_stats(t.to(torch.bfloat16)).outliers == 1
    assert weight_stats(t, block_size=4096).outliers == 1  # one block: 40 is ~35 sigma of the matrix too


@pytest.mark.parametrize("weights, kwargs, message", [
    (np.zeros(0), {}, "at least one weight"),
    (np.array([1.0, np.nan]), {}, "finite"),
    (np.ones(8), {"block_size": 1}, "block_size must be an integer >= 2, got 1"),
    (np.ones(8), {"sigmas": 0}, "sigmas must be > 0, got 0"),
])  # fmt: skip
def test_bad_inputs(weights, kwargs, message):
    with pytest.raises(ValueError, match=message):
        weight_stats(weights, **kwargs)
