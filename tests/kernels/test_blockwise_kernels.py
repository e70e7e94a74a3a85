"""Triton kernels (interpreter on CPU, compiled on GPU) against the pure-torch reference.

Codes and absmax must be identical; dequantized values identical in fp32 (and after one rounding to
fp16/bf16). Shapes are small and tiles large: each interpreted program costs ~40 ms.
"""

import pytest
import torch

import qlora
from qlora import Backend, DataType, DoubleQuant
from qlora.kernels import interpreter_active

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUANTIZED = [d for d in DataType if d.is_quantized and len(d.block_sizes) > 1]  # any block size 32..4096
FIXED_BLOCK = [d for d in DataType if d.is_quantized and len(d.block_sizes) == 1]  # NVFP4 16, MXFP4 32, AF4 64

pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and not interpreter_active(), reason="Triton needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)"
)


def assert_same_state(a, b):
    assert torch.equal(a.data, b.data)
    if a.scales is not None:
        assert torch.equal(a.scales.codes, b.scales.codes)
        assert a.scales.tensor_scale is None or torch.equal(a.scales.tensor_scale, b.scales.tensor_scale)
    elif a.nested is None:
        assert torch.equal(a.absmax, b.absmax)
    else:
        assert torch.equal(a.nested.codes, b.nested.codes)
        assert torch.equal(a.nested.absmax, b.nested.absmax)
        assert torch.equal(a.nested.offset, b.nested.offset)


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("block_size", [32, 64, 256, 4096])
@pytest.mark.parametrize("shape", [(64, 64), (33, 65), (7,), (3, 5, 129)])
def test_quantize_kernel_matches_reference(dtype, block_size, shape):
    w = torch.randn(shape, device=DEVICE)
    ref = qlora.quantize(w, dtype, block_size, backend=Backend.REFERENCE)
    tri = qlora.quantize(w, dtype, block_size, backend=Backend.TRITON)
    assert_same_state(ref, tri)


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("block_size", [32, 64, 256, 4096])
def test_dequantize_kernel_matches_reference(dtype, double_quant, block_size):
    w = torch.randn(37, 129, device=DEVICE)  # odd numel, partial last block
    q = qlora.quantize(w, dtype, block_size, double_quant, backend=Backend.REFERENCE)
    ref = qlora.dequantize(q, torch.float32, backend=Backend.REFERENCE)
    tri = qlora.dequantize(q, torch.float32, backend=Backend.TRITON)
    assert torch.equal(ref, tri)


@pytest.mark.parametrize("dtype", FIXED_BLOCK)
@pytest.mark.parametrize("shape", [(64, 64), (33, 65), (7,), (3, 5, 129)])
def test_fixed_block_types_quantize_and_dequantize_like_the_reference(dtype, shape):
    w = torch.randn(shape, device=DEVICE) * 4
    ref = qlora.quantize(w, dtype, backend=Backend.REFERENCE)
    tri = qlora.quantize(w, dtype, backend=Backend.TRITON)
    assert_same_state(ref, tri)
    for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
        expected = qlora.dequantize(ref, torch.float32, backend=Backend.REFERENCE).to(out_dtype)
        assert torch.equal(qlora.dequantize(ref, out_dtype, backend=Backend.TRITON), expected)


@pytest.mark.parametrize("dtype", [DataType.NF4, DataType.FP8_E4M3, DataType.AF4])
def test_e4m4_double_quantization_dequantizes_like_the_reference(dtype):
    w = torch.randn(37, 129, device=DEVICE)
    q = qlora.quantize(w, dtype, 64, DoubleQuant.E4M4, backend=Backend.REFERENCE)
    assert_same_state(q, qlora.quantize(w, dtype, 64, DoubleQuant.E4M4, backend=Backend.TRITON))
    assert torch.equal(qlora.dequantize(q, torch.float32, backend=Backend.TRITON), qlora.dequantize(q, torch.float32, backend=Backend.REFERENCE))


def test_grid_kernel_rounds_ties_to_even_and_saturates():
    from qlora.kernels import quantize_to_grid
    from qlora.quant import minifloat

    table = minifloat.rounding_table(minifloat.E2M1, DEVICE)
    y = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 1e30, -0.25, -2.5, -5.0, -100.0, 0.0, 2.9, -1.1], device=DEVICE)
    packed = quantize_to_grid(y, torch.ones(1, device=DEVICE), 16, (table.midpoints, table.ties_up, table.order), bits=4)
    codes = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], dim=1).view(-1)
    values = minifloat.values(minifloat.E2M1)[codes.long().cpu()].tolist()
    assert values == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 0.0, -2.0, -4.0, -6.0, 0.0, 3.0, -1.0]
    with pytest.raises(ValueError, match="16 or 256 entries"):
        quantize_to_grid(y, torch.ones(1, device=DEVICE), 16, (table.midpoints[:8], table.ties_up, table.order), bits=4)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_input_and_output_dtypes(in_dtype, out_dtype):
    w = torch.randn(24, 100, device=DEVICE).to(in_dtype)
    ref = qlora.quantize(w, DataType.NF4, 64, True, backend=Backend.REFERENCE)
    tri = qlora.quantize(w, DataType.NF4, 64, True, backend=Backend.TRITON)
    assert_same_state(ref, tri)
    expected = qlora.dequantize(ref, torch.float32, backend=Backend.REFERENCE).to(out_dtype)  # one rounding
    got = qlora.dequantize(tri, out_dtype, backend=Backend.TRITON)
    assert got.dtype == out_dtype and torch.equal(got, expected)


