"""Block scales of MXFP4 (E8M0), NVFP4 (E4M3 x float32) and FP8 (absmax), against the format definitions."""

import math

import pytest
import torch

from qlora.quant import minifloat, scales
from qlora.quant.dtypes import ScaleFormat


@pytest.mark.parametrize(
    ("absmax", "exponent"),
    [(6.0, 0), (7.99, 0), (8.0, 1), (4.0, 0), (3.99, -1), (1.0, -2), (0.0, -127), (1e-40, -127), (2.0**-125, -127),
     (2.0**-124, -126), (3e38, 125)],
)  # fmt: skip
def test_e8m0_shared_exponent_is_floor_log2_absmax_minus_emax_elem(absmax, exponent):
    # OCP MX v1.0 §6.3: shared_exp = floor(log2(max |V|)) - emax_elem (2 for E2M1), in E8M0's [-127, 127]
    block = torch.zeros(32)
    block[5] = -absmax
    codes, enc = scales.e8m0_scales(block, 32, minifloat.E2M1.emax)
    assert codes.tolist() == [exponent + 127]
    assert enc.item() == 2.0 ** (-exponent)
    assert scales.scale_map(ScaleFormat.E8M0, None)[codes.long()].item() == 2.0**exponent


def test_e8m0_matches_floor_log2_on_random_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64 * 32, generator=g) * torch.exp(torch.randn(64 * 32, generator=g) * 10).repeat_interleave(1)
    codes, _ = scales.e8m0_scales(x, 32, 2)
    amax = x.view(-1, 32).abs().amax(1).tolist()
    assert codes.tolist() == [max(-127, math.floor(math.log2(a)) - 2) + 127 for a in amax]


def test_e8m0_map_is_powers_of_two_and_255_is_nan():
    m = scales.scale_map(ScaleFormat.E8M0, None)
    assert [m[c].item() for c in (0, 1, 127, 128, 254)] == [2.0**-127, 2.0**-126, 1.0, 2.0, 2.0**127]
    assert math.isnan(m[255].item())


def test_nvfp4_two_level_scales_follow_the_recipe():
    # per tensor: g_enc = 448 * 6 / amax, g_dec = 1 / g_enc; per block: s = E4M3(absmax * g_enc / 6), scale s * g_dec
    g_dec, mult = scales.nvfp4_tensor_scale(torch.tensor(2688.0 * 4))
    assert g_dec.item() == 4.0 and mult.item() == pytest.approx(0.25 / 6, rel=1e-7)
    x = torch.tensor([2688.0 * 4] + [0.0] * 15 + [24.0] + [0.0] * 15 + [0.0] * 16)
    codes, enc = scales.e4m3_scales(x, 16, g_dec, mult)
    e4m3 = minifloat.values(minifloat.E4M3)
    assert e4m3[codes.long()].tolist() == [448.0, 1.0, 0.0]  # 10752 / 24 = 448; 24 / 24 = 1; an empty block 0
    assert enc[0].item() == torch.tensor(1 / 1792, dtype=torch.float32).item() and enc[1].item() == 0.25
    assert enc[2].item() == torch.finfo(torch.float32).max  # 1 / 0 capped, as the recipe
    m = scales.scale_map(ScaleFormat.E4M3, g_dec)
    assert m[codes.long()].tolist() == [1792.0, 4.0, 0.0]


def test_nvfp4_block_scale_rounds_to_nearest_even_e4m3_and_saturates():
    g_dec, mult = scales.nvfp4_tensor_scale(torch.tensor(2688.0))  # g_enc = 1: s = absmax / 6
    x = torch.tensor([6.0 * 1.0625] + [0.0] * 15 + [6.0 * 1.1875] + [0.0] * 15)  # halfway 1|1.125 -> 1; 1.125|1.25 -> 1.25
    codes, _ = scales.e4m3_scales(x, 16, g_dec, mult)
    assert minifloat.values(minifloat.E4M3)[codes.long()].tolist() == [1.0, 1.25]
    codes, _ = scales.e4m3_scales(torch.full((16,), 1e6), 16, g_dec, mult)  # beyond the tensor's amax: saturates
    assert minifloat.values(minifloat.E4M3)[codes.long()].tolist() == [448.0]


def test_nvfp4_all_zero_tensor_has_finite_scales():
    g_dec, mult = scales.nvfp4_tensor_scale(torch.tensor(0.0))
    assert torch.isfinite(g_dec) and g_dec > 0 and torch.isfinite(mult)
    codes, enc = scales.e4m3_scales(torch.zeros(32), 16, g_dec, mult)
    assert codes.tolist() == [0, 0] and torch.isfinite(enc).all()


def test_absmax_scales_are_fmax_over_absmax():
    absmax, enc = scales.absmax_scales(torch.tensor([2.0, -7.0, 0.0, 0.0]), 2, 448.0)
    assert absmax.tolist() == [7.0, 0.0] and enc.tolist() == [torch.tensor(448.0 / 7.0).item(), 0.0]
