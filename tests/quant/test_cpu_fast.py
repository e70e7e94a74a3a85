"""The fast CPU path (`Backend.CPU`) is bit-identical to the reference: codes, absmax and dequantized values."""

import shutil

import pytest
import torch

from qlora import Backend, DataType, dequantize, quantize
from qlora.quant import cpu

FOUR_BIT = [DataType.NF4, DataType.FP4, DataType.FP4_E3M0, DataType.INT4]
# (shape, block size): divisible, a partial last block, odd numel, fewer elements than one block.
CASES = [((8, 64), 32), ((3, 100), 64), ((7, 37), 64), ((5, 300), 256), ((2, 4096), 4096), ((3, 1000), 4096), ((9,), 32)]


def _pair(x, dtype, block_size, double_quant):
    fast = quantize(x, dtype, block_size, double_quant, backend=Backend.CPU)
    ref = quantize(x, dtype, block_size, double_quant, backend=Backend.REFERENCE)
    return fast, ref


def _assert_same_state(fast, ref):
    assert torch.equal(fast.data, ref.data)
    if ref.nested is None:
        assert torch.equal(fast.absmax, ref.absmax)
    else:
        assert torch.equal(fast.nested.codes, ref.nested.codes)
        assert torch.equal(fast.nested.absmax, ref.nested.absmax)
        assert torch.equal(fast.nested.offset, ref.nested.offset)


def _assert_bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == torch.float32:
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    else:
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))  # also tells -0.0 from 0.0


@pytest.mark.parametrize("dtype", FOUR_BIT + [DataType.INT8], ids=lambda d: d.value)
@pytest.mark.parametrize("shape,block_size", CASES, ids=str)
@pytest.mark.parametrize("double_quant", [False, True], ids=["noDQ", "DQ"])
def test_fast_matches_reference(dtype, shape, block_size, double_quant):
    x = torch.randn(shape) * 3
    fast, ref = _pair(x, dtype, block_size, double_quant)
    _assert_same_state(fast, ref)
    for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
        _assert_bits_equal(dequantize(ref, out_dtype, backend=Backend.CPU), dequantize(ref, out_dtype, backend=Backend.REFERENCE))


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", [DataType.NF4, DataType.FP4, DataType.INT8], ids=lambda d: d.value)
def test_input_dtypes_and_non_contiguous(in_dtype, dtype):
    x = torch.randn(96, 70).to(in_dtype).t()  # (70, 96), non-contiguous
    assert not x.is_contiguous()
    fast, ref = _pair(x, dtype, 64, double_quant=True)
    _assert_same_state(fast, ref)
    _assert_bits_equal(dequantize(fast, torch.bfloat16, backend=Backend.CPU), dequantize(ref, torch.bfloat16, backend=Backend.REFERENCE))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_out_argument(out_dtype, contiguous):
    x = torch.randn(40, 33)
    qt = quantize(x, DataType.NF4, 64, double_quant=True, backend=Backend.REFERENCE)
    out = torch.full((40, 33), 7.0, dtype=out_dtype) if contiguous else torch.full((33, 40), 7.0, dtype=out_dtype).t()
    result = dequantize(qt, out_dtype, out=out, backend=Backend.CPU)
    assert result.data_ptr() == out.data_ptr()
    _assert_bits_equal(out.contiguous(), dequantize(qt, out_dtype, backend=Backend.REFERENCE))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset", [1, 3])
def test_out_argument_at_an_odd_storage_offset(out_dtype, offset):
    """bf16 pairs are stored as int32: an `out` starting at an odd element used to raise in view(torch.int32)."""
    x = torch.randn(40, 64)
    qt = quantize(x, DataType.NF4, 64, double_quant=True, backend=Backend.REFERENCE)
    storage = torch.full((offset + 40 * 64 + 2,), 7.0, dtype=out_dtype)
    out = storage[offset : offset + 40 * 64].view(40, 64)
    assert out.is_contiguous() and out.storage_offset() == offset
    result = dequantize(qt, out_dtype, out=out, backend=Backend.CPU)
    assert result.data_ptr() == out.data_ptr()
    _assert_bits_equal(out, dequantize(qt, out_dtype, backend=Backend.REFERENCE))
    assert storage[:offset].eq(7).all() and storage[offset + 40 * 64 :].eq(7).all()  # nothing written outside `out`


def test_rounding_ties_tiny_and_huge_values():
    """Exact midpoints (ties go to the lower code), all-zero blocks, subnormal and near-max products."""
    x = torch.tensor([0.5, -0.5, 0.25, 1.0, -1.0, 0.0] * 16 + [0.0] * 64 + [1e-38, -3e-39, 2e-39, 1e-40] * 16)
    x = torch.cat([x, torch.full((64,), 3e38), torch.linspace(-1, 1, 64) * 3.3e38])
    for dtype in FOUR_BIT + [DataType.INT8]:
        fast, ref = _pair(x, dtype, 64, double_quant=False)
        _assert_same_state(fast, ref)
        for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
            _assert_bits_equal(dequantize(ref, out_dtype, backend=Backend.CPU), dequantize(ref, out_dtype, backend=Backend.REFERENCE))


def test_auto_uses_fast_path_on_cpu():
    x = torch.randn(128, 64)
    fast = quantize(x, DataType.NF4, 64, double_quant=True)
    ref = quantize(x, DataType.NF4, 64, double_quant=True, backend=Backend.REFERENCE)
    _assert_same_state(fast, ref)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for inductor")
def test_compiled_kernels_ran():
    """The comparisons above must have run the compiled kernels, not the reference fallback."""
    x = torch.randn(64, 64)
    for dtype in (DataType.NF4, DataType.INT8, DataType.FP8_E4M3, DataType.NVFP4):
        for out_dtype in (torch.float32, torch.bfloat16):
            dequantize(quantize(x, dtype, backend=Backend.CPU), out_dtype, backend=Backend.CPU)
    compiled = [cpu._QUANT_4BIT, cpu._QUANT_INT8, cpu._DEQUANT_BF16, cpu._DEQUANT, cpu._DEQUANT_INT8, cpu._QUANT_GRID]
    assert not any(c.broken for c in compiled)
