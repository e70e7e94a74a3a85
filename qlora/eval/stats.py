"""Statistical error of evaluation scores: Wilson intervals and a noise test for two accuracies.

Our models are small and our evaluation sets subsampled, so differences between data types are often
within noise; every table marks those (issue 6). Wilson's score interval (Wilson, 1927) keeps its
coverage near 95% for accuracies close to 0 or 1 and small n, where the normal (Wald) interval fails.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def _check_count(successes: int, n: int) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    # a fractional count is allowed: ties scored 1/k make accuracy a mean of values in [0, 1]
    if isinstance(successes, bool) or not isinstance(successes, (int, float)) or not 0 <= successes <= n:
        raise ValueError(f"successes must be a number in [0, n={n}], got {successes!r}")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes / n.

    Returns:
        (low, high) in [0, 1]; (0.0, 1.0) when n == 0 (nothing measured).

    Raises:
        ValueError: n < 0 or successes outside [0, n].
    """
    _check_count(successes, n)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): the normal-approximation interval of a mean (for RougeL, per-window NLL).

    Raises:
        ValueError: `values` is empty.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, mean, mean
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean, mean - half, mean + half


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(ratio, low, high): sum(numerators) / sum(denominators) with the normal-approximation interval
    of a ratio estimator (linearisation: the residuals x_i - r * y_i), e.g. the token-weighted mean NLL
    over windows or examples of different lengths. With equal denominators it equals `mean_interval`
    of x_i / y_i.

    Raises:
        ValueError: no values, lengths differ, or the denominators do not sum to a positive number.
    """
    n = len(numerators)
    if n == 0 or n != len(denominators):
        raise ValueError(f"need as many numerators as denominators (>= 1), got {n} and {len(denominators)}")
    total = math.fsum(denominators)
    if not total > 0:
        raise ValueError(f"denominators must sum to a positive number, got {total}")
    ratio = math.fsum(numerators) / total
    if n == 1:
        return ratio, ratio, ratio
    residuals = math.fsum((x - ratio * y) ** 2 for x, y in zip(numerators, denominators))
    half = z * math.sqrt(n / (n - 1) * residuals) / total
    return ratio, ratio - half, ratio + half


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two accuracies compared by an unpaired two-proportion z-test (pooled variance).

    Attributes:
        difference: accuracy a - accuracy b.
        z: the test statistic (0 when both are 0% or both 100%).
        p_value: two-sided.
        significant: p_value < alpha, i.e. the difference exceeds the noise.
    """

    difference: float
    z: float
    p_value: float
    significant: bool


def compare_accuracies(correct_a: int, n_a: int, correct_b: int, n_b: int, alpha: float = 0.05) -> Comparison:
    """Whether accuracy a = correct_a / n_a differs from b beyond sampling noise.

    Raises:
        ValueError: counts out of range, an empty sample, or alpha outside (0, 1).
    """
    _check_count(correct_a, n_a)
    _check_count(correct_b, n_b)
    if n_a == 0 or n_b == 0:
        raise ValueError(f"cannot compare accuracies over empty samples (n_a={n_a}, n_b={n_b})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    pa, pb = correct_a / n_a, correct_b / n_b
    pooled = (correct_a + correct_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = 0.0 if se == 0 else (pa - pb) / se
    p = math.erfc(abs(z) / math.sqrt(2))
    return Comparison(difference=pa - pb, z=z, p_value=p, significant=p < alpha)


def differ_beyond_noise(correct_a: int, n_a: int, correct_b: int, n_b: int, alpha: float = 0.05) -> bool:
    """True when the two accuracies differ significantly at level alpha (see `compare_accuracies`)."""
    return compare_accuracies(correct_a, n_a, correct_b, n_b, alpha).significant