def test_non_contiguous_input():
    w = torch.randn(96, 64, device=DEVICE).t()
    ref = qlora.quantize(w, DataType.FP4, 64, backend=Backend.REFERENCE)
    tri = qlora.quantize(w, DataType.FP4, 64, backend=Backend.TRITON)
    assert_same_state(ref, tri)


def test_dequantize_writes_every_element_of_a_poisoned_out():
    q = qlora.quantize(torch.randn(33, 65, device=DEVICE), DataType.NF4, 64, True)
    out = torch.full((33, 65), float("nan"), device=DEVICE)
    qlora.dequantize(q, torch.float32, out=out, backend=Backend.TRITON)
    assert torch.isfinite(out).all()
    assert torch.equal(out, qlora.dequantize(q, torch.float32, backend=Backend.REFERENCE))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_dequantize_into_a_non_contiguous_out(out_dtype, layout):
    """`out.view(-1)` used to raise on a strided `out`; it is filled in its logical order instead."""
    q = qlora.quantize(torch.randn(33, 65, device=DEVICE), DataType.NF4, 64, True)
    if layout == "transposed":
        storage = torch.full((65, 33), 7.0, dtype=out_dtype, device=DEVICE)
        out = storage.t()
    else:
        storage = torch.full((33, 80), 7.0, dtype=out_dtype, device=DEVICE)
        out = storage[:, 5:70]
    assert not out.is_contiguous()
    result = qlora.dequantize(q, out_dtype, out=out, backend=Backend.TRITON)
    assert result is out
    assert torch.equal(out, qlora.dequantize(q, torch.float32, backend=Backend.REFERENCE).to(out_dtype))
    if layout == "sliced":  # the columns outside the slice are untouched
        assert storage[:, :5].eq(7).all() and storage[:, 70:].eq(7).all()


def test_quantize_kernel_handles_zero_blocks_and_edges():
    w = torch.zeros(4, 64, device=DEVICE)
    w[1] = 1.0
    w[2, 0] = -3.0
    w[3] = torch.linspace(-1, 1, 64, device=DEVICE)
    ref = qlora.quantize(w, DataType.NF4, 64, backend=Backend.REFERENCE)
    tri = qlora.quantize(w, DataType.NF4, 64, backend=Backend.TRITON)
    assert_same_state(ref, tri)
    assert tri.absmax.tolist() == [0.0, 1.0, 3.0, 1.0]


def test_dequantize_kernel_takes_plain_tensors_and_checks_them():
    from qlora.kernels import dequantize_blockwise
    from qlora.quant import codebook

    q = qlora.quantize(torch.randn(33, 65, device=DEVICE), DataType.NF4, 64, True)
    n = q.nested
    got = dequantize_blockwise(q.data, None, codebook(DataType.NF4, DEVICE), numel=q.numel, block_size=64, bits=4, out_dtype=torch.float32,
                               nested_codes=n.codes, nested_absmax=n.absmax, nested_offset=n.offset, nested_code=n.code)  # fmt: skip
    assert torch.equal(got.view(q.shape), qlora.dequantize(q, torch.float32, backend=Backend.REFERENCE))
    with pytest.raises(ValueError, match="either absmax or all four nested tensors"):
        dequantize_blockwise(q.data, None, codebook(DataType.NF4, DEVICE), numel=q.numel, block_size=64, bits=4, out_dtype=torch.float32,
                             nested_codes=n.codes)  # fmt: skip
    with pytest.raises(ValueError, match=r"4-bit codes of 2145 elements must be 1073 x torch.uint8, got 1073 x torch.int8"):
        dequantize_blockwise(q.data.view(torch.int8), torch.ones(34), codebook(DataType.NF4, DEVICE), numel=q.numel, block_size=64, bits=4,
                             out_dtype=torch.float32)  # fmt: skip
    with pytest.raises(ValueError, match="coded scales need scale_codes and scale_map"):
        dequantize_blockwise(q.data, None, codebook(DataType.NF4, DEVICE), numel=q.numel, block_size=64, bits=4, out_dtype=torch.float32,
                             scale_codes=n.codes)  # fmt: skip
    with pytest.raises(ValueError, match="bits must be 4 or 8, got 3"):
        dequantize_blockwise(q.data, torch.ones(34), codebook(DataType.NF4, DEVICE), numel=q.numel, block_size=64, bits=3, out_dtype=torch.float32)
