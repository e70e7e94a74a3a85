"""`merge_and_unload` returns a new model and leaves the prepared one (and its adapters) as they were."""

import pytest
import torch

from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.models.export import export_merged
from qlora.models.surgery import merge_and_unload, prepare_model
from qlora.nn import QLoRALinear
from tests.models import tiny_models
from tests.models.test_pretrained import randomize_adapters


def prepared(build):
    model = build().eval()
    prepare_model(model, QuantConfig(compute_dtype=ComputeDtype.FP32), LoRAConfig(rank=4, dropout=0.0))
    randomize_adapters(model)
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build", [tiny_models.llama_tied, tiny_models.qwen2, tiny_models.gpt2])
def test_merge_and_unload_leaves_the_original_intact(build):
    model = prepared(build)
    ids = torch.randint(1, 96, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
    state = snapshot(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}

    merged = merge_and_unload(model, torch.float32)

    assert merged is not model and not any(isinstance(m, QLoRALinear) for m in merged.modules())
    assert {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)} == layers  # same layer objects
    after = model.state_dict()
    assert sorted(after) == sorted(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert all(m.lora_a.requires_grad and m.lora_b.requires_grad for m in layers.values())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
        merged_logits = merged(ids).logits
    assert (merged_logits - before).norm() / before.norm() < 1e-5  # fp32 merge: the same function
    # nothing shared: changing the copy does not touch the original
    with torch.no_grad():
        merged.get_input_embeddings().weight.add_(1.0)
    assert torch.equal(model.get_input_embeddings().weight, state[next(k for k in state if "wte" in k or "embed_tokens" in k)])


def test_export_merged_leaves_the_model_prepared(tmp_path):
    model = prepared(tiny_models.llama)
    state = snapshot(model)
    export_merged(model, tmp_path / "merged")
    assert sum(isinstance(m, QLoRALinear) for m in model.modules()) == 14
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
