import math

import pytest
from scipy.stats import binomtest

from qlora.eval.stats import compare_accuracies, differ_beyond_noise, mean_interval, ratio_interval, wilson_interval


@pytest.mark.parametrize("k,n,expected", [
    (5, 10, (0.2366, 0.7634)),  # textbook values
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
])  # fmt: skip
def test_wilson_known_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


@pytest.mark.parametrize("k,n", [(1, 3), (37, 100), (812, 14042), (99, 100)])
def test_wilson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must"):
        wilson_interval(0, -1)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_compare_accuracies():
    # 55% vs 50% on 100 each is noise; on 10,000 each it is not.
    assert not differ_beyond_noise(55, 100, 50, 100)
    assert differ_beyond_noise(5500, 10000, 5000, 10000)
    c = compare_accuracies(60, 100, 40, 100)
    assert c.difference == pytest.approx(0.2)
    assert c.z == pytest.approx(0.2 / math.sqrt(0.25 * 0.02))  # pooled p = 0.5
    assert c.p_value == pytest.approx(0.004677, abs=1e-5) and c.significant
    assert compare_accuracies(10, 10, 20, 20).p_value == 1.0
    with pytest.raises(ValueError, match="empty"):
        compare_accuracies(0, 0, 1, 2)


def test_mean_interval():
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * math.sqrt((5 / 3) / 4)
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    with pytest.raises(ValueError):
        mean_interval([])


def test_ratio_interval():
    # equal denominators: the mean interval of the ratios
    r, lo, hi = ratio_interval([2.0, 4.0, 6.0, 8.0], [2.0, 2.0, 2.0, 2.0])
    assert (r, lo, hi) == pytest.approx(mean_interval([1.0, 2.0, 3.0, 4.0]))
    # unequal: token-weighted r = 6 / 10; residuals x - r y = (1 - 1.8, 5 - 4.2) = (-0.8, 0.8), n/(n-1) = 2
    r, lo, hi = ratio_interval([1.0, 5.0], [3.0, 7.0])
    half = 1.959963984540054 * math.sqrt(2 * (0.64 + 0.64)) / 10
    assert (r, lo, hi) == pytest.approx((0.6, 0.6 - half, 0.6 + half))
    assert ratio_interval([3.0], [2.0]) == (1.5, 1.5, 1.5)
    with pytest.raises(ValueError, match="positive"):
        ratio_interval([1.0], [0.0])
    with pytest.raises(ValueError, match="as many"):
        ratio_interval([1.0, 2.0], [1.0])
