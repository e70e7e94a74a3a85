"""Fused dequantize + matmul: the quantized weight is read as codes and never written out in 16 bits.

QLoRA's forward and input gradient (paper Eq. 5-6) both multiply by the dequantized frozen weight.
Dequantizing first writes a 16-bit copy of W (4x the bytes of its codes) and reads it back; at small
token counts the matmul is bound by reading W, so reading 4-bit codes instead is the win.

Computes C = A @ op(deq(W)) for a weight W of shape (N, K) (out_features x in_features) stored
blockwise (flattened row-major, QBLOCK elements per absmax, two 4-bit codes per byte with the first
element in the high nibble, or one int8 code per byte):
- forward:        Y  = X  @ deq(W)^T   (A = X (M, K),  C = Y (M, N));   torch: x @ w.t()
- input gradient: dX = dY @ deq(W)     (A = dY (M, N), C = dX (M, K));  torch: dy @ w
with deq(W)[e] = code[index(e)] * absmax[e // QBLOCK]. Both walk W's elements by index
e = j * stride_j + t * stride_t (j: output column, t: reduction). The kernel takes the codebook and the
first-level fp32 absmax as tensors and knows no formats (double-quantized constants are expanded by the
caller: `qlora.quant.block_absmax`, 1/16 of the codes' bytes for block 64). When to use it instead of
dequantize + matmul is the caller's choice (`qlora.nn.functional`, `# Note: dispatch threshold`).

# Note: fp32 compute
Triton's CPU interpreter gets bf16 wrong (bf16 arithmetic and casts misround, bf16 `tl.dot` multiplies
raw bit patterns; FACTS.md). With FP32_COMPUTE the tiles are converted to fp32, the dot is IEEE fp32 and
the output is written in fp32; the wrapper casts to the requested dtype in torch. The wrapper always
takes this path under the interpreter, and for fp32 activations on a GPU.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

# Note: tiles
# 16 x 64 x 32 tiles (BLOCK_M x BLOCK_J x BLOCK_T) and 8 warps for every dtype. Compiled for sm_80 /
# sm_90 (`qlora.kernels.aot`), 16 x 64 x 64 with 4 warps spilled: the fp32 (IEEE dot) path in every
# launch (255 registers + ~330 bytes of local memory per thread), the 16-bit forward on one-token and
# strided launches (up to 640 bytes). 16 x 64 x 32 with 8 warps needs at most 177 registers and no
# local memory in every launch variant. Not yet tuned for speed on a GPU (`benchmarks/gpu_check.py`).
# The interpreter ignores warps.


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tile sizes and warps of one fused-matmul launch."""

    block_m: int
    block_j: int
    block_t: int
    num_warps: int


