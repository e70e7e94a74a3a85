"""Codebooks of the 4-bit and 8-bit data types, as named constants.

Each 4-bit codebook lists the value of the 16 storage codes in *code order* (index = the nibble that is
stored), not in value order. Where the values come from is said beside each one; the QLoRA paper is
arXiv:2305.14314 (Dettmers et al., 2023), the reference implementation bitsandbytes 0.50.
"""

from __future__ import annotations

from statistics import NormalDist

import torch

# NF4 (paper §3, "4-bit NormalFloat"): bitsandbytes' `get_4bit_type("nf4")`, which is
# `create_normal_map(offset=0.9677083, use_extra_value=True)` rounded to fp32. Zero is code 7.
NF4_CODE: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

# FP4 "E2M1" as bitsandbytes' kernels store it: bit 3 is the sign, the 3-bit magnitude code
# 000..111 means 0, 0.0625, 8, 12, 4, 6, 2, 3 (in units of 1/12), i.e. 0, 1/192, 2/3, 1, 1/3, 1/2,
# 1/6, 1/4 after normalising by 12. This grid's smallest magnitude is 1/192; other libraries call
# grids with 1/48 or 1/12 "E2M1" too. Source: bitsandbytes `get_4bit_type("fp4")`.
_FP4_MAGNITUDES_TWELFTHS = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
FP4_CODE: tuple[float, ...] = tuple(
    float(torch.tensor(v / 12.0, dtype=torch.float32)) for v in _FP4_MAGNITUDES_TWELFTHS
) + tuple(-float(torch.tensor(v / 12.0, dtype=torch.float32)) for v in _FP4_MAGNITUDES_TWELFTHS)

# FP4 "E3M0" (paper Table 2): sign bit 3, 3-bit exponent code m: m = 0 is zero, m = 1..7 is 2^(m-7),
# so magnitudes 0, 2^-6, ..., 2^0.
_E3M0_MAGNITUDES = (0.0,) + tuple(2.0 ** (m - 7) for m in range(1, 8))
FP4_E3M0_CODE: tuple[float, ...] = _E3M0_MAGNITUDES + tuple(-m for m in _E3M0_MAGNITUDES)

# Int4 (symmetric absmax, 15 levels k/7, k = -7..7), stored as the two's-complement nibble of k.
# Code 8 (k = -8, value -8/7) lies outside [-1, 1]: the quantizer never produces it (every scaled
# value is nearer -1 = -7/7), so exactly 15 levels are used.
INT4_CODE: tuple[float, ...] = tuple(float(torch.tensor((i if i < 8 else i - 16) / 7.0, dtype=torch.float32)) for i in range(16))

# AF4-64 ("Abnormal Float", Yoshida 2023, arXiv:2306.06965, "NF4 Isn't Information Theoretically
# Optimal (and that's Good)"): the 4-bit code for absmax blocks of 64 N(0,1) weights that makes each code
# point the median of its cell under the distribution of x / absmax in such a block (minimum expected
# L1 error), with -1, 0 and 1 fixed; 6 negative and 7 positive interior values. Computed by
# `qlora.quant.af4.create_abnormal_map(64)` (the construction of the paper's code, evaluated in float64)
# and rounded to float32; tests/quant/test_af4.py checks the defining conditions. Zero is code 7.
AF4_64_CODE: tuple[float, ...] = (
    -1.0,
    -0.6944100856781006,
    -0.5124374032020569,
    -0.37369510531425476,
    -0.25607553124427795,
    -0.14982476830482483,
    -0.049348123371601105,
    0.0,
    0.0427316389977932,
    0.12934483587741852,
    0.2196127325296402,
    0.3167566657066345,
    0.4256388247013092,
    0.5549623370170593,
    0.7242486476898193,
    1.0,
)

# Int8 (paper Eq. 1): X_int8 = round(127 / absmax(X) * X); stored as int8, value k / 127.
INT8_LEVELS = 127


def create_normal_map(offset: float = 0.9677083, use_extra_value: bool = True) -> torch.Tensor:
    """Builds the NF4 codebook from normal quantiles, as bitsandbytes' `create_normal_map` does.

    The quantile points come from a float32 `torch.linspace` (as in bitsandbytes); the inverse normal
    CDF is evaluated in float64 (`statistics.NormalDist`, the same AS241 algorithm family as scipy),
    the values are rounded to float32, sorted and divided by their maximum.

    Args:
        offset: the outermost quantile; 0.9677083 is the published value.
        use_extra_value: 8 positive and 7 negative non-zero values (True, NF4) or 7 and 7.

    Returns:
        (16,) float32 tensor, sorted ascending, min -1 and max 1.
    """
    ppf = NormalDist().inv_cdf
    n_pos = 9 if use_extra_value else 8
    positive = [ppf(float(p)) for p in torch.linspace(offset, 0.5, n_pos)[:-1]]
    negative = [-ppf(float(p)) for p in torch.linspace(offset, 0.5, 8)[:-1]]
    zeros = [0.0] * (16 - len(positive) - len(negative))
    values = torch.tensor(positive + zeros + negative, dtype=torch.float32).sort().values
    return values / values.max()


def create_dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 8-bit dynamic map of bitsandbytes (`create_dynamic_map(signed=...)`).

    Dettmers 2015 ("8-Bit Approximations for Parallelism in Deep Learning"): a dynamic exponent
    (decimal, 10^-6..10^0) and a linear fraction whose width grows as the exponent shrinks. Used for
    the second-level quantization of the absmax constants (paper §3, double quantization). The
    unsigned map spends the sign bit on a finer fraction (twice the values per exponent): bitsandbytes'
    8-bit optimizers store Adam's non-negative second moment with it (`qlora.optim.state8bit`).
    Computed with the same float32 operations as bitsandbytes, so the 256 values are bit-identical.

    Args:
        signed: the signed map (default) or the unsigned one.

    Returns:
        (256,) float32 tensor, sorted ascending; signed: from about -0.993 to 1.0, with 0 once;
        unsigned: from 0 to 1.0.
    """
    max_exponent_bits = 7
    data: list[float] = []
    for i in range(max_exponent_bits):
        fractions = 2**i if signed else 2 ** (i + 1)
        boundaries = torch.linspace(0.1, 1, fractions + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)
