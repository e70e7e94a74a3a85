"""Blockwise quantize / dequantize kernels for every data type (one kernel each, codebook as input).

Quantize (4-bit): per block, absmax = max |x|; scaled = clamp(x * (1 / absmax), -1, 1);
sorted position = #{midpoints < scaled}; code = order[position]; two codes per byte, first element in
the high nibble. Int8: round-half-even(127 * scaled). Equivalent torch maths: `qlora.quant.reference`.

Dequantize: out = code[q] * absmax[block], with the double-quantized absmax computed in the same
kernel as nested_code[c] * nested_absmax[block // 256] + offset (multiply, then add: no FMA, so the
result equals the reference bit for bit).

# Note: interpreter
Triton's CPU interpreter gets bf16 arithmetic wrong and rounds fp32 -> bf16 by truncation. All maths
here is fp32; under the interpreter a bf16 output is written as fp32 by the kernel and rounded by torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qlora.quant.state import QuantizedTensor

# Elements per program. Big tiles: each interpreted program costs ~40 ms on CPU whatever its size.
_QUANT_TILE = 4096
_DEQUANT_TILE = 4096


def interpreter_active() -> bool:
    """True when the kernels of this module were built by Triton's CPU interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_quantize_4bit_kernel, InterpretedFunction)


@triton.jit
def _absmax_and_scale(xb, blocks, n_elements, n_blocks, QBLOCK: tl.constexpr):
    """(B, QBLOCK) block values -> stored absmax (B,) and values scaled to [-1, 1] (B, QBLOCK).

    Full blocks: x * (1 / max(absmax, 1e-38)); the partial last block: x / absmax with its stored absmax
    floored at 1e-38 (reference.scale_to_unit, "# Note: partial block").
    """
    absmax = tl.max(tl.abs(xb), axis=1)
    partial = (blocks == n_blocks - 1) & (n_elements % QBLOCK != 0)
    floored = tl.maximum(absmax, 1e-38)
    absmax = tl.where(partial, floored, absmax)
    inv = tl.math.div_rn(tl.full(absmax.shape, 1.0, tl.float32), floored)
    by_inverse = xb * inv[:, None]
    by_division = tl.math.div_rn(xb, tl.broadcast_to(floored[:, None], xb.shape))
    scaled = tl.where(partial[:, None], by_division, by_inverse)
    return absmax, tl.minimum(tl.maximum(scaled, -1.0), 1.0)


