"""Typed configuration of a training run (the paper's defaults where it has them)."""

from __future__ import annotations

import dataclasses
import enum

from qlora.checks import check_bool, check_float, check_int, enum_check, validate_fields
from qlora.optim.state_bits import StateBits


class Schedule(enum.Enum):
    CONSTANT = "constant"  # with linear warmup (paper)
    COSINE = "cosine"  # with linear warmup, decays to 0


@dataclasses.dataclass  # not frozen: Hydra/OmegaConf schemas must accept merges
class TrainConfig:
    """How to train the adapters.

    Attributes:
        max_steps: optimizer steps.
        micro_batch_size: examples per forward/backward.
        grad_accum: micro-batches per optimizer step (paper: batch 16 = 1 x 16).
        lr: peak learning rate (paper: 2e-4 up to 13B).
        schedule / warmup_ratio: learning-rate schedule (paper: constant, warmup 0.03).
        max_grad_norm: gradient clipping (paper: 0.3); 0 disables.
        weight_decay: decoupled weight decay (paper: 0).
        group_by_length: batch examples of similar length together (paper).
        seed: data order, adapter init elsewhere, dropout.
        deterministic: deterministic algorithms (CPU runs are then reproducible bit for bit).
        optimizer_bits: AdamW state precision (paper: 32-bit).
        paged: optimizer state in CUDA unified memory (paper: paged); a no-op on CPU.
        save_every: checkpoint every N optimizer steps (0: only at the end).
        keep_checkpoints: how many complete checkpoints to keep on disk.
        nproc_per_node: training processes (ranks) on this machine, one per GPU: > 1 runs the pipeline's
            training under torchrun with the model sharded by FSDP2 (`qlora.distributed`). The trainer
            itself follows whatever torch.distributed was started with; the results do not depend on it
            (the same global batches), so a run resumes on any number of ranks.
    """

    max_steps: int = 100
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    schedule: Schedule = Schedule.CONSTANT
    warmup_ratio: float = 0.03
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    group_by_length: bool = True
    seed: int = 0
    deterministic: bool = True
    optimizer_bits: StateBits = StateBits.BITS_32
    paged: bool = True
    save_every: int = 0
    keep_checkpoints: int = 1
    nproc_per_node: int = 1

    def __post_init__(self) -> None:
        positive = lambda k, v: check_int(k, v, minimum=1)  # noqa: E731
        nonnegative = lambda k, v: check_float(k, v, minimum=0)  # noqa: E731
        validate_fields(self, {
            "max_steps": positive, "micro_batch_size": positive, "grad_accum": positive, "keep_checkpoints": positive,
            "lr": lambda k, v: check_float(k, v, minimum=0, exclusive_minimum=True),
            "schedule": enum_check(Schedule),
            "warmup_ratio": lambda k, v: check_float(k, v, minimum=0, maximum=1, exclusive_maximum=True),
            "max_grad_norm": nonnegative, "weight_decay": nonnegative,
            "group_by_length": check_bool, "seed": lambda k, v: check_int(k, v, minimum=0), "deterministic": check_bool,
            "optimizer_bits": enum_check(StateBits), "paged": check_bool,
            "save_every": lambda k, v: check_int(k, v, minimum=0), "nproc_per_node": positive,
        })  # fmt: skip

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_ratio * self.max_steps))
