"""The fused dequant-matmul kernel (interpreter on CPU, fp32 compute) against dequantize-then-matmul."""

import pytest
import torch

import qlora
from qlora import DataType
from qlora.kernels import interpreter_active
from qlora.kernels.fused_matmul import dequant_matmul
from qlora.quant import block_absmax, codebook

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not interpreter_active(), reason="needs a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize("dtype", [DataType.NF4, DataType.FP4, DataType.INT4, DataType.INT8])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("m, n, k", [(5, 33, 70), (17, 64, 64), (1, 7, 129)])
def test_forward_and_input_gradient_match_reference(dtype, double_quant, m, n, k):
    q = qlora.quantize(torch.randn(n, k, device=DEVICE), dtype, 32, double_quant)
    w = qlora.dequantize(q, torch.float32)
    absmax, code = block_absmax(q), codebook(dtype, DEVICE)
    x = torch.randn(m, k, device=DEVICE)
    dy = torch.randn(m, n, device=DEVICE)
    y = dequant_matmul(x, q, absmax, code, transpose_w=True, fp32_dot=True)
    dx = dequant_matmul(dy, q, absmax, code, transpose_w=False, fp32_dot=True)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dy @ w, rtol=1e-5, atol=1e-5)


def test_non_contiguous_activation_and_shape_checks():
    q = qlora.quantize(torch.randn(40, 48, device=DEVICE), DataType.NF4)
    w = qlora.dequantize(q, torch.float32)
    x = torch.randn(48, 6, device=DEVICE).t()  # strided
    y = dequant_matmul(x, q, block_absmax(q), codebook(DataType.NF4, DEVICE), transpose_w=True, fp32_dot=True)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not match the weight"):
        dequant_matmul(torch.randn(3, 47, device=DEVICE), q, block_absmax(q), codebook(DataType.NF4, DEVICE), transpose_w=True, fp32_dot=True)
