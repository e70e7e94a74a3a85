"""The AF4 ("Abnormal Float") codebook construction (Yoshida 2023, arXiv:2306.06965).

NF4 places its codes at quantiles of N(0, 1), but what a blockwise quantizer rounds is x / absmax of a
block of B weights, whose distribution depends on B: with probability 1/B the value is the block's
extreme (exactly -1 or +1), otherwise it is Z / M with M the largest |Z| of the block and Z normal
truncated to [-M, M]. AF4-B puts each code at the median of the values that round to it (the
condition for minimum expected L1 error), with -1, 0 and +1 fixed, 6 negative and 7 positive interior
codes.

The model of the note (and its published code): M has the density of the largest of B half-normal
values, f_M(m) = B (2 Phi(m) - 1)^(B-1) 2 phi(m), and for |x| < 1

    F(x) = 1 / (2B) + (B - 1) / B * E_M[(Phi(M x) - Phi(-M)) / (Phi(M) - Phi(-M))].

The codes of one half are built by shooting: from the first code c1, each next code is placed so that
the current code is the median of its cell (cells end at the midpoints between codes); c1 is chosen
so that the last code's cell ends at x = 0 (F = 1/2). The negative half has 6 codes; the positive half
is the mirror image of the negative construction with 7 codes. Only this construction is reproduced
here (float64, Simpson's rule over M, bisection); `codebooks.AF4_64_CODE` holds its result for B = 64.
The construction takes about two minutes on one CPU core; tests check the conditions, not the search.
"""

from __future__ import annotations

import math

import torch

_M_MAX = 8.0  # P(M > 8) is below 1e-13 for the block sizes used here
_M_POINTS = 20001  # odd: Simpson's rule


class BlockNormalizedCDF:
    """F(x) of x / absmax for blocks of `block_size` i.i.d. N(0, 1) values, as in the module docstring."""

    def __init__(self, block_size: int) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
            raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
        self.block_size = block_size
        m = torch.linspace(0.0, _M_MAX, _M_POINTS, dtype=torch.float64)
        simpson = torch.ones_like(m)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        phi = torch.exp(-m * m / 2) / math.sqrt(2 * math.pi)
        density = block_size * (2 * torch.special.ndtr(m) - 1) ** (block_size - 1) * 2 * phi
        self._m = m
        self._weights = simpson * (_M_MAX / (_M_POINTS - 1)) / 3 * density
        self._low = torch.special.ndtr(-m)
        self._width = (torch.special.ndtr(m) - self._low).clamp_min(1e-300)

    def __call__(self, x: float) -> float:
        b = self.block_size
        if x < -1:
            return 0.0
        if x >= 1:
            return 1.0
        inside = (torch.special.ndtr(self._m * x) - self._low) / self._width
        inside[0] = (1 + x) / 2  # the limit m -> 0
        return 1 / (2 * b) + (b - 1) / b * float((self._weights * inside).sum())

    def inverse(self, p: float) -> float:
        """The x with F(x) = p inside (-1, 1); -1 or 1 in the point masses at the ends."""
        edge = 1 / (2 * self.block_size)
        if p <= edge:
            return -1.0
        if p >= 1 - edge:
            return 1.0
        lo, hi = -1.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self(mid) < p else (lo, mid)
        return (lo + hi) / 2


def _shoot(cdf: BlockNormalizedCDF, first: float, n_steps: int) -> list[float]:
    """Codes first, c2, ... (n_steps more) in (-1, 0), each the median of its cell; 0-padded past 0."""
    codes = [first]
    previous, current = -1.0, first
    cell_start = cdf((previous + current) / 2)
    for _ in range(n_steps):
        cell_end = 2 * cdf(current) - cell_start  # the current code is the median of [start, end]
        if cell_end > 1:
            nxt = 1.0
        else:
            nxt = 2 * cdf.inverse(cell_end) - current
            cell_start, previous, current = cell_end, current, nxt
        if nxt >= 0:
            return codes + [0.0] * (n_steps + 1 - len(codes))
        codes.append(nxt)
    return codes


def _half(cdf: BlockNormalizedCDF, n_steps: int) -> list[float]:
    """The n_steps + 1 interior negative codes whose last cell ends at 0."""

    def feasible(first: float) -> bool:
        c = _shoot(cdf, first, n_steps)
        return all(b > a for a, b in zip(c, c[1:])) and all(v < 0 for v in c)

    lo, hi = -1 + 1e-5, -1e-5  # the largest first code that still gives increasing codes below 0
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid)

    def excess(first: float) -> float:
        c = _shoot(cdf, first, n_steps)
        return 2 * cdf(c[-1]) - cdf((c[-1] + c[-2]) / 2) - 0.5

    a, b = -1 + 1e-5, lo
    fa = excess(a)
    for _ in range(60):
        mid = (a + b) / 2
        fm = excess(mid)
        a, b, fa = (mid, b, fm) if (fm > 0) == (fa > 0) else (a, mid, fa)
    return _shoot(cdf, (a + b) / 2, n_steps)


def create_abnormal_map(block_size: int = 64) -> torch.Tensor:
    """The AF4 codebook for `block_size` (16 float64 values, sorted, -1 .. 1, zero at index 7)."""
    cdf = BlockNormalizedCDF(block_size)
    negative = _half(cdf, 5)
    positive = [-v for v in reversed(_half(cdf, 6))]
    return torch.tensor([-1.0, *negative, 0.0, *positive, 1.0], dtype=torch.float64)


def median_residuals(code: torch.Tensor, block_size: int = 64) -> list[float]:
    """How far each interior code of a sorted 16-value AF4 code is from its construction conditions.

    For every interior code c_k of a half (cells bounded by midpoints; the last negative and the first
    positive code's cells end at 0): (F(c_k) - F(start)) - (F(end) - F(c_k)), in probability. All are 0
    for the exact construction.
    """
    c = [float(v) for v in code]
    if len(c) != 16 or c[0] != -1.0 or c[7] != 0.0 or c[15] != 1.0:
        raise ValueError(f"expected 16 sorted codes with -1, 0, 1 at indices 0, 7, 15; got {c}")
    cdf = BlockNormalizedCDF(block_size)
    residuals = []
    for k in range(1, 7):  # negative half: the cell of c6 ends at 0
        end = 0.0 if k == 6 else (c[k] + c[k + 1]) / 2
        residuals.append(2 * cdf(c[k]) - cdf((c[k - 1] + c[k]) / 2) - cdf(end))
    for k in range(8, 15):  # positive half: the cell of c8 starts at 0
        start = 0.0 if k == 8 else (c[k - 1] + c[k]) / 2
        residuals.append(2 * cdf(c[k]) - cdf(start) - cdf((c[k] + c[k + 1]) / 2))
    return residuals
