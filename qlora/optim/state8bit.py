"""8-bit blockwise optimizer state: Adam's two moments as dynamic-map codes + one absmax per block.

Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization" (arXiv:2110.02861), as bitsandbytes'
8-bit optimizers store it: blocks of 256 values, one float32 absmax per block, each value the index of
the nearest entry of a 256-entry dynamic map after dividing by its block's absmax. The quantization is
the core's (`qlora.quant.reference.quantize_dynamic_8bit` / `dequantize_codes`); only the choice of map
and block size lives here.

# Note: moment maps
- exp_avg (first moment) is signed: the signed dynamic map (`codebooks.create_dynamic_map()`).
- exp_avg_sq (second moment) is never negative: the unsigned dynamic map
  (`create_dynamic_map(signed=False)`), as bitsandbytes does. The signed map would waste its 127
  negative codes on a non-negative tensor; the unsigned one has twice the fractions per decade, i.e.
  half the relative rounding error where the second moment's values live (it sets the step size
  through sqrt(v), so its error matters most for small-gradient coordinates).
Small tensors (fewer than `MIN_8BIT_SIZE` elements) keep float32 moments, as bitsandbytes'
`min_8bit_size=4096`: the saving is negligible (biases, norms) and their error is not.

# Note: update order
As bitsandbytes' blockwise kernels: dequantize, apply the Adam moment update in float32, compute the
parameter update from the *unrounded* new moments, then re-quantize them with fresh per-block absmax.
The rounding error therefore enters at the next step, never the current one.
"""

from __future__ import annotations

import enum
import math
from functools import lru_cache

import torch

from qlora.quant import codebooks, reference

BLOCK_SIZE = 256  # bitsandbytes' 8-bit blockwise optimizers (Optimizer2State, blocksize = 256)
MIN_8BIT_SIZE = 4096  # bitsandbytes' default `min_8bit_size`

_SIGNED = codebooks.create_dynamic_map(signed=True)
_UNSIGNED = codebooks.create_dynamic_map(signed=False)


class MomentMap(enum.Enum):
    """Which dynamic map a moment is stored with (see `# Note: moment maps`)."""

    SIGNED = "signed"  # exp_avg
    UNSIGNED = "unsigned"  # exp_avg_sq


def moment_code(kind: MomentMap, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (256,) float32 map, sorted ascending, for moment `kind` on `device` (cached per device)."""
    return _code_on(kind, torch.device(device))


@lru_cache(maxsize=None)
def _code_on(kind: MomentMap, device: torch.device) -> torch.Tensor:
    return (_SIGNED if kind is MomentMap.SIGNED else _UNSIGNED).to(device)


def uses_8bit(numel: int) -> bool:
    """Whether a parameter of `numel` elements gets 8-bit moments (when 8-bit state is asked for)."""
    return numel >= MIN_8BIT_SIZE


def n_blocks(numel: int) -> int:
    return math.ceil(numel / BLOCK_SIZE)


def dequantize_moment(codes: torch.Tensor, absmax: torch.Tensor, kind: MomentMap) -> torch.Tensor:
    """(n,) uint8 codes, (n_blocks,) float32 absmax -> (n,) float32.

    A block whose absmax is 0 (the initial state, or an all-zero moment) reads back as zeros whatever
    its codes, since every map entry is finite.
    """
    return reference.dequantize_codes(codes, absmax, moment_code(kind, codes.device), BLOCK_SIZE)


def quantize_moment_(values: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, kind: MomentMap) -> None:
    """Quantizes (n,) float32 `values` into the existing `codes` (n,) uint8 and `absmax` (n_blocks,) buffers.

    Writing into the buffers (not rebinding them) keeps paged state in its managed allocation.
    """
    new_codes, new_absmax = reference.quantize_dynamic_8bit(values, moment_code(kind, values.device), BLOCK_SIZE)
    codes.copy_(new_codes)
    absmax.copy_(new_absmax)
