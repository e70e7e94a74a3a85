import pytest
import torch

from qlora.quant import codebooks
from qlora.quant.dtypes import DataType, codebook, nearest_code_search
from tests.peers import peer

PUBLISHED_NF4 = [
    -1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
    0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0,
]  # fmt: skip


def test_normal_map_construction_reproduces_published_nf4_table():
    built = codebooks.create_normal_map(offset=0.9677083, use_extra_value=True)
    assert built.shape == (16,)
    torch.testing.assert_close(built, torch.tensor(PUBLISHED_NF4), rtol=0, atol=1e-6)
    # and the named constant is exactly the construction rounded to fp32
    assert torch.equal(built, torch.tensor(codebooks.NF4_CODE, dtype=torch.float32))


def test_nf4_structure_seven_negative_zero_eight_positive():
    code = torch.tensor(codebooks.NF4_CODE)
    assert (code < 0).sum() == 7 and (code == 0).sum() == 1 and (code > 0).sum() == 8
    assert code[7] == 0 and torch.all(code[1:] > code[:-1])


def test_fp4_is_bitsandbytes_kernel_table():
    expected_magnitudes = [0, 1 / 192, 2 / 3, 1, 1 / 3, 1 / 2, 1 / 6, 1 / 4]
    code = codebook(DataType.FP4)
    torch.testing.assert_close(code[:8], torch.tensor(expected_magnitudes, dtype=torch.float32), rtol=0, atol=1e-7)
    assert torch.equal(code[8:], -code[:8])  # bit 3 is the sign


def test_fp4_e3m0_is_zero_and_signed_powers_of_two():
    code = codebook(DataType.FP4_E3M0)
    magnitudes = sorted(set(code.abs().tolist()))
    assert magnitudes == [0.0] + [2.0**-k for k in range(6, -1, -1)]
    assert torch.equal(code[8:], -code[:8])


def test_int4_uses_fifteen_levels_k_over_7():
    levels = {round(v * 7) for v in codebook(DataType.INT4).tolist() if -1 <= v <= 1}
    assert levels == set(range(-7, 8))


def test_int8_codebook_is_k_over_127():
    code = codebook(DataType.INT8)
    assert code.shape == (256,)
    assert code[128 + 127] == 1.0 and code[128 - 127] == -1.0 and code[128] == 0.0


def test_dynamic_map_matches_bitsandbytes():
    bnb_functional = peer("bitsandbytes.functional")
    assert torch.equal(codebooks.create_dynamic_map(), bnb_functional.create_dynamic_map(signed=True))


@pytest.mark.parametrize("dtype", [d for d in DataType if d.is_4bit])
def test_nearest_code_search_is_consistent(dtype):
    midpoints, order = nearest_code_search(dtype)
    code = codebook(dtype)
    sorted_code = code[order.long()]
    assert torch.all(sorted_code[1:] >= sorted_code[:-1])
    assert torch.all((midpoints >= sorted_code[:-1]) & (midpoints <= sorted_code[1:]))
