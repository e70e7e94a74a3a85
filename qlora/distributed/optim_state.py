"""Optimizer state of sharded parameters in checkpoints: written whole, resumed on any number of ranks.

Under FSDP2 each rank's `PagedAdamW` keeps state for its own shards (`qlora.optim.paged_adamw`,
`# Note: sharded parameters`). `gather_optimizer_state` turns the ranks' states into one:
- 32-bit moments (`exp_avg`, `exp_avg_sq`, shaped like the shard) are gathered whole, so the
  result is exactly the state_dict one process would have (resumable by one process or by any
  number of ranks, bit for bit);
- 8-bit moments (codes and absmax, quantized in blocks of 256 *within* a shard) are kept as the list
  of every rank's piece, and the dict records how many ranks there were (`SHARDS`). Resumed on as
  many ranks, each takes its own piece back, bit for bit; on another number of ranks the pieces are
  dequantized, cut into the new shards and quantized again (with a warning: their blocks differ, so
  that resume is close but not bit-exact).
`shard_optimizer_state` is the inverse for this rank (`optimizer.load_state_dict` of its result).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from qlora.distributed.state import gather_like, local_shard
from qlora.optim import state8bit
from qlora.optim.state8bit import MomentMap

SHARDS = "shards"  # key of the number of ranks whose 8-bit pieces a gathered state holds
_MOMENTS_32 = ("exp_avg", "exp_avg_sq")
_MOMENTS_8 = {"exp_avg": MomentMap.SIGNED, "exp_avg_sq": MomentMap.UNSIGNED}  # -> <name>_codes, <name>_absmax


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_optimizer_state(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The whole optimizer state (see the module docstring); a collective: every rank calls it.

    Args:
        optimizer: holds `params` (in this order) in its param groups.
        params: the parameters, DTensors where sharded.

    Returns:
        On every rank: {"state", "param_groups"} (+ SHARDS for 8-bit pieces); `optimizer.state_dict()`
        itself when nothing is sharded.
    """
    saved = optimizer.state_dict()
    if not any(isinstance(p, DTensor) for p in params):
        return saved
    _, size = _world()
    state, pieces = {}, False
    for index in sorted(saved["state"]):
        p, out = params[index], {}
        for key, value in saved["state"][index].items():
            if not isinstance(p, DTensor) or not isinstance(value, torch.Tensor) or value.dim() == 0:
                out[key] = value
            elif key in _MOMENTS_32:
                out[key] = gather_like(value, p).cpu()
            else:  # 8-bit codes / absmax of this rank's shard
                gathered: list = [None] * size
                dist.all_gather_object(gathered, value.cpu())
                out[key], pieces = gathered, True
        state[index] = out
    result = {"state": state, "param_groups": saved["param_groups"]}
    if pieces:
        result[SHARDS] = size
    return result


def shard_optimizer_state(saved: dict[str, Any], params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """This rank's optimizer state_dict from a gathered one (or from one process' state_dict).

    Raises:
        ValueError: the state names a parameter index that `params` lacks, or its pieces do not fit.
    """
    rank, size = _world()
    saved_size = saved.get(SHARDS, 1)
    state, requantized = {}, False
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise ValueError(f"optimizer state for parameter {index!r}: no such parameter (this model has {len(params)})")
        p, out = params[index], dict(entry)
        for key in _MOMENTS_32:
            if isinstance(entry.get(key), torch.Tensor):
                out[key] = local_shard(entry[key], p).clone()
        for name, kind in _MOMENTS_8.items():
            codes, absmax = entry.get(f"{name}_codes"), entry.get(f"{name}_absmax")
            if codes is None:
                continue
            codes, absmax = (codes, absmax) if isinstance(codes, list) else ([codes], [absmax])
            if len(codes) != saved_size or len(absmax) != saved_size:
                raise ValueError(f"optimizer state {name} of parameter {index}: {len(codes)} pieces, expected {saved_size}")
            local_numel = (p.to_local() if isinstance(p, DTensor) else p).numel()
            if saved_size == size and codes[rank].numel() == local_numel:
                out[f"{name}_codes"], out[f"{name}_absmax"] = codes[rank], absmax[rank]
                continue
            whole = torch.cat([state8bit.dequantize_moment(c, a, kind) for c, a in zip(codes, absmax)]).view(p.shape)
            values = local_shard(whole, p).reshape(-1).contiguous()
            new_codes = torch.empty(values.numel(), dtype=torch.uint8)
            new_absmax = torch.empty(state8bit.n_blocks(values.numel()), dtype=torch.float32)
            state8bit.quantize_moment_(values, new_codes, new_absmax, kind)
            out[f"{name}_codes"], out[f"{name}_absmax"], requantized = new_codes, new_absmax, True
        state[index] = out
    if requantized:
        warnings.warn(f"8-bit optimizer state written by {saved_size} rank(s) is quantized again for {size}: its blocks of 256 "
                      "follow the shards, so this resume is close to, not bit-exact with, an uninterrupted run", stacklevel=2)  # fmt: skip
    return {"state": state, "param_groups": saved["param_groups"]}
