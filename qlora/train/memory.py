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
    `optimizer_state` is all of it, `optimizer_state_outside` the part outside torch's device allocator
    (GPU only: CUDA managed memory of a paged optimizer, and state kept on the CPU such as step
    counters), which `peak` never counts; `activations` = peak - weights - adapters - gradients - the
    optimizer state torch allocated (`activation_bytes`; GPU only; None on CPU, where the peak RSS also
    holds the Python runtime and libraries)."""

    device: str
    peak: int
    weights: int
    adapters: int
    gradients: int
    optimizer_state: int
    activations: int | None
    optimizer_state_outside: int = 0

    def as_dict(self) -> dict[str, float]:
        mb = 1024 * 1024
        out = {f"{k}_mb": v / mb for k, v in dataclasses.asdict(self).items() if isinstance(v, int)}
        return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def activation_bytes(peak_allocated: int, *, weights: int, adapters: int, gradients: int, optimizer_state: int,
                     optimizer_state_outside: int) -> int:  # fmt: skip
    """What remains of torch's peak allocation once the tensors that live through the step are taken out.

    Only memory torch's caching allocator handed out is in `peak_allocated` (max_memory_allocated): paged
    optimizer state lives in CUDA managed memory outside it (`qlora.optim.paging`), so only
    `optimizer_state - optimizer_state_outside` is subtracted (subtracting all of it understated the
    activations by the paged state, ~2x the adapters for 32-bit AdamW).

    Raises:
        ValueError: more paged state than state, or a negative byte count.
    """
    values = dict(peak_allocated=peak_allocated, weights=weights, adapters=adapters, gradients=gradients,
                  optimizer_state=optimizer_state, optimizer_state_outside=optimizer_state_outside)  # fmt: skip
    negative = {k: v for k, v in values.items() if v < 0}
    if negative:
        raise ValueError(f"byte counts must be >= 0, got {negative}")
    if optimizer_state_outside > optimizer_state:
        raise ValueError(f"optimizer_state_outside={optimizer_state_outside} exceeds optimizer_state={optimizer_state}")
    allocated_state = optimizer_state - optimizer_state_outside
    return max(0, peak_allocated - weights - adapters - gradients - allocated_state)


def _optimizer_bytes(optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[int, int]:
    """(all optimizer state, the part outside torch's allocator on `device`) in bytes."""
    if hasattr(optimizer, "state_bytes"):  # paged state lives outside torch's allocator: ask the optimizer
        total = optimizer.state_bytes()
        paged = optimizer.paged_state_bytes() if hasattr(optimizer, "paged_state_bytes") else 0
    else:
        total, paged = sum(_tensor_bytes(s.values()) for s in optimizer.state.values()), 0
    # state kept on another device (e.g. the CPU step counters) is not in the device's allocator either
    elsewhere = sum(_tensor_bytes(t for t in s.values() if isinstance(t, torch.Tensor) and t.device.type != device.type)
                    for s in optimizer.state.values())  # fmt: skip
    return total, min(total, paged + elsewhere)


def memory_report(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> MemoryReport:
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapters = _tensor_bytes(trainable)
    gradients = _tensor_bytes(p.grad for p in trainable if p.grad is not None)
    frozen = _tensor_bytes(p for p in model.parameters() if not p.requires_grad)
    frozen += _tensor_bytes(b for b in model.buffers())
    optimizer_state, outside = _optimizer_bytes(optimizer, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        activations = activation_bytes(peak, weights=frozen, adapters=adapters, gradients=gradients,
                                       optimizer_state=optimizer_state, optimizer_state_outside=outside)  # fmt: skip
    else:
        peak, activations = peak_rss_bytes(), None
    return MemoryReport(device.type, peak, frozen, adapters, gradients, optimizer_state, activations, outside if device.type == "cuda" else 0)
