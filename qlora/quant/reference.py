"""Pure-PyTorch reference of blockwise quantization: the specification the kernels are tested against.

Small pure functions on flat float32 tensors. Rounding follows bitsandbytes 0.50 on CPU bit for bit:
- 4-bit: scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1); sorted position = #{midpoints < scaled}
  (an exact tie goes to the lower code), mapped to the storage code (`nearest_code_search`).
- 8-bit dynamic map, double quantization (`quantize_dynamic_8bit_lut`): x * (1 / absmax) rounded to a
  65536-point grid on [-1, 1], then the code nearest that grid point, from a table (bitsandbytes'
  `build_quantize_lut` in csrc/cpu_ops.cpp; `# Note: bitsandbytes' 8-bit lookup table`).
- 8-bit dynamic map, optimizer state (`quantize_dynamic_8bit`): the exactly nearest code of x / absmax.
- INT8 (paper Eq. 1): round-half-to-even(127 * scaled).
- minifloat types (FP8, NVFP4, MXFP4; `quantize_to_grid`): y = x * enc[block] (`qlora.quant.scales`)
  rounded to the element format's grid, nearest with ties to even, saturating (`qlora.quant.minifloat`).
- double quantization: the paper's dynamic map (`double_quantize`) or E4M4 (`double_quantize_e4m4`).
Dequantization is code[q] * scale in float32, then one rounding to the output dtype.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from qlora.quant import codebooks, minifloat

_TINY = 1e-38  # absmax floor, as bitsandbytes: an all-zero block scales to zeros


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) -> (n_blocks, block_size), the partial last block padded with zeros."""
    pad = -flat.numel() % block_size
    return F.pad(flat, (0, pad)).view(-1, block_size)


def blockwise_absmax(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) float32 -> (ceil(n / block_size),) float32 absmax per block."""
    return _blocks(flat, block_size).abs().amax(dim=1)


def scale_to_unit(flat: torch.Tensor, absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    """x * (1 / absmax) clamped to [-1, 1]; (n,) -> (n,).

    # Note: partial block
    As bitsandbytes' CPU `quantize_4bit`, a partial last block divides by its absmax (x / absmax, not
    x * (1 / absmax)); its absmax is floored at 1e-38 where full blocks keep a raw 0 (see
    `quantization_absmax`).
    """
    n = flat.numel()
    inv = 1.0 / absmax.clamp(min=_TINY)
    scaled = _blocks(flat, block_size) * inv[:, None]
    if n % block_size:
        full = n - n % block_size
        scaled[-1, : n - full] = flat[full:] / absmax[-1].clamp(min=_TINY)
    return scaled.clamp(-1, 1).view(-1)[:n]


def quantization_absmax(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """The absmax stored by the blockwise quantizers: raw, but a partial last block's floored at 1e-38."""
    absmax = blockwise_absmax(flat, block_size)
    if flat.numel() % block_size:
        absmax[-1] = absmax[-1].clamp(min=_TINY)
    return absmax


