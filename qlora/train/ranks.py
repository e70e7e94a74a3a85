"""How the trainer follows a process group (`qlora.train.trainer`, `# Note: ranks`): which rank this is,
each rank's share of a micro-batch and its loss weight, and whole tensors for checkpoints.

One process (no process group, or a model that is not sharded) is `Ranks(0, 1, sharded=False)`, and
every helper then does exactly what the single-process trainer did.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from qlora.train.batching import IGNORE_INDEX, collate
from qlora.train.checkpoint import latest_checkpoint
from qlora.train.config import TrainConfig


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank's own shard of a sharded (DTensor) parameter; any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


@dataclasses.dataclass(frozen=True)
class Ranks:
    """The process group a training run follows: one process (size 1, nothing sharded) or FSDP2 ranks."""

    rank: int
    size: int
    sharded: bool
    device: torch.device

    @classmethod
    def of(cls, params: list[torch.nn.Parameter]) -> "Ranks":
        import torch.distributed as dist

        sharded = any(hasattr(p, "to_local") for p in params)  # DTensors: FSDP2 shards
        device = params[0].device
        if not (dist.is_available() and dist.is_initialized()):
            return cls(0, 1, False, device)
        if not sharded and dist.get_world_size() > 1:
            raise ValueError(f"torch.distributed runs {dist.get_world_size()} ranks but the model is not sharded: shard it "
                             "with qlora.distributed.shard_model(model) on every rank first")  # fmt: skip
        return cls(dist.get_rank(), dist.get_world_size(), sharded, device)

    def sum(self, value: float) -> float:
        """`value` summed over the ranks (one small all-reduce)."""
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            dist.barrier()

    def full_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if not self.sharded:
            return t
        from qlora.distributed.state import full_tensor

        return full_tensor(t)

    def local_shard(self, full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not self.sharded:
            return full
        from qlora.distributed.state import local_shard

        return local_shard(full, like)

    def gather_optimizer_state(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict:
        if not self.sharded:
            return optimizer.state_dict()
        from qlora.distributed.optim_state import gather_optimizer_state

        return gather_optimizer_state(optimizer, params)

    def shard_optimizer_state(self, saved: dict, params: list[torch.nn.Parameter]) -> dict:
        from qlora.distributed.optim_state import SHARDS, shard_optimizer_state

        if not self.sharded and SHARDS not in saved:
            return saved
        return shard_optimizer_state(saved, params)


def latest_for_ranks(checkpoint_dir: str | Path, ranks: Ranks) -> Path | None:
    """The checkpoint to resume; rank 0 first removes killed writers' leftovers while the others wait."""
    if ranks.rank == 0:
        found = latest_checkpoint(checkpoint_dir)
    ranks.barrier()
    return found if ranks.rank == 0 else latest_checkpoint(checkpoint_dir)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_009 + rank


def loss_terms(example: dict[str, torch.Tensor]) -> int:
    """How many terms an example adds to its batch's mean loss: label tokens after the causal shift
    (transformers' causal-LM loss), or 1 (classification)."""
    if "labels" in example:
        return int((example["labels"][1:] != IGNORE_INDEX).sum())
    return 1


def sharded_backward(model, examples, indices, terms, ranks: Ranks, config: TrainConfig, pad_token_id: int, device, autocast,
                      *, last: bool) -> float:  # fmt: skip
    """Forward and backward of this rank's share of one micro-batch (`# Note: ranks`); returns its share
    of the micro-batch's mean loss divided by grad_accum (summed over the ranks by the caller)."""
    mine = indices[ranks.rank :: ranks.size]
    total = sum(terms[i] for i in indices)
    share = sum(terms[i] for i in mine)
    batch = collate([examples[i] for i in (mine or indices[:1])], pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items()}
    model.set_requires_gradient_sync(last)  # reduce-scatter once per optimizer step
    with autocast:
        out = model(**batch)
        # a rank without examples or loss terms still runs the forward/backward the collectives expect
        loss = out.loss * (share / total) if share and total else out.logits.sum() * 0.0
    (loss * (ranks.size / config.grad_accum)).backward()  # FSDP averages over the ranks
    return loss.item() / config.grad_accum
