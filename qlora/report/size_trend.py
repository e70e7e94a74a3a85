"""A per-layer statistic against model size: per-model means, the trend over models and within a family,
each with a bootstrap interval over layers (claim i: "outliers grow with model size").

Each model contributes the mean of a statistic over its layers (weight matrices). The trend is the
least-squares slope of those means on log10 of the model's parameter count; its interval comes from a
stratified bootstrap: every resample draws each model's layers with replacement (as many as it has),
recomputes the means and the slope. Spearman's rank correlation of the resampled means with size is
bootstrapped the same way. A within-family difference (the larger model's mean minus the smaller's) is
the cleanest comparison, since family (architecture, training data, source format) is held fixed.

Note (what the interval covers): the layers of each model are resampled, the models are not: the
interval says how precisely these models' means are known, not how a population of models behaves.
With a handful of models from different families, size and family are confounded; reports say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

_Z_POWER = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))  # two-sided 5%, 80% power


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval and the bootstrap standard error."""

    value: float
    low: float
    high: float
    se: float

    @property
    def mde(self) -> float:
        """The smallest effect this sample had 80% power to detect (two-sided 5%): 2.8 standard errors."""
        return _Z_POWER * self.se

    def as_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "mde": self.mde}


def _estimate(value: float, draws: np.ndarray, confidence: float) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Estimate(value, float("nan"), float("nan"), float("nan"))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high), float(draws.std(ddof=1)) if draws.size > 1 else 0.0)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc**2).sum())


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


@dataclasses.dataclass(frozen=True)
class SizeTrend:
    """Per-model means and the trend of one statistic over model size.

    Attributes:
        means: per model (in the order given), the mean over its layers with its interval.
        slope: change of the mean per tenfold parameters (None with fewer than two models).
        spearman: rank correlation of the means with size (None with fewer than three models).
        within: for each (smaller, larger) pair named, the larger's mean minus the smaller's.
        layers: layers per model; resamples / confidence: of the bootstrap.
    """

    means: dict[str, Estimate]
    slope: Estimate | None
    spearman: Estimate | None
    within: dict[str, Estimate]
    layers: dict[str, int]
    resamples: int
    confidence: float

    def as_dict(self) -> dict:
        return {"means": {k: v.as_dict() for k, v in self.means.items()},
                "slope_per_decade": self.slope.as_dict() if self.slope else None,
                "spearman": self.spearman.as_dict() if self.spearman else None,
                "within_family": {k: v.as_dict() for k, v in self.within.items()},
                "layers": dict(self.layers), "resamples": self.resamples, "confidence": self.confidence}  # fmt: skip


def size_trend(values: Mapping[str, Sequence[float]], sizes: Mapping[str, int], *, pairs: Sequence[tuple[str, str]] = (),
               n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> SizeTrend:  # fmt: skip
    """The trend of a per-layer statistic over model size, with a stratified bootstrap over layers.

    Args:
        values: per model, the statistic of each of its layers.
        sizes: per model, its parameter count (the trend is over log10 of it).
        pairs: (smaller, larger) models of one family to compare directly (key "larger - smaller").
        n_resamples / confidence / seed: the bootstrap.

    Returns:
        SizeTrend.

    Raises:
        ValueError: a model without layers or size, a non-positive size, models of equal size for a
            slope, or a pair naming a model that is not in `values`.
    """
    names = list(values)
    arrays = {m: np.asarray(values[m], dtype=np.float64) for m in names}
    for m in names:
        if arrays[m].size == 0:
            raise ValueError(f"model {m!r} has no layers")
        if m not in sizes or not sizes[m] > 0:
            raise ValueError(f"model {m!r} needs a positive parameter count, got {sizes.get(m)!r}")
    for small, large in pairs:
        if small not in arrays or large not in arrays:
            raise ValueError(f"pair ({small!r}, {large!r}) names a model without layers; models: {names}")
    x = np.log10(np.asarray([sizes[m] for m in names], dtype=np.float64))
    if len(names) >= 2 and np.ptp(x) == 0:
        raise ValueError("every model has the same parameter count: no trend over size")
    rng = np.random.default_rng(seed)
    draws = np.empty((n_resamples, len(names)))
    for j, m in enumerate(names):  # stratified: each model's layers resampled on their own
        a = arrays[m]
        draws[:, j] = a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(axis=1)
    point = np.asarray([arrays[m].mean() for m in names])
    means = {m: _estimate(point[j], draws[:, j], confidence) for j, m in enumerate(names)}
    slope = spearman = None
    if len(names) >= 2:
        slope = _estimate(_slope(x, point), np.asarray([_slope(x, d) for d in draws]), confidence)
    if len(names) >= 3:
        spearman = _estimate(_spearman(x, point), np.asarray([_spearman(x, d) for d in draws]), confidence)
    within = {}
    for small, large in pairs:
        i, j = names.index(small), names.index(large)
        within[f"{large} - {small}"] = _estimate(point[j] - point[i], draws[:, j] - draws[:, i], confidence)
    return SizeTrend(means, slope, spearman, within, {m: int(arrays[m].size) for m in names}, n_resamples, confidence)