@triton.jit
def _quantize_4bit_kernel(
    # pointers
    x_ptr,  # (n,) float32 input
    packed_ptr,  # ((n + 1) // 2,) uint8 output
    absmax_ptr,  # (n_blocks,) float32 output
    midpoints_ptr,  # (15,) float32, midpoints between the sorted codes
    order_ptr,  # (16,) uint8, sorted position -> storage code
    # sizes
    n_elements,
    n_blocks,
    # meta-parameters
    QBLOCK: tl.constexpr,  # quantization block size
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    TILE: tl.constexpr = QBLOCK * BLOCKS_PER_PROGRAM
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * TILE + tl.arange(0, TILE)
    x = tl.load(x_ptr + offs, mask=offs < n_elements, other=0.0)
    xb = tl.reshape(x, (BLOCKS_PER_PROGRAM, QBLOCK))
    blocks = pid * BLOCKS_PER_PROGRAM + tl.arange(0, BLOCKS_PER_PROGRAM)
    absmax, scaled = _absmax_and_scale(xb, blocks, n_elements, n_blocks, QBLOCK)
    tl.store(absmax_ptr + blocks, absmax, mask=blocks < n_blocks)
    position = tl.zeros((BLOCKS_PER_PROGRAM, QBLOCK), dtype=tl.int32)
    for j in tl.static_range(15):
        position += (scaled > tl.load(midpoints_ptr + j)).to(tl.int32)
    codes = tl.load(order_ptr + position)  # (BLOCKS_PER_PROGRAM, QBLOCK) uint8

    hi, lo = tl.split(tl.reshape(codes, (TILE // 2, 2)))
    packed = (hi << 4) | lo
    byte_offs = pid * (TILE // 2) + tl.arange(0, TILE // 2)
    tl.store(packed_ptr + byte_offs, packed, mask=byte_offs < (n_elements + 1) // 2)


@triton.jit
def _quantize_int8_kernel(
    # pointers
    x_ptr,  # (n,) float32 input
    q_ptr,  # (n,) int8 output
    absmax_ptr,  # (n_blocks,) float32 output
    # sizes
    n_elements,
    n_blocks,
    # meta-parameters
    QBLOCK: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    TILE: tl.constexpr = QBLOCK * BLOCKS_PER_PROGRAM
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * TILE + tl.arange(0, TILE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    xb = tl.reshape(x, (BLOCKS_PER_PROGRAM, QBLOCK))
    blocks = pid * BLOCKS_PER_PROGRAM + tl.arange(0, BLOCKS_PER_PROGRAM)
    absmax, scaled = _absmax_and_scale(xb, blocks, n_elements, n_blocks, QBLOCK)
    tl.store(absmax_ptr + blocks, absmax, mask=blocks < n_blocks)
    y = scaled * 127.0
    # round half to even: adding and subtracting 1.5 * 2^23 rounds |y| < 2^22 to an integer (IEEE RNE)
    rounded = (y + 12582912.0) - 12582912.0
    q = tl.reshape(rounded, (TILE,)).to(tl.int8)
    tl.store(q_ptr + offs, q, mask=mask)


@triton.jit
def _dequantize_kernel(
    # pointers
    q_ptr,  # 4-bit: ((n + 1) // 2,) uint8 packed codes; 8-bit: (n,) int8
    absmax_ptr,  # (n_blocks,) float32 (unused when DOUBLE_QUANT)
    code_ptr,  # (16,) or (256,) float32 codebook
    nested_codes_ptr,  # (n_blocks,) uint8 (DOUBLE_QUANT)
    nested_absmax_ptr,  # (ceil(n_blocks / NESTED_BLOCK),) float32 (DOUBLE_QUANT)
    nested_code_ptr,  # (256,) float32 (DOUBLE_QUANT)
    offset_ptr,  # (1,) float32 (DOUBLE_QUANT)
    out_ptr,  # (n,) output, float32 / float16 / bfloat16
    # sizes
    n_elements,
    # meta-parameters
    QBLOCK: tl.constexpr,
    NESTED_BLOCK: tl.constexpr,
    TILE: tl.constexpr,
    IS_4BIT: tl.constexpr,
    DOUBLE_QUANT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * TILE + tl.arange(0, TILE)
    mask = offs < n_elements
    if IS_4BIT:
        byte_offs = pid * (TILE // 2) + tl.arange(0, TILE // 2)
        packed = tl.load(q_ptr + byte_offs, mask=byte_offs < (n_elements + 1) // 2, other=0).to(tl.int32)
        index = tl.interleave(packed >> 4, packed & 0xF)  # (TILE,) element 2j = high nibble of byte j
    else:
        index = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32) + 128
    values = tl.load(code_ptr + index)

    block = offs // QBLOCK
    if DOUBLE_QUANT:
        c = tl.load(nested_codes_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(nested_code_ptr + c) * tl.load(nested_absmax_ptr + block // NESTED_BLOCK, mask=mask, other=0.0)
        scale = scale + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    out = values * scale
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_options(device: torch.device) -> dict:
    # enable_fp_fusion=False keeps `a * b + c` as two roundings, as the reference computes it.
    return {} if device.type != "cuda" else {"enable_fp_fusion": False}


def quantize_blockwise(flat: torch.Tensor, block_size: int, code_search: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise quantization of a flat float32 tensor.

    Args:
        flat: (n,) float32, contiguous.
        block_size: elements per absmax block.
        code_search: (midpoints (15,), order (16,) uint8) for a 4-bit codebook, or None for Int8.

    Returns:
        4-bit: packed ((n + 1) // 2, 1) uint8; Int8: (n,) int8; and absmax (n_blocks,) float32.
    """
    flat = flat.contiguous()
    n = flat.numel()
    n_blocks = triton.cdiv(n, block_size)
    blocks_per_program = max(1, _QUANT_TILE // block_size)
    grid = (triton.cdiv(n_blocks, blocks_per_program),)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=flat.device)
    if code_search is None:
        q = torch.empty(n, dtype=torch.int8, device=flat.device)
        _quantize_int8_kernel[grid](flat, q, absmax, n, n_blocks, QBLOCK=block_size, BLOCKS_PER_PROGRAM=blocks_per_program)
        return q, absmax
    midpoints, order = code_search
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=flat.device)
    _quantize_4bit_kernel[grid](
        flat, packed, absmax, midpoints, order, n, n_blocks, QBLOCK=block_size, BLOCKS_PER_PROGRAM=blocks_per_program
    )
    return packed.unsqueeze(1), absmax


def dequantize_blockwise(qt: QuantizedTensor, code: torch.Tensor, out_dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Dequantizes `qt` with one kernel launch; returns a flat (n,) tensor of `out_dtype` (or `out`)."""
    n = qt.numel
    device = qt.device
    # Note: interpreter — compute and store fp32, let torch round to bf16 (see module docstring).
    kernel_dtype = torch.float32 if (out_dtype == torch.bfloat16 and interpreter_active()) else out_dtype
    if out is not None and kernel_dtype == out_dtype and out.is_contiguous():
        target = out.view(-1)
    else:
        target = torch.empty(n, dtype=kernel_dtype, device=device)
    nested = qt.nested
    dummy_f32 = torch.empty(1, dtype=torch.float32, device=device)
    dummy_u8 = torch.empty(1, dtype=torch.uint8, device=device)
    grid = (triton.cdiv(n, _DEQUANT_TILE),)
    _dequantize_kernel[grid](
        qt.data,
        dummy_f32 if qt.absmax is None else qt.absmax,
        code,
        dummy_u8 if nested is None else nested.codes,
        dummy_f32 if nested is None else nested.absmax,
        dummy_f32 if nested is None else nested.code,
        dummy_f32 if nested is None else nested.offset.reshape(1),
        target,
        n,
        QBLOCK=qt.block_size,
        NESTED_BLOCK=256 if nested is None else nested.block_size,
        TILE=_DEQUANT_TILE,
        IS_4BIT=qt.dtype.is_4bit,
        DOUBLE_QUANT=nested is not None,
        **_launch_options(device),
    )
    if target.dtype != out_dtype:
        target = target.to(out_dtype)
    if out is not None and target.data_ptr() != out.data_ptr():
        out.view(-1).copy_(target)
        return out.view(-1)
    return target
