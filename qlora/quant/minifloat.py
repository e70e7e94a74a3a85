"""Minifloat formats (ExMy) and rounding to their grids: the elements and scales of FP8, NVFP4, MXFP4.

A format has an optional sign bit, E exponent bits and M mantissa bits with bias b. Exponent field
e > 0 is a normal value 2^(e - b) * (1 + m / 2^M); e = 0 is subnormal, 2^(1 - b) * (m / 2^M). Which
codes are Inf/NaN differs per format (the definitions below say where each comes from):

- E4M3 (OCP 8-bit Floating Point Specification (OFP8) v1.0, "E4M3"; `torch.float8_e4m3fn`): bias 7,
  no Inf, only S.1111.111 is NaN, so the top binade is normal up to 1.75 * 2^8 = 448.
- E5M2 (OFP8 "E5M2"; `torch.float8_e5m2`): bias 15, IEEE-like: exponent field 31 is Inf (m = 0) or
  NaN; largest finite 1.75 * 2^15 = 57344.
- E2M1 (OCP Microscaling Formats (MX) v1.0, FP4 element; NVIDIA NVFP4 element): bias 1, no Inf/NaN:
  0, 0.5, 1, 1.5, 2, 3, 4, 6.
- E4M4 unsigned (bitsandbytes' k-bit absmax format, `encode_absmax_e4m4`, bias 11): no sign, no
  Inf/NaN: 0, subnormals m * 2^-14, normals up to 2^4 * (1 + 15/16) = 31.

# Note: rounding to a grid
Quantizing a float32 value y to a format rounds to the nearest finite value, ties to the one whose
mantissa's last bit is 0 ("round to nearest, ties to even", IEEE 754 roundTiesToEven), and saturates:
a |y| beyond the largest finite value gives the largest finite value (OFP8's "saturating" conversion;
the MX spec's clamp to the element's max normal). Every rounding here goes through one table per
format (`RoundingTable`): the finite values sorted, the midpoints between neighbours (exact in float32:
neighbours differ in the last mantissa bit), whether a tie at each midpoint goes up, and the storage
code of each sorted position. The sorted position of y is #{i : y > mid[i] or (y == mid[i] and
ties_up[i])} — a prefix of the midpoints, so a kernel can find it by binary search. Zero is stored as
+0 (code 0): a value that rounds to zero keeps no sign. NaN and Inf are never produced; the public API
refuses them as inputs (`qlora.quant.api`).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import torch


@dataclasses.dataclass(frozen=True)
class Minifloat:
    """A small floating-point format; see the module docstring.

    Attributes:
        name: "e4m3", "e5m2", "e2m1", "e4m4".
        exponent_bits, mantissa_bits, bias: the layout.
        signed: a sign bit above the exponent (E4M4 has none).
        inf_nan_top_exponent: the all-ones exponent field is Inf/NaN (IEEE style, E5M2).
        nan_all_ones: only the all-ones magnitude is NaN (E4M3 "fn").
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    signed: bool = True
    inf_nan_top_exponent: bool = False
    nan_all_ones: bool = False

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def n_codes(self) -> int:
        return 2**self.bits

    def decode(self, code: int) -> float:
        """The value of a storage code, exactly (Python float; NaN/Inf where the format has them)."""
        if not 0 <= code < self.n_codes:
            raise ValueError(f"{self.name} codes are 0..{self.n_codes - 1}, got {code}")
        magnitude_bits = self.exponent_bits + self.mantissa_bits
        sign = -1.0 if self.signed and code >> magnitude_bits else 1.0
        e = (code >> self.mantissa_bits) & ((1 << self.exponent_bits) - 1)
        m = code & ((1 << self.mantissa_bits) - 1)
        top = (1 << self.exponent_bits) - 1
        if self.inf_nan_top_exponent and e == top:
            return sign * float("inf") if m == 0 else float("nan")
        if self.nan_all_ones and e == top and m == (1 << self.mantissa_bits) - 1:
            return float("nan")
        if e == 0:
            return sign * m / 2**self.mantissa_bits * 2.0 ** (1 - self.bias)
        return sign * (1 + m / 2**self.mantissa_bits) * 2.0 ** (e - self.bias)

    def is_even(self, code: int) -> bool:
        """Whether the code's mantissa ends in 0 (the winner of a tie)."""
        return code & 1 == 0

    @property
    def max(self) -> float:
        """The largest finite value."""
        return max(v for v in (self.decode(c) for c in range(self.n_codes)) if v == v and abs(v) != float("inf"))

    @property
    def emax(self) -> int:
        """floor(log2(max)): the exponent of the largest finite value (the MX spec's emax_elem)."""
        return int(torch.tensor(self.max).log2().floor())


