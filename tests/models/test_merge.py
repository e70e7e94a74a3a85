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


def test_merge_and_unload_with_its_default_dtype_runs_and_saves_what_the_cli_writes(tmp_path):
    """The default (bf16) merge used to mix bf16 layers with fp32 norms and embeddings: its forward failed."""
    import json
    import os

    from safetensors.torch import load_file

    model = prepared(tiny_models.llama)
    ids = torch.randint(1, 96, (2, 10))
    merged = merge_and_unload(model)
    assert {t.dtype for t in merged.state_dict().values()} == {torch.bfloat16}
    with torch.no_grad():
        ours, theirs = model(ids).logits, merged(ids).logits.float()
    assert (theirs - ours).norm() / ours.norm() < 2e-2  # every weight rounded to bf16 once
    merged.save_pretrained(tmp_path / "library")
    export_merged(model, tmp_path / "cli")  # what `qlora merge` writes
    assert json.loads((tmp_path / "library" / "config.json").read_text())["dtype"] == "bfloat16"
    library, cli = load_file(tmp_path / "library" / "model.safetensors"), load_file(tmp_path / "cli" / "model.safetensors")
    assert sorted(library) == sorted(cli) and all(library[k].dtype == torch.bfloat16 and torch.equal(library[k], cli[k]) for k in cli)
    umask = os.umask(0)
    os.umask(umask)
    for folder in ("library", "cli"):  # safetensors creates files 0600; outputs get the umask's permissions
        assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / folder).iterdir()} == dict.fromkeys(
            ["config.json", "generation_config.json", "model.safetensors"], 0o666 & ~umask)
