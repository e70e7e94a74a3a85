"""LoRA adapter parameters: creation, initialisation and the low-rank update s·B·A.

LoRA (Hu et al. 2021, arXiv:2106.09685) adds ΔW = s·B·A to a frozen weight W of shape (out, in), with
A (r × in), B (out × r) and s = alpha / r. QLoRA (arXiv:2305.14314, Eq. 5) keeps that adapter in
16/32 bits next to a 4-bit W.

# Note: LoRA init
A is Kaiming-uniform with a = sqrt(5) (the nn.Linear default, bound 1/sqrt(in); also PEFT's default),
B is zeros, so B·A = 0 and a fresh adapter leaves the layer's output exactly unchanged, while
gradients still reach B at once (dL/dB = s·dY·(X·Aᵀ) ≠ 0) and A from the first update of B on.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def reset_lora_parameters(lora_a: torch.Tensor, lora_b: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Re-initialises an adapter in place (see `# Note: LoRA init`), drawing A from `generator` (default:
    the global RNG)."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(lora_b)


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by `seed` and a layer's name (sha256): the same layer gets the same draws for
    the same seed, whatever else consumed the global RNG before (see `# Note: adapter init per layer`)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def lora_parameters(in_features: int, out_features: int, rank: int, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[nn.Parameter, nn.Parameter]:  # fmt: skip
    """A fresh adapter (lora_a, lora_b) of shapes (rank, in_features) and (out_features, rank).

    Raises:
        ValueError: rank < 1 or a non-positive feature count.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1 for an adapter, got {rank!r}")
    if in_features < 1 or out_features < 1:
        raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
    lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
    lora_b = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))
    reset_lora_parameters(lora_a, lora_b)
    return lora_a, lora_b


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """s · B A, shape (out_features, in_features), computed in fp32 and rounded once to `dtype`."""
    return (lora_b.detach().to(torch.float32) @ lora_a.detach().to(torch.float32) * scaling).to(dtype)
