"""Typed configuration of a training run (the paper's defaults where it has them)."""

from __future__ import annotations

import dataclasses
import enum

from qlora.optim import StateBits


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

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "grad_accum", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule ({', '.join(s.value for s in Schedule)}), got {self.schedule!r}")
        if not isinstance(self.optimizer_bits, StateBits):
            raise ValueError(f"optimizer_bits must be a StateBits ({', '.join(str(b.value) for b in StateBits)}), got {self.optimizer_bits!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise ValueError(f"max_grad_norm and weight_decay must be >= 0, got {self.max_grad_norm!r}, {self.weight_decay!r}")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            raise ValueError(f"save_every must be an integer >= 0, got {self.save_every!r}")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_ratio * self.max_steps))
