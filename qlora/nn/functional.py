"""The quantized LoRA linear as one autograd Function (paper Eq. 5):

    Y = X · deq(W)ᵀ + b + s · dropout(X) · Aᵀ · Bᵀ

Forward and backward each dequantize W again (or read its codes in a fused kernel): the autograd graph
saves the packed codes, never a dequantized copy. Gradients flow to X, A and B; the frozen weight and
bias get none:

    dX = dY · deq(W) + s · (dY · B) · A        dA = s · (dY · B)ᵀ · dropout(X)        dB = s · dYᵀ · (dropout(X) · Aᵀ)

The LoRA path is two small matmuls through the (M, r) bottleneck, not fused into the dequant kernel:
it is O(M·r·(in + out)) against the base's O(M·in·out), 1/32 of it at r = 64 and 4096², and keeping it
separate lets the base matmul go to cuBLAS for large token counts. (Not measured on a GPU yet.)
"""

from __future__ import annotations

import torch

from qlora.quant.api import block_absmax, dequantize
from qlora.quant.dtypes import codebook
from qlora.quant.state import QuantizedTensor

# Note: CPU scratch
# On CPU the dequantized weight is written into a scratch buffer shared by every layer of the same
# size (layers run one at a time and the weight is dead after its matmul), so a model costs one
# dequantized copy per distinct weight shape, not one per layer, and fresh buffers' page faults are
# paid once. GPU buffers come from torch's caching allocator.
_SCRATCH: dict[tuple[int, torch.dtype], torch.Tensor] = {}

# Note: dispatch threshold
# At most this many tokens (rows of X) the fused dequant-matmul kernel is used on GPU; above it,
# dequantize + cuBLAS. Small token counts are bound by reading the weight, where 4-bit codes beat a
# 16-bit copy; large ones are compute-bound, where cuBLAS's tensor-core GEMM wins and the dequantize is
# amortised. The value is a placeholder, NOT yet measured: no GPU has been available to this project.
# `benchmarks/gpu_check.py` measures it (its "dispatch" section) and prints the value to set here.
FUSED_MAX_TOKENS = 16


def use_fused_kernel(device: torch.device | str, tokens: int, quantized: bool) -> bool:
    """The dispatch rule of the quantized linear: fused kernel for few tokens on CUDA (see the Note).

    Args:
        device: where the weight lives (the CPU path is always dequantize + matmul).
        tokens: rows of the 2-D activation (batch x sequence).
        quantized: False for BF16 passthrough storage (nothing to dequantize).
    """
    return torch.device(device).type == "cuda" and quantized and 0 < tokens <= FUSED_MAX_TOKENS


def _dequantized(qt: QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
    if qt.device.type != "cpu":
        return dequantize(qt, dtype)
    key = (qt.numel, dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None:
        buffer = _SCRATCH[key] = torch.empty(qt.shape, dtype=dtype)
    return dequantize(qt, dtype, out=buffer.view(qt.shape))


def quantized_matmul(a: torch.Tensor, qt: QuantizedTensor, compute_dtype: torch.dtype, *, transpose_w: bool) -> torch.Tensor:
    """a @ deq(W)ᵀ (transpose_w) or a @ deq(W), in `compute_dtype`; a is 2-D.

    On GPU the fused kernel serves small token counts, dequantize + cuBLAS large ones
    (`use_fused_kernel`, `# Note: dispatch threshold`); on CPU it is dequantize + matmul (torch's CPU
    GEMM beats any interpreted or fused kernel there).
    """
    a = a.to(compute_dtype)
    if use_fused_kernel(qt.device, a.shape[0], qt.dtype.is_quantized):
        from qlora.kernels.fused_matmul import dequant_matmul

        return dequant_matmul(a, qt.data, block_absmax(qt), codebook(qt.dtype, qt.device), shape=tuple(qt.shape),
                              block_size=qt.block_size, bits=4 if qt.dtype.is_4bit else 8, transpose_w=transpose_w)  # fmt: skip
    w = _dequantized(qt, compute_dtype)
    return a @ (w.t() if transpose_w else w)


class QuantizedLoRAFunction(torch.autograd.Function):
    """Y = X deq(W)ᵀ + b + s (X_lora Aᵀ) Bᵀ with X_lora = dropout(X) (computed by the caller)."""

    @staticmethod
    def forward(ctx, x, x_lora, lora_a, lora_b, bias, scaling, weight: QuantizedTensor, compute_dtype):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = quantized_matmul(x2, weight, compute_dtype, transpose_w=True)
        if bias is not None:
            y = y + bias.to(compute_dtype)
        h = None
        if lora_a is not None:
            xl = x_lora.reshape(-1, shape[-1]).to(compute_dtype)
            h = xl @ lora_a.to(compute_dtype).t()  # (M, r)
            y = y.addmm_(h, lora_b.to(compute_dtype).t(), alpha=scaling)  # y += s * h Bᵀ, in place
        ctx.weight, ctx.scaling, ctx.compute_dtype, ctx.x_shape, ctx.x_dtype = weight, scaling, compute_dtype, shape, x.dtype
        ctx.has_lora = lora_a is not None
        # the packed codes are saved (visible to saved-tensor hooks); the module keeps them alive anyway
        ctx.save_for_backward(x_lora if ctx.has_lora else None, h, lora_a, lora_b, weight.data)
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x_lora, h, lora_a, lora_b, _packed = ctx.saved_tensors
        cd, s = ctx.compute_dtype, ctx.scaling
        dy2 = dy.reshape(-1, dy.shape[-1]).to(cd)
        dx = dx_lora = da = db = None
        if ctx.needs_input_grad[0]:
            dx = quantized_matmul(dy2, ctx.weight, cd, transpose_w=False).reshape(ctx.x_shape).to(ctx.x_dtype)
        if ctx.has_lora:
            g = (dy2 @ lora_b.to(cd)) * s  # (M, r): gradient at the LoRA bottleneck
            if ctx.needs_input_grad[1]:
                dx_lora = (g @ lora_a.to(cd)).reshape(ctx.x_shape).to(x_lora.dtype)
            if ctx.needs_input_grad[2]:
                da = (g.t() @ x_lora.reshape(-1, ctx.x_shape[-1]).to(cd)).to(lora_a.dtype)
            if ctx.needs_input_grad[3]:
                db = ((dy2.t() @ h) * s).to(lora_b.dtype)
        return dx, dx_lora, da, db, None, None, None, None
