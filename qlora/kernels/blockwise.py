"""Blockwise quantize / dequantize kernels for every data type (codebooks, tables and scales as inputs).

Quantize (4-bit codebooks): per block, absmax = max |x|; scaled = clamp(x * (1 / absmax), -1, 1);
sorted position = #{midpoints < scaled}; code = order[position]; two codes per byte, first element in
the high nibble. Int8: round-half-even(127 * scaled). Minifloat grids (FP8, NVFP4, MXFP4:
`_quantize_grid_kernel`): y = x * enc[block] with the block's encode factor given, sorted position =
#{i : y > mid[i] or (y == mid[i] and ties_up[i])} by binary search, code = order[position] (round to
nearest, ties to even, saturating). Equivalent torch maths: `qlora.quant.reference`.

Dequantize: out = code[q] * scale[block]. The scale is a float32 absmax, or computed in the same kernel
from 8-bit codes: double-quantized, nested_code[c] * nested_absmax[block // 256] + offset (multiply, then
add: no FMA, so the result equals the reference bit for bit); coded scales (NVFP4, MXFP4),
scale_map[c] with the 256-entry map given.

# Note: interpreter
Triton's CPU interpreter gets bf16 arithmetic wrong and rounds fp32 -> bf16 by truncation. All maths
here is fp32; under the interpreter a bf16 output is written as fp32 by the kernel and rounded by torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements per program. Big tiles: each interpreted program costs ~40 ms on CPU whatever its size.
QUANT_TILE = 4096
DEQUANT_TILE = 4096


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
    # an fp32 constant: 1e-38 is subnormal in fp32, and Triton 3.4-3.5 make such a Python float fp64
    floored = tl.maximum(absmax, tl.full(absmax.shape, 1e-38, tl.float32))
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
def _quantize_grid_kernel(
    # pointers
    x_ptr,  # (n,) float32 input
    enc_ptr,  # (n_blocks,) float32, each block's encode factor
    codes_ptr,  # PACK: ((n + 1) // 2,) uint8, two codes per byte; else (n,) uint8
    midpoints_ptr,  # (2**LOG2_CODES,) float32, sorted, +inf past the grid
    ties_ptr,  # (2**LOG2_CODES,) uint8, 1 where a tie at that midpoint goes up
    order_ptr,  # (2**LOG2_CODES,) uint8, sorted position -> storage code
    # sizes
    n_elements,
    # meta-parameters
    QBLOCK: tl.constexpr,  # elements per block (per encode factor)
    TILE: tl.constexpr,  # elements per program
    LOG2_CODES: tl.constexpr,  # 4 (16 codes) or 8 (256 codes)
    PACK: tl.constexpr,  # two 4-bit codes per byte, first element in the high nibble
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * TILE + tl.arange(0, TILE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    y = x * tl.load(enc_ptr + offs // QBLOCK, mask=mask, other=0.0)
    position = tl.zeros((TILE,), dtype=tl.int32)
    for level in tl.static_range(LOG2_CODES):  # binary search: the passed midpoints form a prefix
        probe = position + ((1 << (LOG2_CODES - 1 - level)) - 1)
        mid = tl.load(midpoints_ptr + probe)
        up = (y > mid) | ((y == mid) & (tl.load(ties_ptr + probe) != 0))
        position = tl.where(up, position + (1 << (LOG2_CODES - 1 - level)), position)
    codes = tl.load(order_ptr + position)  # (TILE,) uint8
    if PACK:
        hi, lo = tl.split(tl.reshape(codes, (TILE // 2, 2)))
        byte_offs = pid * (TILE // 2) + tl.arange(0, TILE // 2)
        tl.store(codes_ptr + byte_offs, (hi << 4) | lo, mask=byte_offs < (n_elements + 1) // 2)
    else:
        tl.store(codes_ptr + offs, codes, mask=mask)


@triton.jit
def _dequantize_kernel(
    # pointers
    q_ptr,  # 4-bit: ((n + 1) // 2,) uint8 packed codes; 8-bit: (n,) int8
    absmax_ptr,  # (n_blocks,) float32 (unused when DOUBLE_QUANT)
    code_ptr,  # (16,) or (256,) float32 codebook
    nested_codes_ptr,  # (n_blocks,) uint8 (DOUBLE_QUANT or CODED_SCALES: the scale codes)
    nested_absmax_ptr,  # (ceil(n_blocks / NESTED_BLOCK),) float32 (DOUBLE_QUANT)
    nested_code_ptr,  # (256,) float32 (DOUBLE_QUANT or CODED_SCALES: the scale of each code)
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
    CODED_SCALES: tl.constexpr,
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
    elif CODED_SCALES:
        c = tl.load(nested_codes_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(nested_code_ptr + c)
    else:
        scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    out = values * scale
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# enable_fp_fusion=False keeps `a * b + c` as two roundings, as the reference computes it (no FMA): with
# fusion, int8 quantize's `scaled * 127 + 1.5 * 2^23` compiles to 32 FMAs per program on sm_80 / sm_90
# (qlora.kernels.aot), which round the exact product instead of the fp32 one.
EXACT_OPTIONS = {"enable_fp_fusion": False}


def _launch_options(device: torch.device) -> dict:
    return {} if device.type != "cuda" else dict(EXACT_OPTIONS)


def quantize_blocks_per_program(block_size: int) -> int:
    """Quantization blocks per program of the quantize kernels: QUANT_TILE elements, at least one block."""
    return max(1, QUANT_TILE // block_size)


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
    blocks_per_program = quantize_blocks_per_program(block_size)
    grid = (triton.cdiv(n_blocks, blocks_per_program),)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=flat.device)
    if code_search is None:
        q = torch.empty(n, dtype=torch.int8, device=flat.device)
        _quantize_int8_kernel[grid](flat, q, absmax, n, n_blocks, QBLOCK=block_size, BLOCKS_PER_PROGRAM=blocks_per_program,
                                    **_launch_options(flat.device))  # fmt: skip
        return q, absmax
    midpoints, order = code_search
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=flat.device)
    _quantize_4bit_kernel[grid](
        flat, packed, absmax, midpoints, order, n, n_blocks, QBLOCK=block_size, BLOCKS_PER_PROGRAM=blocks_per_program,
        **_launch_options(flat.device),
    )
    return packed.unsqueeze(1), absmax


def quantize_to_grid(flat: torch.Tensor, enc: torch.Tensor, block_size: int,
                     table: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *, bits: int) -> torch.Tensor:
    """Rounds x * enc[block] to a minifloat grid (nearest, ties to even, saturating): the element codes.

    Args:
        flat: (n,) float32.
        enc: (ceil(n / block_size),) float32, each block's encode factor.
        table: (midpoints, ties_up, order) of 2**k entries (k = 4 or 8): `qlora.quant.minifloat.RoundingTable`.
        bits: 4 (packed ((n + 1) // 2, 1) uint8) or 8 ((n,) int8 bit patterns).
    """
    midpoints, ties_up, order = table
    n_codes = midpoints.numel()
    if n_codes not in (16, 256) or ties_up.numel() != n_codes or order.numel() != n_codes:
        raise ValueError(f"a rounding table has 16 or 256 entries per part, got {midpoints.numel()}, {ties_up.numel()}, {order.numel()}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    flat = flat.contiguous()
    n = flat.numel()
    pack = bits == 4
    out = torch.empty((n + 1) // 2 if pack else n, dtype=torch.uint8, device=flat.device)
    grid = (triton.cdiv(n, QUANT_TILE),)
    _quantize_grid_kernel[grid](flat, enc.contiguous(), out, midpoints, ties_up, order, n, QBLOCK=block_size, TILE=QUANT_TILE,
                                LOG2_CODES=n_codes.bit_length() - 1, PACK=pack, **_launch_options(flat.device))  # fmt: skip
    return out.unsqueeze(1) if pack else out.view(torch.int8)


def dequantize_blockwise(
    codes: torch.Tensor,
    absmax: torch.Tensor | None,
    code: torch.Tensor,
    *,
    numel: int,
    block_size: int,
    bits: int,
    out_dtype: torch.dtype,
    nested_codes: torch.Tensor | None = None,
    nested_absmax: torch.Tensor | None = None,
    nested_offset: torch.Tensor | None = None,
    nested_code: torch.Tensor | None = None,
    nested_block_size: int = 256,
    scale_codes: torch.Tensor | None = None,
    scale_map: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[e] = code[index(e)] * absmax[e // block_size], with one kernel launch.

    With double quantization (the four `nested_*` tensors instead of `absmax`), the absmax of block b is
    nested_code[nested_codes[b]] * nested_absmax[b // nested_block_size] + nested_offset, computed in
    the same kernel. With coded scales (`scale_codes`, `scale_map` instead of `absmax`: NVFP4, MXFP4), the
    scale of block b is scale_map[scale_codes[b]].

    Args:
        codes: 4-bit: ((numel + 1) // 2,) uint8 bytes, element 2j in the high nibble of byte j;
            8-bit: (numel,) int8 (codebook row = code + 128). Any shape with that many elements.
        absmax: (ceil(numel / block_size),) float32, or None when the nested tensors are given.
        code: the codebook, float32: 16 values (bits=4) or 256 (bits=8).
        numel: elements of the dequantized tensor.
        block_size: elements per absmax.
        bits: 4 or 8.
        out_dtype: float32, float16 or bfloat16.
        nested_codes: (n_blocks,) uint8. nested_absmax: (ceil(n_blocks / nested_block_size),) float32.
        nested_offset: one float32 value. nested_code: (256,) float32.
        scale_codes: (n_blocks,) uint8. scale_map: (256,) float32.
        out: optional preallocated output of `numel` elements of `out_dtype`, any strides (a
            non-contiguous one is filled from a contiguous staging buffer).

    Returns:
        (numel,) tensor of `out_dtype`; when `out` is given: `out` flattened if it is contiguous, else
        `out` itself (its shape and strides).
    """
    nested = (nested_codes, nested_absmax, nested_offset, nested_code)
    double_quant = nested_codes is not None
    coded = scale_codes is not None
    if coded != (scale_map is not None) or (coded and (double_quant or absmax is not None)):
        raise ValueError("coded scales need scale_codes and scale_map, and neither absmax nor the nested tensors")
    if coded:
        nested_codes, nested_code = scale_codes, scale_map
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    expected_codes = ((numel + 1) // 2, torch.uint8) if bits == 4 else (numel, torch.int8)
    if (codes.numel(), codes.dtype) != expected_codes:
        raise ValueError(f"{bits}-bit codes of {numel} elements must be {expected_codes[0]} x {expected_codes[1]}, got {codes.numel()} x {codes.dtype}")
    if not coded and (any((t is None) == double_quant for t in nested) or (absmax is None) != double_quant):
        raise ValueError("give either absmax or all four nested tensors (codes, absmax, offset, code)")
    device = codes.device
    # Note: interpreter — compute and store fp32, let torch round to bf16 (see module docstring).
    kernel_dtype = torch.float32 if (out_dtype == torch.bfloat16 and interpreter_active()) else out_dtype
    if out is not None and kernel_dtype == out_dtype and out.is_contiguous():
        target = out.view(-1)
    else:
        target = torch.empty(numel, dtype=kernel_dtype, device=device)
    dummy_f32 = torch.empty(1, dtype=torch.float32, device=device)
    dummy_u8 = torch.empty(1, dtype=torch.uint8, device=device)
    grid = (triton.cdiv(numel, DEQUANT_TILE),)
    _dequantize_kernel[grid](
        codes,
        dummy_f32 if absmax is None else absmax,
        code,
        nested_codes if double_quant or coded else dummy_u8,
        nested_absmax if double_quant else dummy_f32,
        nested_code if double_quant or coded else dummy_f32,
        nested_offset.reshape(1) if double_quant else dummy_f32,
        target,
        numel,
        QBLOCK=block_size,
        NESTED_BLOCK=nested_block_size,
        TILE=DEQUANT_TILE,
        IS_4BIT=bits == 4,
        DOUBLE_QUANT=double_quant,
        CODED_SCALES=coded,
        **_launch_options(device),
    )
    if target.dtype != out_dtype:
        target = target.to(out_dtype)
    if out is None:
        return target
    if target.data_ptr() != out.data_ptr():  # a staging buffer: out is strided, or bf16 under the interpreter
        out.copy_(target.view(out.shape))  # element by element in out's logical order, whatever its strides
    return out.view(-1) if out.is_contiguous() else out