E4M3 = Minifloat("e4m3", 4, 3, 7, nan_all_ones=True)
E5M2 = Minifloat("e5m2", 5, 2, 15, inf_nan_top_exponent=True)
E2M1 = Minifloat("e2m1", 2, 1, 1)
E4M4 = Minifloat("e4m4", 4, 4, 11, signed=False)


@lru_cache(maxsize=None)
def values(fmt: Minifloat) -> torch.Tensor:
    """(n_codes,) float32: the value of every code in code order (NaN/Inf where the format has them)."""
    return torch.tensor([fmt.decode(c) for c in range(fmt.n_codes)], dtype=torch.float32)


@dataclasses.dataclass(frozen=True)
class RoundingTable:
    """What rounding to a format's grid needs (`# Note: rounding to a grid`), padded to n_codes entries.

    Attributes:
        midpoints: (n_codes,) float32, between sorted neighbours; +inf past the last.
        ties_up: (n_codes,) uint8, 1 where a value exactly at the midpoint goes to the upper neighbour.
        order: (n_codes,) uint8, sorted position -> storage code (the last entry repeated past the end).
        n_values: how many distinct finite values the grid has.
    """

    midpoints: torch.Tensor
    ties_up: torch.Tensor
    order: torch.Tensor
    n_values: int

    def to(self, device: torch.device | str) -> "RoundingTable":
        return dataclasses.replace(self, midpoints=self.midpoints.to(device), ties_up=self.ties_up.to(device), order=self.order.to(device))


@lru_cache(maxsize=None)
def _rounding_table_cpu(fmt: Minifloat) -> RoundingTable:
    vals = values(fmt).tolist()
    by_value: dict[float, int] = {}
    for code, v in enumerate(vals):
        if v == v and abs(v) != float("inf") and v not in by_value:  # first code of a value: +0 before -0
            by_value[v] = code
    grid = sorted(by_value)
    codes = [by_value[v] for v in grid]
    n, k = len(grid), fmt.n_codes
    mids = [(a + b) / 2 for a, b in zip(grid[:-1], grid[1:])]
    assert all(float(torch.tensor(m, dtype=torch.float32)) == m for m in mids), "midpoints must be exact in float32"
    ties = [int(fmt.is_even(codes[i + 1])) for i in range(n - 1)]
    assert all(fmt.is_even(codes[i]) != fmt.is_even(codes[i + 1]) for i in range(n - 1)), "neighbours alternate even/odd"
    pad = k - len(mids)
    return RoundingTable(
        midpoints=torch.tensor(mids + [float("inf")] * pad, dtype=torch.float32),
        ties_up=torch.tensor(ties + [0] * pad, dtype=torch.uint8),
        order=torch.tensor(codes + [codes[-1]] * (k - n), dtype=torch.uint8),
        n_values=n,
    )


def rounding_table(fmt: Minifloat, device: torch.device | str = "cpu") -> RoundingTable:
    """The format's `RoundingTable` on `device`."""
    return _rounding_table_cpu(fmt).to(device)


def round_to_grid(y: torch.Tensor, table: RoundingTable) -> torch.Tensor:
    """Storage codes of float32 values rounded to nearest-even with saturation; (…) -> (…) uint8.

    The sorted position is #{mid < y} (searchsorted), plus one where y sits exactly on a midpoint whose
    tie goes up. Values beyond the largest finite value take the last position: saturation.
    """
    mids = table.midpoints
    position = torch.searchsorted(mids, y.contiguous())  # #{mid < y}
    at = position.clamp(max=mids.numel() - 1)
    position = position + ((mids[at] == y) & (table.ties_up[at] == 1)).long()
    return table.order[position.clamp(max=mids.numel() - 1)]
