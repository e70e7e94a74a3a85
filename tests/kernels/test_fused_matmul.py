"""The fused dequant-matmul kernel (interpreter on CPU: fp32 compute) against dequantize-then-matmul."""

import pytest
import torch

import qlora
from qlora import DataType
from qlora.kernels.fused_matmul import dequant_matmul, interpreted
from qlora.nn.functional import FUSED_MAX_TOKENS, use_fused_kernel
from qlora.quant import block_absmax, codebook

from tests.conftest import TOLERANCES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(DEVICE == "cpu" and not interpreted(), reason="needs a GPU or TRITON_INTERPRET=1")
TILES = dict(block_m=16, block_j=32, block_t=32)  # small enough that the shapes below span several tiles
# fp32 sums of up to 129 products of size ~3 taken in another order than torch's: ~1e-6 absolute apart
FP32_SUMS = dict(rtol=1e-5, atol=1e-5)


def fused(x, q, *, transpose_w, **kwargs):
    bits = 4 if q.dtype.is_4bit else 8
    return dequant_matmul(x, q.data, block_absmax(q), codebook(q.dtype, DEVICE), shape=tuple(q.shape), block_size=q.block_size,
                          bits=bits, transpose_w=transpose_w, **{**TILES, **kwargs})  # fmt: skip


def check_both_directions(q, m, dtype=torch.float32, tol=FP32_SUMS):
    n, k = q.shape
    w = qlora.dequantize(q, torch.float32)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    dy = torch.randn(m, n, device=DEVICE).to(dtype)
    y, dx = fused(x, q, transpose_w=True), fused(dy, q, transpose_w=False)
    assert y.dtype == dtype and dx.dtype == dtype
    torch.testing.assert_close(y, (x.float() @ w.t()).to(dtype), **tol)
    torch.testing.assert_close(dx, (dy.float() @ w).to(dtype), **tol)


@needs_triton
@pytest.mark.parametrize("dtype", [DataType.NF4, DataType.FP4, DataType.INT4, DataType.INT8])
@pytest.mark.parametrize("double_quant", [False, True])
def test_every_data_type_matches_reference(dtype, double_quant):
    check_both_directions(qlora.quantize(torch.randn(33, 70, device=DEVICE), dtype, 32, double_quant), m=17)


@needs_triton
@pytest.mark.parametrize("dtype", [DataType.FP8_E4M3, DataType.FP8_E5M2, DataType.NVFP4, DataType.MXFP4, DataType.AF4])
def test_the_new_data_types_match_reference(dtype):
    # their block scales reach the kernel as float32 (`block_absmax` decodes NVFP4's / MXFP4's 8-bit scales)
    check_both_directions(qlora.quantize(torch.randn(33, 70, device=DEVICE), dtype, None, dtype.allows_double_quant), m=17)


# M, N, K off the tiles (16, 32, 32), exactly on them, a single token, a partial last quantization block
@needs_triton
@pytest.mark.parametrize("m, n, k, block", [(5, 33, 70, 64), (16, 64, 64, 64), (1, 7, 129, 64), (20, 31, 45, 256)])
def test_shapes_off_the_tiles_match_reference(m, n, k, block):
    check_both_directions(qlora.quantize(torch.randn(n, k, device=DEVICE), DataType.NF4, block, True), m=m)


@needs_triton
def test_bf16_activations_computed_in_fp32_under_the_interpreter():
    # on CPU the wrapper must take the fp32 path (the interpreter's bf16 dot is garbage: error ~1e11)
    q = qlora.quantize(torch.randn(40, 48, device=DEVICE), DataType.NF4, 64, True)
    check_both_directions(q, m=9, dtype=torch.bfloat16, tol=TOLERANCES[torch.bfloat16])


@needs_triton
def test_non_contiguous_and_empty_activations():
    q = qlora.quantize(torch.randn(40, 48, device=DEVICE), DataType.NF4)
    w = qlora.dequantize(q, torch.float32)
    x = torch.randn(48, 6, device=DEVICE).t()  # strided (6, 48)
    torch.testing.assert_close(fused(x, q, transpose_w=True), x @ w.t(), **FP32_SUMS)
    assert fused(torch.empty(0, 48, device=DEVICE), q, transpose_w=True).shape == (0, 40)


def test_bad_arguments_name_the_value():
    q = qlora.quantize(torch.randn(40, 48), DataType.NF4)
    with pytest.raises(ValueError, match=r"activation of shape \(3, 47\) does not match the weight \(40, 48\)"):
        fused(torch.randn(3, 47), q, transpose_w=True)
    with pytest.raises(ValueError, match="must be fp32, bf16 or fp16, got torch.float64"):
        fused(torch.randn(3, 48, dtype=torch.float64), q, transpose_w=True)
    with pytest.raises(ValueError, match="block_t must be a power of two >= 16, got 24"):
        fused(torch.randn(3, 48), q, transpose_w=True, block_t=24)
    with pytest.raises(ValueError, match="codes must be 960 bytes"):
        dequant_matmul(torch.randn(3, 48), q.data[:10], q.absmax, codebook(DataType.NF4), shape=(40, 48), block_size=64,
                       bits=4, transpose_w=True)  # fmt: skip


def test_dispatch_rule_fused_only_for_few_tokens_on_cuda():
    assert use_fused_kernel("cuda", 1, True) and use_fused_kernel("cuda", FUSED_MAX_TOKENS, True)
    assert not use_fused_kernel("cuda", FUSED_MAX_TOKENS + 1, True)  # large token counts: dequantize + cuBLAS
    assert not use_fused_kernel("cuda", 4, False)  # BF16 passthrough: nothing to dequantize
    assert not use_fused_kernel("cpu", 1, True)  # CPU: dequantize + torch matmul


@needs_triton
def test_layer_on_the_fused_path_gives_the_reference_output_and_grads(monkeypatch):
    import qlora.nn.functional as fn
    from qlora.config import ComputeDtype, LoRAConfig, QuantConfig

    m = qlora.QLoRALinear.from_linear(torch.nn.Linear(70, 33).to(DEVICE), QuantConfig(compute_dtype=ComputeDtype.FP32),
                                      LoRAConfig(rank=4, alpha=8, dropout=0.0))  # fmt: skip
    with torch.no_grad():
        m.lora_b.normal_()
    x = torch.randn(2, 5, 70, device=DEVICE, requires_grad=True)
    outs = []
    for fused_path in (False, True):
        monkeypatch.setattr(fn, "use_fused_kernel", lambda *args, fused_path=fused_path: fused_path)
        y = m(x)
        y.backward(torch.ones_like(y))
        outs.append([y.detach(), x.grad, m.lora_a.grad, m.lora_b.grad])
        x.grad = m.lora_a.grad = m.lora_b.grad = None
    for fused_out, reference in zip(outs[1], outs[0]):
        torch.testing.assert_close(fused_out, reference, **FP32_SUMS)
