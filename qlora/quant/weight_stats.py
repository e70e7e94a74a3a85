"""Outlier statistics of a weight matrix, as blockwise quantization sees it (issue 19, claim i).

The paper motivates blockwise quantization with outliers: one large weight sets its block's absmax and
squeezes every other weight of the block onto a few codes; "the number of outliers in the weight
distribution tends to increase with the model size". Three statistics per weight matrix:

- excess kurtosis over the whole matrix (Fisher: 0 for a normal distribution; heavy tails > 0);
- outlier share: the share of weights farther than `sigmas` standard deviations from the mean of their
  own block of `block_size` consecutive weights (row-major, as `qlora.quantize` cuts blocks; a last short
  block counts as a block). Within a block of 64 no weight can lie beyond (64 - 1) / sqrt(64) ~ 7.9
  sigma, and beyond 6 sigma only a weight about 9x the scale of the rest of its block: the weights that
  set a block's absmax alone;
- absmax spread: the largest block absmax over the median block absmax (1 when every block has the
  same range; large when a few blocks hold outliers).

Everything is computed in float64 from the float values given.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class WeightStats:
    """Statistics of one weight matrix (see the module docstring).

    Attributes:
        numel: weights.
        excess_kurtosis: Fisher's, over all weights.
        outlier_share: share of weights beyond `sigmas` sigma of their block's mean.
        outliers: how many weights that is.
        absmax_spread: max / median of the block absmax.
        tensor_outlier_share: share beyond `sigmas` sigma of the whole matrix's mean (for comparison).
    """

    numel: int
    excess_kurtosis: float
    outlier_share: float
    outliers: int
    absmax_spread: float
    tensor_outlier_share: float


def _blocks(flat: np.ndarray, block_size: int) -> list[np.ndarray]:
    """The whole blocks as one (n, block_size) array, and a short last block on its own."""
    whole = flat.size // block_size * block_size
    out = [flat[:whole].reshape(-1, block_size)] if whole else []
    if whole < flat.size:
        out.append(flat[whole:].reshape(1, -1))
    return out


def weight_stats(weights, *, block_size: int = 64, sigmas: float = 6.0) -> WeightStats:
    """Statistics of one weight matrix (any shape; flattened row-major).

    Args:
        weights: a numpy array or a torch tensor of floats.
        block_size: weights per block (the quantizer's block: 64 for NF4).
        sigmas: how many of its block's standard deviations make a weight an outlier.

    Returns:
        WeightStats.

    Raises:
        ValueError: an empty array, a non-finite value, block_size < 2 or sigmas <= 0.
    """
    if hasattr(weights, "detach"):
        weights = weights.detach().float().cpu().numpy()
    flat = np.asarray(weights, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        raise ValueError("weight_stats needs at least one weight, got an empty array")
    if not np.isfinite(flat).all():
        raise ValueError("weight_stats needs finite weights; the array holds NaN or Inf")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
    if not sigmas > 0:
        raise ValueError(f"sigmas must be > 0, got {sigmas!r}")
    centred = flat - flat.mean()
    var = float(np.mean(centred**2))
    kurtosis = float(np.mean(centred**4) / var**2 - 3.0) if var > 0 else 0.0
    tensor_outliers = int(np.count_nonzero(np.abs(centred) > sigmas * np.sqrt(var))) if var > 0 else 0
    outliers, absmax = 0, []
    for block in _blocks(flat, block_size):
        dev = np.abs(block - block.mean(axis=1, keepdims=True))
        sd = block.std(axis=1, keepdims=True)
        outliers += int(np.count_nonzero((dev > sigmas * sd) & (sd > 0)))
        absmax.append(np.abs(block).max(axis=1))
    absmax = np.concatenate(absmax)
    median = float(np.median(absmax))
    spread = float(absmax.max() / median) if median > 0 else float("inf") if absmax.max() > 0 else 1.0
    return WeightStats(numel=int(flat.size), excess_kurtosis=kurtosis, outlier_share=outliers / flat.size, outliers=outliers,
                       absmax_spread=spread, tensor_outlier_share=tensor_outliers / flat.size)  # fmt: skip
