"""Fused dequantize + matmul: the quantized weight is read as codes and never written out in bf16.

Computes C = A @ op(deq(W)) for a weight W of shape (N, K) (out_features x in_features) stored
blockwise (`QuantizedTensor` layout, flattened row-major, first element of each byte in the high nibble):
- forward:        Y  = X  @ deq(W)^T   (A = X (M, K),  C = Y (M, N));   torch: x @ w.t()
- input gradient: dX = dY @ deq(W)     (A = dY (M, N), C = dX (M, K));  torch: dy @ w
Both walk W's elements by index e = j * stride_j + t * stride_t (j: output column, t: reduction).
The absmax is the first-level fp32 vector (`qlora.quant.block_absmax`: double-quantized constants are
expanded once per call, 1/16 of the weight's bytes for block 64).

# Note: interpreter
Triton's CPU interpreter multiplies raw bf16 bit patterns in `tl.dot`; with FP32_DOT the tiles are
converted to fp32 and the dot is IEEE fp32 (also the GPU path for fp32 compute).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qlora.quant.state import QuantizedTensor

# Below this many tokens (rows of X) the fused kernel beats dequantize + cuBLAS on GPU: small token
# counts are bound by reading the weight, where 4 bits beat 16. Not yet measured on a GPU (the task
# that built this had none); the GPU issue tunes it. Large token counts are compute-bound: cuBLAS.
FUSED_MAX_TOKENS = 16


@triton.jit
def _dequant_matmul_kernel(
    # pointers
    a_ptr,  # (M, T) activations
    q_ptr,  # packed 4-bit codes (uint8) or int8 codes of W
    absmax_ptr,  # (n_blocks,) float32
    code_ptr,  # (16,) or (256,) float32 codebook
    c_ptr,  # (M, J) output
    # sizes
    M,
    J,
    T,
    # strides
    stride_am,
    stride_at,
    stride_cm,
    stride_cj,
    w_stride_j,
    w_stride_t,
    # meta-parameters
    QBLOCK: tl.constexpr,
    IS_4BIT: tl.constexpr,
    FP32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_j = (pid_j * BLOCK_J + tl.arange(0, BLOCK_J)).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_J), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        a_mask = (offs_m[:, None] < M) & (offs_t[None, :] < T)
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_t[None, :] * stride_at, mask=a_mask, other=0.0)
        w_mask = (offs_t[:, None] < T) & (offs_j[None, :] < J)
        e = offs_t[:, None] * w_stride_t + offs_j[None, :] * w_stride_j  # (BLOCK_T, BLOCK_J) element index
        if IS_4BIT:
            byte = tl.load(q_ptr + e // 2, mask=w_mask, other=0).to(tl.int32)
            index = (byte >> ((1 - (e % 2)) * 4).to(tl.int32)) & 0xF
        else:
            index = tl.load(q_ptr + e, mask=w_mask, other=0).to(tl.int32) + 128
        w = tl.load(code_ptr + index) * tl.load(absmax_ptr + e // QBLOCK, mask=w_mask, other=0.0)
        if FP32_DOT:
            acc += tl.dot(a.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))
    c_mask = (offs_m[:, None] < M) & (offs_j[None, :] < J)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_j[None, :] * stride_cj, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


def dequant_matmul(a: torch.Tensor, qt: QuantizedTensor, absmax: torch.Tensor, code: torch.Tensor, *, transpose_w: bool, fp32_dot: bool) -> torch.Tensor:
    """C = a @ deq(W)^T (transpose_w) or a @ deq(W); a is 2-D; returns fp32 when fp32_dot, else a.dtype.

    Args:
        a: (M, K) when transpose_w (forward), (M, N) otherwise (input gradient).
        qt: 4-bit or Int8 weight of shape (N, K).
        absmax: (n_blocks,) float32, the first-level absmax of `qt`.
        code: the data type's codebook (float32).
    """
    if len(qt.shape) != 2:
        raise ValueError(f"the fused matmul takes a 2-D weight, got shape {tuple(qt.shape)}")
    n_out, k_in = qt.shape
    m = a.shape[0]
    j, t = (n_out, k_in) if transpose_w else (k_in, n_out)
    if a.shape[1] != t:
        raise ValueError(f"activation of shape {tuple(a.shape)} does not match the weight {tuple(qt.shape)}")
    w_stride_j, w_stride_t = (k_in, 1) if transpose_w else (1, k_in)
    out = torch.empty((m, j), dtype=torch.float32 if fp32_dot else a.dtype, device=a.device)
    block_m, block_j, block_t = 16, 64, 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(j, block_j))
    _dequant_matmul_kernel[grid](
        a, qt.data, absmax, code, out, m, j, t, a.stride(0), a.stride(1), out.stride(0), out.stride(1),
        w_stride_j, w_stride_t, QBLOCK=qt.block_size, IS_4BIT=qt.dtype.is_4bit, FP32_DOT=fp32_dot,
        BLOCK_M=block_m, BLOCK_J=block_j, BLOCK_T=block_t,
    )  # fmt: skip
    return out
