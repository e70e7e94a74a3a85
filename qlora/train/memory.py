"""Memory accounting: peak device memory and what it is made of (paper §4 "memory requirements")."""

from __future__ import annotations

import dataclasses
import resource
import sys

import torch


def _tensor_bytes(tensors) -> int:
    """Bytes this process holds: a sharded tensor (FSDP2's DTensor) counts its local shard only."""
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors if isinstance(t, torch.Tensor))
    return sum(t.numel() * t.element_size() for t in local)


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Bytes. `peak` is torch.cuda.max_memory_allocated on GPU, the process' peak RSS on CPU;
    `activations` = peak - weights - adapters - gradients - optimizer state (GPU only; None on CPU,
    where the peak RSS also holds the Python runtime and libraries)."""

    device: str
    peak: int
    weights: int
    adapters: int
    gradients: int
    optimizer_state: int
    activations: int | None

    def as_dict(self) -> dict[str, float]:
        mb = 1024 * 1024
        out = {f"{k}_mb": v / mb for k, v in dataclasses.asdict(self).items() if isinstance(v, int)}
        return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def memory_report(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> MemoryReport:
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapters = _tensor_bytes(trainable)
    gradients = _tensor_bytes(p.grad for p in trainable if p.grad is not None)
    frozen = _tensor_bytes(p for p in model.parameters() if not p.requires_grad)
    frozen += _tensor_bytes(b for b in model.buffers())
    if hasattr(optimizer, "state_bytes"):  # paged state lives outside torch's allocator: ask the optimizer
        optimizer_state = optimizer.state_bytes()
    else:
        optimizer_state = sum(_tensor_bytes(s.values()) for s in optimizer.state.values())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        activations = max(0, peak - frozen - adapters - gradients - optimizer_state)
    else:
        peak, activations = peak_rss_bytes(), None
    return MemoryReport(device.type, peak, frozen, adapters, gradients, optimizer_state, activations)
