"""Memory accounting (`qlora.train.memory`): what the peak is made of, with injected numbers (no GPU here)."""

import pytest
import torch

from qlora.optim.paged_adamw import AdamWConfig, PagedAdamW
from qlora.train.memory import activation_bytes, memory_report
from tests.train.tiny import tiny_llama

MiB = 2**20


def test_activations_subtract_only_the_optimizer_state_torch_allocated():
    parts = dict(weights=300 * MiB, adapters=20 * MiB, gradients=20 * MiB)
    # all 40 MiB of state in torch's allocator: it is part of the 1000 MiB peak
    assert activation_bytes(1000 * MiB, **parts, optimizer_state=40 * MiB, optimizer_state_outside=0) == 620 * MiB
    # paged (CUDA managed memory): max_memory_allocated never counted it, so it is not taken out again
    assert activation_bytes(1000 * MiB, **parts, optimizer_state=40 * MiB, optimizer_state_outside=40 * MiB) == 660 * MiB
    assert activation_bytes(1000 * MiB, **parts, optimizer_state=40 * MiB, optimizer_state_outside=15 * MiB) == 635 * MiB
    assert activation_bytes(100 * MiB, **parts, optimizer_state=40 * MiB, optimizer_state_outside=0) == 0  # never negative


def test_activation_bytes_refuses_inconsistent_numbers():
    parts = dict(weights=1, adapters=1, gradients=1)
    with pytest.raises(ValueError, match="optimizer_state_outside=5 exceeds optimizer_state=4"):
        activation_bytes(100, **parts, optimizer_state=4, optimizer_state_outside=5)
    with pytest.raises(ValueError, match=r"byte counts must be >= 0, got \{'peak_allocated': -1\}"):
        activation_bytes(-1, **parts, optimizer_state=0, optimizer_state_outside=0)


class _PagedOptimizer:
    """What memory_report asks a paged optimizer: all its state is in managed memory."""

    state: dict = {}

    def state_bytes(self):
        return 64 * MiB

    def paged_state_bytes(self):
        return 64 * MiB


def test_memory_report_on_cuda_with_paged_state(monkeypatch):
    model = tiny_llama()
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    adapters = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    peak = weights + adapters + 100 * MiB
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak)
    mem = memory_report(model, _PagedOptimizer(), torch.device("cuda"))
    assert (mem.peak, mem.optimizer_state, mem.optimizer_state_outside) == (peak, 64 * MiB, 64 * MiB)
    assert mem.gradients == 0 and mem.activations == 100 * MiB  # before: 36 MiB (the paged 64 MiB subtracted)


def test_paged_adamw_reports_its_paged_state(monkeypatch):
    from qlora.optim import paging

    p = torch.nn.Parameter(torch.randn(10, 7))
    opt = PagedAdamW([p], config=AdamWConfig(paged=True))
    p.grad = torch.randn_like(p)
    opt.step()
    moments = 2 * 4 * 70  # exp_avg, exp_avg_sq in fp32
    assert opt.state_bytes() == moments + 4  # + the fp32 step counter (on the CPU)
    assert opt.paged_state_bytes() == 0  # no CUDA: nothing is paged
    monkeypatch.setattr(paging, "paging_supported", lambda device: True)  # as on a GPU
    assert opt.paged_state_bytes() == moments
    unpaged = PagedAdamW([p], config=AdamWConfig(paged=False))
    unpaged.step()
    assert unpaged.paged_state_bytes() == 0
