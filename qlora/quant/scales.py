"""Block scales of the minifloat types: how each block's scale is chosen, stored in 8 bits, and decoded.

Every minifloat type quantizes a block as y = x * enc[block] rounded to its element grid (nearest-even,
saturating: `qlora.quant.minifloat`), and dequantizes as value[code] * scale[block]. This module computes
(enc, stored scale) per block, in float32, for every backend alike (the kernels take `enc` as a tensor):

- FP8 (`ScaleFormat.FP32`, like Int8): scale = absmax (float32), enc = F_max / absmax (0 for an all-zero
  block, at most float32's max), and the codebook entry is value / F_max (`dtypes.codebook`).
- MXFP4 (`ScaleFormat.E8M0`, OCP Microscaling Formats (MX) v1.0, §6.3): the shared exponent is
  floor(log2(absmax)) - emax_elem (emax_elem = 2 for E2M1, whose largest value is 6 = 1.5 * 2^2),
  clamped to E8M0's range [-127, 127]; stored as the byte exponent + 127; scale 2^exponent, enc its
  exact reciprocal. floor(log2) is read from the float32 exponent field (a subnormal or zero absmax gives
  the smallest scale, 2^-127). Elements beyond 6 after scaling saturate to 6, as the spec's clamp.
- NVFP4 (`ScaleFormat.E4M3`; NVIDIA's two-level recipe as TransformerEngine's NVFP4 reference quantizer
  computes it, 1-D blocks of 16): per tensor, g_enc = min(448 * 6 / amax_tensor, float32 max) (1 if
  that is 0) and g_dec = 1 / g_enc, stored as the tensor's float32 scale; per block, s = E4M3(min(absmax
  * (g_enc * (1/6)), float32 max)) rounded nearest-even and saturating at 448, stored as its E4M3 byte;
  scale = s * g_dec; enc = min(1 / scale, float32 max).
Each product and quotient is one float32 operation, in the order written (no fused multiply-add).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from qlora.quant import minifloat
from qlora.quant.dtypes import ScaleFormat

_F32_MAX = torch.finfo(torch.float32).max
E8M0_BIAS = 127
NVFP4_TENSOR_NUMERATOR = 448.0 * 6.0  # E4M3 max x E2M1 max: the largest value a tensor's block scales span


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _block_absmax(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    pad = -flat.numel() % block_size
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block_size).abs().amax(dim=1)


def absmax_scales(flat: torch.Tensor, block_size: int, grid_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8's scales: absmax (n_blocks,) float32, and enc = grid_max / absmax (0 where absmax is 0).

    Returns:
        (absmax, enc), both (n_blocks,) float32.
    """
    absmax = _block_absmax(flat, block_size)
    enc = torch.where(absmax > 0, torch.minimum(_f32(grid_max, absmax) / absmax, _f32(_F32_MAX, absmax)), _f32(0.0, absmax))
    return absmax, enc


def e8m0_scales(flat: torch.Tensor, block_size: int, emax_elem: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4's scales (OCP MX v1.0): the E8M0 byte per block and enc = 2^-(shared exponent).

    Returns:
        (codes (n_blocks,) uint8, enc (n_blocks,) float32).
    """
    absmax = _block_absmax(flat, block_size)
    exponent_field = (absmax.view(torch.int32) >> 23) & 0xFF  # floor(log2(absmax)) + 127 for a normal absmax
    shared = (exponent_field - 127 - emax_elem).clamp(min=-E8M0_BIAS, max=E8M0_BIAS)
    codes = (shared + E8M0_BIAS).to(torch.uint8)
    enc = _reciprocal_powers_of_two(flat.device)[codes.long()]
    return codes, enc


def nvfp4_tensor_scale(peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's per-tensor scales from the tensor's largest |value| (a float32 scalar tensor).

    Returns:
        (g_dec, multiplier): g_dec = 1 / g_enc, the stored per-tensor scale; multiplier = g_enc * (1/6),
        what a block's absmax is multiplied by to give its E4M3 scale. Both () float32.
    """
    peak = peak.to(torch.float32).reshape(())
    g_enc = torch.minimum(_f32(NVFP4_TENSOR_NUMERATOR, peak) / peak, _f32(_F32_MAX, peak))  # peak 0: inf -> max
    g_enc = torch.where(g_enc == 0, _f32(1.0, peak), g_enc)
    g_dec = _f32(1.0, peak) / g_enc
    multiplier = g_enc * torch.reciprocal(_f32(minifloat.E2M1.max, peak))
    return g_dec, multiplier


def e4m3_scales(flat: torch.Tensor, block_size: int, g_dec: torch.Tensor, multiplier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's block scales: the E4M3 byte per block and enc = 1 / (E4M3 value * g_dec).

    Returns:
        (codes (n_blocks,) uint8, enc (n_blocks,) float32).
    """
    absmax = _block_absmax(flat, block_size)
    wanted = torch.minimum(absmax * multiplier, _f32(_F32_MAX, absmax))
    codes = minifloat.round_to_grid(wanted, minifloat.rounding_table(minifloat.E4M3, flat.device))
    scale = minifloat.values(minifloat.E4M3).to(flat.device)[codes.long()] * g_dec
    enc = torch.minimum(_f32(1.0, scale) / scale, _f32(_F32_MAX, scale))  # scale 0: inf -> max
    return codes, enc


@lru_cache(maxsize=None)
def _e8m0_values_cpu() -> torch.Tensor:
    """(256,) float32: 2^(code - 127), code 255 NaN (E8M0's NaN). 2^-127 is a float32 subnormal, exact."""
    return torch.tensor([2.0 ** (c - E8M0_BIAS) for c in range(255)] + [float("nan")], dtype=torch.float32)


@lru_cache(maxsize=None)
def _reciprocal_powers_of_two_cpu() -> torch.Tensor:
    return torch.tensor([2.0 ** (E8M0_BIAS - c) for c in range(255)] + [float("nan")], dtype=torch.float32)


def _reciprocal_powers_of_two(device: torch.device | str) -> torch.Tensor:
    return _reciprocal_powers_of_two_cpu().to(device)


def scale_map(scale_format: ScaleFormat, tensor_scale: torch.Tensor | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(256,) float32: the block scale each stored byte stands for (what the dequantize kernel looks up).

    E8M0: 2^(code - 127). E4M3: E4M3 value * tensor_scale (one float32 product, as `e4m3_scales`).
    Codes the quantizer never writes decode as the format says (NaN for E8M0's 255 and E4M3's NaN codes;
    the E4M3 negatives).
    """
    if scale_format is ScaleFormat.E8M0:
        return _e8m0_values_cpu().to(device)
    if scale_format is ScaleFormat.E4M3:
        if tensor_scale is None:
            raise ValueError("E4M3 block scales need the per-tensor float32 scale")
        return minifloat.values(minifloat.E4M3).to(device) * tensor_scale.to(device, torch.float32).reshape(())
    raise ValueError(f"scale format {scale_format} has no 8-bit scale codes")
