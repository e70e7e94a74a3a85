"""Memory of a training step by part (`qlora.train.memory_breakdown`, `qlora.train.live_bytes`): exact
parameter and optimizer bytes on a tiny QLoRA model; activations counted op by op, cut by checkpointing."""

import pytest
import torch

from qlora.config import Checkpointing, LoRAConfig, QuantConfig, SurgeryConfig
from qlora.models.surgery import model_report, prepare_model
from qlora.optim import AdamWConfig, PagedAdamW
from qlora.train.live_bytes import LiveBytes
from qlora.train.memory_breakdown import MemoryBreakdown, measure_step_memory
from tests.models.tiny_models import llama

RANK = 4
# tiny llama: hidden 64, 2 KV heads of 16, MLP 128, 2 blocks; adapters r x (in + out) per linear layer:
# q 128, k 96, v 96, o 128, gate 192, up 192, down 192 = 1024 per rank and block
ADAPTER_PARAMS = 2 * 1024 * RANK


def test_live_bytes_counts_new_storages_until_freed():
    x = torch.ones(1000)  # made before: never counted
    with LiveBytes() as t:
        a = x * 2  # 4,000 bytes
        b = a.view(10, 100)  # a view: no new storage
        b.mul_(3)  # in place: none either
        c = torch.empty(500, dtype=torch.float64)  # 4,000 bytes
        assert (t.live, t.peak, t.allocations) == (8000, 8000, 2)
        del c
        assert t.live == 4000
        del a
        assert t.live == 4000  # `b` keeps the storage alive
        del b
        assert (t.live, t.peak) == (0, 8000)
        t.reset_peak()
        d = x[:10] + 1  # 40 bytes
        assert (t.live, t.peak) == (40, 40)
    assert d.sum().item() == 20


def _model(checkpointing=Checkpointing.OFF, rank=RANK):
    model = llama()
    report = prepare_model(model, SurgeryConfig(QuantConfig(), LoRAConfig(rank=rank, alpha=16, dropout=0.0), checkpointing))
    model.config.use_cache = False
    return model, report


def _batches(n, seq_len, batch=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 96, (batch, seq_len), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def _measure(checkpointing=Checkpointing.OFF, seq_len=32, n=3, rank=RANK) -> tuple[MemoryBreakdown, object]:
    torch.manual_seed(0)
    model, report = _model(checkpointing, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    return measure_step_memory(model, _batches(n, seq_len), PagedAdamW(params, config=AdamWConfig(lr=1e-3))), report


def test_parameter_and_optimizer_bytes_are_exact():
    m, report = _measure()
    assert m.adapters == 4 * ADAPTER_PARAMS == 32768  # fp32 adapters
    assert m.gradients == m.adapters
    # AdamW: two fp32 moments per adapter weight + one fp32 step counter per tensor (14 layers x A, B)
    assert m.optimizer_state == 2 * m.adapters + 4 * 28
    # every byte the frozen model holds: the storage of the checkpoint (packed NF4 codes, DQ constants, embeddings,
    # head, norms) + each layer's copy of the 256-entry double-quantization map, which bits/param leaves out
    assert m.weights == report.weight_bytes_after + 14 * 256 * 4
    assert m.peak == m.weights + m.adapters + m.gradients + m.optimizer_state + m.activations_peak
    assert m.adapter_side == m.adapters + m.gradients + m.optimizer_state
    assert m.share("adapter_side") == pytest.approx(m.adapter_side / m.peak)
    assert m.measured == 2 and m.spread == 0  # same shapes, same bytes


def test_activations_are_counted_grow_with_length_and_checkpointing_cuts_them():
    off, _ = _measure(seq_len=32)
    assert 0 < off.activations_saved <= off.activations_peak
    longer, _ = _measure(seq_len=64)
    assert longer.activations_saved > 1.8 * off.activations_saved  # ~linear in tokens (attention adds a T^2 part)
    on, _ = _measure(Checkpointing.NON_REENTRANT, seq_len=32)
    assert on.activations_saved < 0.6 * off.activations_saved
    assert on.activations_peak < off.activations_peak
    assert (on.weights, on.adapters, on.optimizer_state) == (off.weights, off.adapters, off.optimizer_state)


def test_saved_activations_cover_what_autograd_saves():
    """Without checkpointing, what is alive after the forward is what autograd saved for the backward
    (distinct storages that are not parameters or buffers), plus little else."""
    torch.manual_seed(0)
    model, _ = _model()
    model.train()
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in known and s.nbytes():
            saved[s.data_ptr()] = s.nbytes()
        return t

    batch = _batches(1, 32)[0]
    with LiveBytes() as tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
        alive = tracker.live
    loss.backward()
    assert sum(saved.values()) > 0
    assert sum(saved.values()) <= alive <= 1.1 * sum(saved.values())


def test_more_adapters_cost_their_weights_gradients_and_state():
    small, _ = _measure(rank=2, n=2)
    large, _ = _measure(rank=8, n=2)
    assert large.adapters == 4 * small.adapters
    assert large.adapter_side - small.adapter_side == 4 * (large.adapters - small.adapters)
    assert large.weights == small.weights


def test_bad_arguments():
    model, _ = _model()
    opt = PagedAdamW([p for p in model.parameters() if p.requires_grad], config=AdamWConfig())
    with pytest.raises(ValueError, match="need a warm-up batch and at least one measured batch, got 1"):
        measure_step_memory(model, _batches(1, 8), opt)
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure_step_memory(model, _batches(2, 8), opt)
