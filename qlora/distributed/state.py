"""Whole tensors from shards and shards from whole tensors: saving once, loading on any number of ranks.

FSDP2 keeps each parameter as a DTensor sharded on dim 0 (rank r holds a contiguous block of rows,
`torch.chunk` sizes: 9 rows on 2 ranks are 5 + 4). Checkpoints and saved models hold whole tensors,
so that what a run writes does not depend on how many ranks wrote it:
- `full_tensor` gathers one tensor (a collective: every rank calls it, every rank gets it);
- `gathered(model)` swaps whole parameters into the model for a moment, so code written for one
  process (`qlora.save_pretrained`, `save_peft_adapter`, merged export) saves a sharded model
  unchanged and byte for byte as one process would;
- `local_shard` cuts a rank's rows out of a whole tensor that every rank has read (no communication).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (a collective: every rank must call it); other tensors as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_shard(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The rows of `full` that this rank holds of `like` (a sharded parameter); `full` itself when `like`
    is not sharded. `full` must be the same on every rank (e.g. read from one checkpoint)."""
    if not isinstance(like, DTensor):
        return full
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"a whole tensor of shape {tuple(full.shape)} cannot be sharded like a parameter of shape {tuple(like.shape)}")
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()


def gather_like(local: torch.Tensor, like: DTensor) -> torch.Tensor:
    """The whole tensor from every rank's `local` piece, each shaped like its shard of `like` (a collective)."""
    whole = DTensor.from_local(local.to(like.device), like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
    return whole.full_tensor()


def reshard(model: nn.Module) -> None:
    """Frees any gathered (unsharded) parameters of an FSDP2 model: each module holds its shards again."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model` looks as on one process: every sharded parameter is a plain Parameter
    holding its whole value, and every module has its own class again (not FSDP2's FSDP<Name>).

    The whole values are the stored originals (fp32 adapters, the quantized codes), never a
    mixed-precision copy. Every rank must enter (gathering is a collective) and every rank holds the
    whole model inside; the sharded parameters come back on exit. Do not run forward or backward inside.
    """
    reshard(model)
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    classes: list[tuple[nn.Module, type]] = []
    whole: dict[int, nn.Parameter] = {}  # tied parameters (an embedding and a head) stay tied
    try:
        for module in model.modules():
            if isinstance(module, FSDPModule):  # FSDP2 made its class FSDP<Name>(FSDPModule, <Name>): savers record the name
                classes.append((module, type(module)))
                module.__class__ = next(b for b in type(module).__bases__ if b is not FSDPModule)
            for name, p in list(module._parameters.items()):
                if isinstance(p, DTensor):
                    if id(p) not in whole:
                        whole[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
                    module._parameters[name] = whole[id(p)]
                    swapped.append((module, name, p))
        yield model
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p
        for module, cls in classes:
            module.__class__ = cls
