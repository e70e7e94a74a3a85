"""What the memory of a QLoRA training step is made of, counted exactly on any device (issue 19, claim h).

The paper (§4, "memory requirements") says the adapters are a small part of the footprint and that the
activations — the LoRA input gradients — take most of it, which gradient checkpointing cuts. This module
measures each part of one training step of a prepared model:

- weights: the bytes of every frozen parameter and buffer (packed 4-bit codes, block constants,
  embeddings, norms), from the tensors;
- adapters, gradients: the bytes of the trainable parameters and of their `.grad`, from the tensors;
- optimizer state: the bytes of the optimizer's state tensors after a step (AdamW: two moments per
  adapter weight, and step counters);
- activations: the tensors the forward and backward create, counted by `LiveBytes` (every storage an
  aten op allocates, until it is freed): `activations_saved` is what is still alive when the forward
  has returned the loss (what autograd keeps for the backward), `activations_peak` the most alive at
  once during forward + backward (saved activations, activation gradients, recomputed blocks under
  gradient checkpointing, and short-lived temporaries such as a dequantized weight).

The first batch is a whole optimizer step (it creates the optimizer state); every later batch is
measured as a micro-batch of gradient accumulation: its gradients add in place into the zeroed
`.grad` of the adapters, so nothing but the step's own tensors is counted. Shapes alone decide these
bytes, so every measured micro-batch of one shape gives the same numbers (`spread` says by how much
they differed).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch

from qlora.train.live_bytes import LiveBytes


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@dataclasses.dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of each part of a training step's memory (see the module docstring for how each is counted).

    Attributes:
        weights / adapters / gradients / optimizer_state: tensors that live through the whole step.
        activations_saved: tensors alive after the forward (kept for the backward).
        activations_peak: the most tensors of the step alive at once, forward and backward.
        measured: micro-batches measured (the warm-up step not included).
        spread: max - min of `activations_peak` over the measured micro-batches.
    """

    weights: int
    adapters: int
    gradients: int
    optimizer_state: int
    activations_saved: int
    activations_peak: int
    measured: int
    spread: int

    @property
    def peak(self) -> int:
        """The step's peak: everything that lives through it plus the activations at their peak."""
        return self.weights + self.adapters + self.gradients + self.optimizer_state + self.activations_peak

    @property
    def adapter_side(self) -> int:
        """What more adapters cost: their weights, gradients and optimizer state."""
        return self.adapters + self.gradients + self.optimizer_state

    def share(self, part: str) -> float:
        """`part` (a field name, or "adapter_side") as a share of `peak`."""
        return getattr(self, part) / self.peak if self.peak else 0.0

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "peak": self.peak}


def _micro_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast, tracker: LiveBytes | None) -> tuple[int, int]:
    """Forward and backward of one batch; (bytes alive after the forward, peak) under `tracker`."""
    with tracker if tracker is not None else contextlib.nullcontext():
        with autocast:
            loss = model(**batch).loss  # the model's output object (logits) is dropped here, as in the trainer
        saved = tracker.live if tracker is not None else 0
        loss.backward()
        del loss
    return saved, (tracker.peak if tracker is not None else 0)


def measure_step_memory(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, *,
                        compute_dtype: torch.dtype = torch.float32) -> MemoryBreakdown:  # fmt: skip
    """Measures a training step's memory by part.

    Args:
        model: a prepared model in training mode (adapters require grad; gradient checkpointing as wanted),
            whose forward(**batch) returns an object with `.loss`.
        batches: the first runs a whole optimizer step (warm-up: it creates the optimizer state); each
            later one is measured. Each: {"input_ids": (B, T), "labels": (B, T), optional "attention_mask"}.
        optimizer: over the model's trainable parameters.
        compute_dtype: autocast dtype of forward and backward (float32: no autocast), as the trainer's.

    Returns:
        MemoryBreakdown over the measured batches (activations: the largest of them).

    Raises:
        ValueError: fewer than two batches, or a model without trainable parameters.
    """
    if len(batches) < 2:
        raise ValueError(f"need a warm-up batch and at least one measured batch, got {len(batches)} batch(es)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: prepare it (adapters) before measuring")
    device = trainable[0].device
    autocast = torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)
    model.train()
    _micro_batch(model, batches[0], autocast, None)
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # zeroed, not freed: the measured micro-batches accumulate into them
    saved, peaks = [], []
    for batch in batches[1:]:
        s, p = _micro_batch(model, batch, autocast, LiveBytes())
        saved.append(s)
        peaks.append(p)
    gradients = _tensor_bytes(p.grad for p in trainable)
    optimizer.zero_grad(set_to_none=True)
    frozen = _tensor_bytes(p for p in model.parameters() if not p.requires_grad) + _tensor_bytes(model.buffers())
    state = _tensor_bytes(t for s in optimizer.state.values() for t in s.values())
    return MemoryBreakdown(weights=frozen, adapters=_tensor_bytes(trainable), gradients=gradients, optimizer_state=state,
                           activations_saved=max(saved), activations_peak=max(peaks), measured=len(peaks),
                           spread=max(peaks) - min(peaks))  # fmt: skip