DEFAULT_TILES = Tiles(16, 64, 32, 8)  # `# Note: tiles`


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
    N_CODES,
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
    FP32_COMPUTE: tl.constexpr,
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
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_t[None, :] * stride_at, mask=a_mask, other=0.0)  # (BLOCK_M, BLOCK_T)
        w_mask = (offs_t[:, None] < T) & (offs_j[None, :] < J)
        e = offs_t[:, None] * w_stride_t + offs_j[None, :] * w_stride_j  # (BLOCK_T, BLOCK_J) element index in W
        if IS_4BIT:
            byte = tl.load(q_ptr + e // 2, mask=w_mask, other=0).to(tl.int32)
            index = (byte >> ((1 - (e % 2)) * 4).to(tl.int32)) & 0xF  # even element: high nibble
        else:
            index = tl.load(q_ptr + e, mask=w_mask, other=0).to(tl.int32) + 128  # int8 code -> codebook row
        value = tl.load(code_ptr + index, mask=w_mask & (index < N_CODES), other=0.0)
        w = value * tl.load(absmax_ptr + e // QBLOCK, mask=w_mask, other=0.0)  # (BLOCK_T, BLOCK_J) fp32
        if FP32_COMPUTE:
            acc += tl.dot(a.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))  # bf16/fp16 tensor cores, fp32 accumulation
    c_mask = (offs_m[:, None] < M) & (offs_j[None, :] < J)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_j[None, :] * stride_cj, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


def interpreted() -> bool:
    """True when this module's kernel was built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_dequant_matmul_kernel, InterpretedFunction)


def dequant_matmul(
    a: torch.Tensor,
    codes: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    *,
    shape: tuple[int, int],
    block_size: int,
    bits: int,
    transpose_w: bool,
    out_dtype: torch.dtype | None = None,
    block_m: int | None = None,
    block_j: int | None = None,
    block_t: int | None = None,
) -> torch.Tensor:
    """C = a @ deq(W)^T (transpose_w: forward) or a @ deq(W) (input gradient), W never materialised.

    Args:
        a: (M, K) when transpose_w, (M, N) otherwise; fp32, bf16 or fp16; any strides.
        codes: W's codes, flattened row-major: uint8 with two 4-bit codes per byte (bits=4), or int8
            (bits=8, codebook row = code + 128).
        absmax: (ceil(N*K / block_size),) float32, the first-level absmax.
        code: the codebook, float32 (16 values for bits=4, 256 for bits=8).
        shape: (N, K) = (out_features, in_features) of W.
        block_size: elements per absmax.
        transpose_w: True for a @ W^T.
        out_dtype: dtype of C (default a.dtype). Computed in fp32 when a is fp32 and always under the
            interpreter (`# Note: fp32 compute`), then cast in torch.
        block_m, block_j, block_t: tile sizes (powers of two >= 16); None: `DEFAULT_TILES`.

    Returns:
        C: (M, N) when transpose_w, else (M, K).

    Raises:
        ValueError: shapes, dtypes, bits or tiles that do not fit.
    """
    n_out, k_in = shape
    if a.dim() != 2:
        raise ValueError(f"the activation must be 2-D (tokens, features), got shape {tuple(a.shape)}")
    if a.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"the activation must be fp32, bf16 or fp16, got {a.dtype}")
    j, t = (n_out, k_in) if transpose_w else (k_in, n_out)
    if a.shape[1] != t:
        raise ValueError(f"activation of shape {tuple(a.shape)} does not match the weight {tuple(shape)} (transpose_w={transpose_w})")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    expected_codes = (n_out * k_in + 1) // 2 if bits == 4 else n_out * k_in
    if codes.numel() != expected_codes or codes.element_size() != 1:
        raise ValueError(f"codes must be {expected_codes} bytes for a {bits}-bit {tuple(shape)} weight, got {codes.numel()} x {codes.dtype}")
    if code.dtype != torch.float32 or code.numel() != 2**bits:
        raise ValueError(f"the codebook must be {2**bits} float32 values, got {code.numel()} x {code.dtype}")
    if absmax.dtype != torch.float32 or absmax.numel() != -(-n_out * k_in // block_size):
        raise ValueError(f"absmax must be {-(-n_out * k_in // block_size)} float32 values for block {block_size}, got {absmax.numel()} x {absmax.dtype}")
    fp32_compute = a.dtype == torch.float32 or interpreted()
    tiles = DEFAULT_TILES
    block_m, block_j, block_t = (tiles.block_m if block_m is None else block_m, tiles.block_j if block_j is None else block_j,
                                 tiles.block_t if block_t is None else block_t)  # fmt: skip
    for name, tile in (("block_m", block_m), ("block_j", block_j), ("block_t", block_t)):
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 16 or tile & (tile - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {tile!r}")
    out_dtype = out_dtype or a.dtype
    m = a.shape[0]
    out = torch.empty((m, j), dtype=torch.float32 if fp32_compute else out_dtype, device=a.device)
    if m == 0 or j == 0:
        return out.to(out_dtype)
    w_stride_j, w_stride_t = (k_in, 1) if transpose_w else (1, k_in)
    grid = (triton.cdiv(m, block_m), triton.cdiv(j, block_j))
    _dequant_matmul_kernel[grid](
        a, codes.reshape(-1), absmax, code, out, m, j, t, code.numel(), a.stride(0), a.stride(1), out.stride(0), out.stride(1),
        w_stride_j, w_stride_t, QBLOCK=block_size, IS_4BIT=bits == 4, FP32_COMPUTE=fp32_compute,
        BLOCK_M=block_m, BLOCK_J=block_j, BLOCK_T=block_t, **({"num_warps": tiles.num_warps} if a.is_cuda else {}),
    )  # fmt: skip
    return out.to(out_dtype)
