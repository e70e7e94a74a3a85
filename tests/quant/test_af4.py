"""The AF4-64 codebook against the construction of arXiv:2306.06965 (each code the median of its cell)."""

import torch

from qlora.quant import af4, codebooks
from qlora.quant.dtypes import DataType, codebook


def test_af4_64_satisfies_the_median_conditions_of_its_construction():
    residuals = af4.median_residuals(torch.tensor(codebooks.AF4_64_CODE, dtype=torch.float64), 64)
    assert len(residuals) == 13
    assert max(abs(r) for r in residuals) < 1e-7  # probability mass; float32 rounding of the codes moves it ~1e-8


def test_the_median_conditions_reject_nf4():
    # the same check fails for NF4 (quantiles of N(0, 1), not medians of x / absmax in blocks of 64)
    residuals = af4.median_residuals(torch.tensor(codebooks.NF4_CODE, dtype=torch.float64), 64)
    assert max(abs(r) for r in residuals) > 1e-2


def test_af4_structure_and_codebook():
    code = codebook(DataType.AF4)
    assert code.tolist() == list(codebooks.AF4_64_CODE)
    assert code[0] == -1 and code[7] == 0 and code[15] == 1 and torch.all(code[1:] > code[:-1])
    assert (code < 0).sum() == 7 and (code > 0).sum() == 8
    assert DataType.AF4.block_sizes == (64,)


def test_block_normalized_cdf_has_the_point_masses_of_the_block_extremes():
    cdf = af4.BlockNormalizedCDF(64)
    assert abs(cdf(0.0) - 0.5) < 1e-9  # symmetric
    assert abs(cdf(-0.9999999) - 1 / 128) < 1e-6  # P(x = -1) = 1 / (2B)
    assert cdf(1.0) == 1.0 and cdf(-1.5) == 0.0
    assert abs(cdf.inverse(cdf(0.3)) - 0.3) < 1e-9
