"""Double quantization byte for byte as bitsandbytes 0.50.2 on CPU (a test-only dependency).

The nested 8-bit codes go through bitsandbytes' 65536-point lookup table, not an exact nearest-code
search (`# Note: bitsandbytes' 8-bit lookup table` in qlora/quant/reference.py).
"""

import pytest
import torch

import qlora
from qlora.quant import codebooks, reference
from tests.peers import peer

F = peer("bitsandbytes.functional")

SIGNED = codebooks.create_dynamic_map(signed=True)
UNSIGNED = codebooks.create_dynamic_map(signed=False)


def _bnb_blockwise(x: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.bitsandbytes.quantize_blockwise.default(x, code, block_size)


def _assert_same_as_bnb(x: torch.Tensor, code: torch.Tensor, block_size: int) -> None:
    ref_codes, ref_absmax = _bnb_blockwise(x, code, block_size)
    codes, absmax = reference.quantize_dynamic_8bit_lut(x, code, block_size)
    bad = codes != ref_codes
    assert not bad.any(), (
        f"{int(bad.sum())} of {x.numel()} codes differ from bitsandbytes, first at {bad.nonzero()[0].tolist()}: "
        f"x={x[bad][0].item()!r}, ours {codes[bad][0].item()}, bitsandbytes {ref_codes[bad][0].item()}"
    )
    assert torch.equal(absmax, ref_absmax), f"{int((absmax != ref_absmax).sum())} absmax differ"


def _with_unit_absmax(values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Blocks of 256: one `scale` (the absmax) then 255 of `values * scale`, so x / absmax is `values`."""
    per_block = 255
    n_blocks = -(-values.numel() // per_block)
    x = torch.zeros(n_blocks, 256)
    x[:, 0] = scale
    x[:, 1:] = torch.nn.functional.pad(values, (0, n_blocks * per_block - values.numel())).view(n_blocks, per_block) * scale
    return x.view(-1)


def _float_neighbours(values: torch.Tensor, ulps: int) -> torch.Tensor:
    bits = values.view(torch.int32)
    out = torch.cat([(bits + d).view(torch.float32) for d in range(-ulps, ulps + 1)])
    return out[out.abs() <= 1]


DISTRIBUTIONS = {
    "randn": lambda n: torch.randn(n),
    "uniform": lambda n: torch.rand(n) * 2 - 1,
    "heavy_tailed": lambda n: torch.randn(n) ** 3 * 1e-3,
    "log_normal": lambda n: torch.randn(n) * torch.exp(torch.randn(n) * 3) * 1e5,
    "tiny": lambda n: torch.randn(n) * 1e-30,
}


@pytest.mark.parametrize("block_size", [256, 64, 100, 4096])
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
def test_codes_equal_bitsandbytes_random(block_size, dist):
    for n in (1, 7, 255, 256, 257, 5000, 100_003):  # partial last blocks included
        _assert_same_as_bnb(DISTRIBUTIONS[dist](n), SIGNED, block_size)


@pytest.mark.parametrize("block_size", [256, 100])
def test_codes_equal_bitsandbytes_unsigned_map(block_size):
    _assert_same_as_bnb(torch.randn(100_000).abs() * torch.exp(torch.randn(100_000) * 2), UNSIGNED, block_size)


@pytest.mark.parametrize("shape,block_size", [((2048, 2048), 64), ((1024, 1024), 32), ((4096, 11), 4096)])
def test_codes_equal_bitsandbytes_real_absmax(shape, block_size):
    """The double-quantization input: the absmax of normal weights minus its mean."""
    absmax = (torch.randn(shape) * 0.02).view(-1)
    absmax = torch.nn.functional.pad(absmax, (0, -absmax.numel() % block_size)).view(-1, block_size).abs().amax(1)
    _assert_same_as_bnb(absmax - absmax.mean(), SIGNED, 256)


@pytest.mark.parametrize("scale", [1.0, 0.37, 3e-3, 1234.5])
def test_codes_equal_bitsandbytes_at_codes_and_midpoints(scale):
    midpoints = (SIGNED[:-1] + SIGNED[1:]) * 0.5
    special = torch.cat([SIGNED, midpoints, torch.tensor([0.0, -0.0, 1.0, -1.0])])
    _assert_same_as_bnb(_with_unit_absmax(_float_neighbours(special, 24), scale), SIGNED, 256)


@pytest.mark.parametrize("code", [SIGNED, UNSIGNED], ids=["signed", "unsigned"])
def test_codes_equal_bitsandbytes_at_grid_boundaries(code):
    """Values a few ulps around the half-way points of the 65536-point grid, where truncation flips."""
    k = torch.arange(65536, dtype=torch.float32)
    values = _float_neighbours((k - 0.5) / 65535 * 2 - 1, 3)
    if code is UNSIGNED:
        values = values.abs()
    _assert_same_as_bnb(_with_unit_absmax(values), code, 256)


def test_zero_blocks_and_partial_last_block():
    x = torch.randn(2000)
    x[256:512] = 0  # an all-zero block: codes 0, absmax 0
    x[1990:] = 0
    _assert_same_as_bnb(x, SIGNED, 256)
    _assert_same_as_bnb(torch.zeros(1000), SIGNED, 256)


def test_bitsandbytes_is_nearest_only_up_to_the_grid():
    """Why `quantize_dynamic_8bit` (exact nearest) is not the double-quantization rule: bitsandbytes
    differs from it, but only for values within one grid step (2 / 65535) of a midpoint, or near 0."""
    x = torch.randn(1 << 18)
    lut_codes, absmax = reference.quantize_dynamic_8bit_lut(x, SIGNED, 256)
    nearest, _ = reference.quantize_dynamic_8bit(x, SIGNED, 256)
    differ = lut_codes != nearest
    assert differ.any()
    normed = (x.view(-1, 256) / absmax[:, None]).view(-1)[differ]
    lo = torch.minimum(lut_codes[differ], nearest[differ]).long()
    midpoint = (SIGNED[lo] + SIGNED[lo + 1]) * 0.5
    near_midpoint = (normed - midpoint).abs() <= 2 / 65535
    near_zero = normed.abs() <= 2 / 65535
    assert bool((near_midpoint | near_zero).all()), f"{int((~(near_midpoint | near_zero)).sum())} differ off the grid"


SHAPES = [(1024, 1024), (4096, 11), (33, 65), (7,), (5, 3, 129)]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block_size", [32, 64, 256, 4096])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nested_state_equals_bitsandbytes(quant_type, block_size, shape, in_dtype):
    w = torch.randn(shape).to(in_dtype)
    _, state = F.quantize_4bit(w, blocksize=block_size, quant_type=quant_type, compress_statistics=True)
    nested = qlora.quantize(w, quant_type, block_size, double_quant=True).nested
    bad = nested.codes != state.absmax
    assert not bad.any(), f"{int(bad.sum())} of {bad.numel()} nested codes differ from bitsandbytes"
    assert torch.equal(nested.absmax, state.state2.absmax)
    assert torch.equal(nested.offset, state.offset)
    assert torch.equal(nested.code, state.state2.code)