def quantize_4bit(flat: torch.Tensor, block_size: int, midpoints: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 4-bit quantization with any codebook.

    Args:
        flat: (n,) float32, finite.
        midpoints: (15,) float32, midpoints between the sorted codes.
        order: (16,) uint8, sorted position -> storage code.

    Returns:
        packed ((n + 1) // 2, 1) uint8 (first element in the high nibble), absmax (n_blocks,) float32.
    """
    absmax = quantization_absmax(flat, block_size)
    scaled = scale_to_unit(flat, absmax, block_size)
    if scaled.numel() % 2:
        scaled = F.pad(scaled, (0, 1))  # the pad nibble holds the code of 0
    codes = order[torch.bucketize(scaled, midpoints)]
    return pack_nibbles(codes), absmax


def quantize_to_grid(flat: torch.Tensor, enc: torch.Tensor, block_size: int, table: minifloat.RoundingTable, bits: int) -> torch.Tensor:
    """Minifloat quantization of the elements: code of (x * enc[block]) on the grid of `table`.

    Args:
        flat: (n,) float32, finite.
        enc: (n_blocks,) float32, each block's encode factor (`qlora.quant.scales`).
        table: the element format's rounding table (nearest, ties to even, saturating).
        bits: 4 (two codes per byte, first element in the high nibble) or 8 (one int8 bit pattern each).

    Returns:
        4-bit: packed ((n + 1) // 2, 1) uint8; 8-bit: (n,) int8.
    """
    n = flat.numel()
    y = (_blocks(flat, block_size) * enc[:, None]).view(-1)[:n]
    codes = minifloat.round_to_grid(y, table)
    if bits == 8:
        return codes.view(torch.int8)
    if n % 2:
        codes = F.pad(codes, (0, 1))  # the pad nibble holds code 0 (+0)
    return pack_nibbles(codes)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(2m,) uint8 codes < 16 -> (m, 1) uint8, element 2j in the high nibble."""
    return ((codes[0::2] << 4) | codes[1::2]).unsqueeze(1)


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(m, 1) uint8 -> (n,) uint8 codes, n <= 2m."""
    flat = packed.view(-1)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).view(-1)[:n]


def dequantize_codes(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    """code[codes] * absmax per block, float32; (n,) integer codes -> (n,) float32."""
    n = codes.numel()
    values = code[codes.long()]
    return (_blocks(values, block_size) * absmax[:, None]).view(-1)[:n]


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int, n: int) -> torch.Tensor:
    """Inverse of `quantize_4bit` up to rounding: -> (n,) float32."""
    return dequantize_codes(unpack_nibbles(packed, n), absmax, code, block_size)


def quantize_int8(flat: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax Int8 (paper Eq. 1): (n,) float32 -> codes (n,) int8, absmax (n_blocks,) float32."""
    absmax = quantization_absmax(flat, block_size)
    scaled = scale_to_unit(flat, absmax, block_size)
    return torch.round(scaled * codebooks.INT8_LEVELS).to(torch.int8), absmax


def dequantize_int8(codes: torch.Tensor, absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) int8 -> (n,) float32: (q / 127) * absmax, the same values as the INT8 codebook."""
    return dequantize_8bit(codes, absmax, _int8_code(codes.device), block_size)


def dequantize_8bit(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) int8 codes, (256,) codebook indexed by q + 128 (Int8, FP8) -> (n,) float32 code[q + 128] * scale."""
    return dequantize_codes(codes.to(torch.int32) + 128, absmax, code, block_size)


def _int8_code(device: torch.device) -> torch.Tensor:
    return torch.arange(-128, 128, dtype=torch.float32, device=device) / codebooks.INT8_LEVELS


# Note: bitsandbytes' 8-bit lookup table
# bitsandbytes 0.50.2's CPU `quantize_blockwise` (`quantize_cpu_impl` and `build_quantize_lut` in
# csrc/cpu_ops.cpp) does not search the map per value: it rounds each normalised value to a grid of
# 65536 points on [-1, 1] and reads the code from a table built once per map. Step by step, in float32:
# - absmax per block (0 for an all-zero block, whose codes are all 0);
# - v = clamp(x * (1 / absmax), -1, 1)  (a multiply by the reciprocal, not a division);
# - k = trunc((v + 1) * 0.5 * 65535 + 0.5), an integer in [0, 65535];
# - code = table[k] = #{i : mid[i] < -1 + (2k) / 65535}, mid[i] = 0.5 * (code[i] + code[i + 1]).
# So the result is the nearest code to the grid point k, not to v: values within half a grid step
# (~1.5e-5) of a midpoint can take the farther neighbour, and map entries closer together than a grid
# step (the dynamic map's smallest magnitudes) can never be chosen. bitsandbytes' older CPU builds used
# a bucketed binary search (BinSearch's Direct2 in include/Algo-Direct2.h, then the distance check of
# `quantize_block` in csrc/common.cpp); 0.50.2 ships the table instead (its CPU library holds
# `build_quantize_lut` and no BinSearch code). Whether the last step is fused into an FMA makes no
# difference: checked over every float32 v in [-1, 1] for the signed dynamic map.

_LUT_POINTS = 65536  # bitsandbytes' kLUTSize


@lru_cache(maxsize=16)
def _code_table(code_bytes: bytes, device: torch.device) -> torch.Tensor:
    """(65536,) int64 table of `# Note: bitsandbytes' 8-bit lookup table`, for the map in `code_bytes`."""
    code = torch.frombuffer(bytearray(code_bytes), dtype=torch.float32)
    midpoints = (code[:-1] + code[1:]) * 0.5
    k = torch.arange(_LUT_POINTS, dtype=torch.float32)
    grid = -1.0 + (2.0 * k) / torch.full_like(k, _LUT_POINTS - 1)  # tensor / tensor: an IEEE float32 division
    return torch.searchsorted(midpoints, grid).to(device)  # #{midpoints < grid point}


def quantize_dynamic_8bit(flat: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 8-bit quantization to the exactly nearest entry of a sorted map (8-bit optimizer state).

    normed = x / absmax; the nearer of its two neighbouring codes, the lower one on a tie. Not what
    bitsandbytes 0.50.2 computes on CPU (see `quantize_dynamic_8bit_lut`, used for double quantization).

    Args:
        flat: (n,) float32.
        code: (256,) float32, sorted ascending.

    Returns:
        codes (n,) uint8, absmax (n_blocks,) float32.
    """
    n = flat.numel()
    absmax = blockwise_absmax(flat, block_size)
    normed = (_blocks(flat, block_size) / absmax[:, None]).view(-1)[:n]
    left = (torch.searchsorted(code, normed, right=True) - 1).clamp(0, code.numel() - 2)
    dist_left = (normed - code[left]).abs()
    dist_right = (normed - code[left + 1]).abs()
    return (left + (dist_right < dist_left).long()).to(torch.uint8), absmax


def quantize_dynamic_8bit_lut(flat: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 8-bit quantization to a sorted map, bit for bit as bitsandbytes 0.50.2's CPU `quantize_blockwise`.

    The rounding goes through a 65536-point grid on [-1, 1] (see `# Note: bitsandbytes' 8-bit lookup
    table`): nearest-code only up to ~1.5e-5 of absmax, and a 0 lands on the code nearest +1.5e-5.

    Args:
        flat: (n,) float32, finite.
        code: (m,) float32, sorted ascending, m <= 256.

    Returns:
        codes (n,) uint8, absmax (n_blocks,) float32.
    """
    n = flat.numel()
    blocks = _blocks(flat, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)
    zero = absmax == 0
    inv = torch.where(zero, torch.zeros_like(absmax), 1.0 / absmax)
    normed = (blocks * inv[:, None]).clamp(-1, 1)
    k = ((normed + 1.0) * 0.5 * (_LUT_POINTS - 1) + 0.5).to(torch.int64)  # truncation, as the C cast
    table = _code_table(code.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), flat.device)
    codes = table[k].masked_fill_(zero[:, None], 0)  # an all-zero block stores code 0
    return codes.to(torch.uint8).view(-1)[:n], absmax


def double_quantize(absmax: torch.Tensor, block_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paper §3: quantize (absmax - mean) blockwise to 8 bits with the signed dynamic map.

    Rounds as bitsandbytes 0.50.2 on CPU (`quantize_dynamic_8bit_lut`), so the nested codes equal
    `quantize_4bit(..., compress_statistics=True)`'s.

    Returns:
        codes (n,) uint8, nested absmax (ceil(n / block_size),) float32, offset () float32.
    """
    offset = absmax.mean()
    codes, absmax2 = quantize_dynamic_8bit_lut(absmax - offset, dynamic_map(absmax.device), block_size)
    return codes, absmax2, offset


def double_quantize_e4m4(absmax: torch.Tensor, block_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization to unsigned E4M4 bytes (`DoubleQuant.E4M4`).

    Per group of `block_size` absmax values, s = (largest absmax of the group) / 31 (E4M4's largest
    value); each absmax / s is rounded to the E4M4 grid (nearest, ties to even, saturating at 31); a group
    of zeros has s = 0 and codes 0. Decoded as `double_dequantize` with the E4M4 values as the map and
    offset 0: absmax ~ E4M4(code) * s.

    Returns:
        codes (n,) uint8, s (ceil(n / block_size),) float32, offset () float32 (0).
    """
    n = absmax.numel()
    groups = _blocks(absmax, block_size)  # (n_groups, block_size), zero-padded
    s = groups.amax(dim=1) / torch.tensor(minifloat.E4M4.max, dtype=torch.float32, device=absmax.device)
    safe = torch.where(s > 0, s, torch.ones_like(s))[:, None]
    ratio = torch.where(s[:, None] > 0, groups / safe, torch.zeros_like(groups))
    codes = minifloat.round_to_grid(ratio.view(-1)[:n], minifloat.rounding_table(minifloat.E4M4, absmax.device))
    return codes, s, torch.zeros((), dtype=torch.float32, device=absmax.device)


def double_dequantize(codes: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    """code[codes] * absmax2 + offset, float32: the first-level absmax back."""
    return dequantize_codes(codes, absmax2, code, block_size) + offset


_DYNAMIC_MAP = codebooks.create_dynamic_map()


def dynamic_map(device: torch.device | str = "cpu") -> torch.Tensor:
    """The signed dynamic map (256,) float32 on `device`."""
    return _DYNAMIC_MAP.to(device)
