"""Bad checkpoint and adapter files fail with errors naming the file and the key; nothing half-written."""

import json

import pytest
import torch

from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig
from qlora.models.bnb_checkpoint import WEIGHTS_FILE, save_quantized_checkpoint
from qlora.models.loading import adapter_weights, load_adapter_into, load_quantized_model
from qlora.models.peft_format import TaskType, load_peft_adapter, save_peft_adapter
from qlora.models.surgery import prepare_model
from qlora.nn import QLoRALinear
from tests.models.test_loading import tiny

QUANT = QuantConfig(compute_dtype=ComputeDtype.FP32)
LORA = LoRAConfig(rank=4, dropout=0.0)


@pytest.fixture
def saved(tmp_path):
    model = tiny()
    prepare_model(model, QUANT, LORA)
    quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    others = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in quantized and k != "lm_head.weight"}
    save_quantized_checkpoint(tmp_path / "base", model.config.to_dict(), quantized, others)
    save_peft_adapter(tmp_path / "adapter", adapter_weights(model, LORA, TaskType.CAUSAL_LM))
    return tmp_path


def test_truncated_safetensors(saved):
    f = saved / "base" / WEIGHTS_FILE
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}: not a readable safetensors file"):
        load_quantized_model(saved / "base", ModelKind.CAUSAL_LM)


def test_corrupt_adapter_file(saved):
    (saved / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="adapter_model.safetensors: not a readable safetensors file"):
        load_peft_adapter(saved / "adapter")


def test_missing_key(saved):
    from safetensors.torch import load_file, save_file

    f = saved / "base" / WEIGHTS_FILE
    state = load_file(f)
    del state["model.norm.weight"]
    save_file(state, f)
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\]"):
        load_quantized_model(saved / "base", ModelKind.CAUSAL_LM)


def test_shape_that_does_not_match_the_config(saved):
    cfg = json.loads((saved / "base" / "config.json").read_text())
    cfg["vocab_size"] = 97
    (saved / "base" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"base: tensors do not match the model's config: .*model.embed_tokens.weight"):
        load_quantized_model(saved / "base", ModelKind.CAUSAL_LM)


def test_quantized_weight_with_a_bad_state(saved):
    from safetensors.torch import load_file, save_file

    f = saved / "base" / WEIGHTS_FILE
    state = load_file(f)
    key = "model.layers.0.mlp.up_proj.weight"
    state[key] = state[key][:-1]
    save_file(state, f)
    with pytest.raises(ValueError, match=rf"quantized weight {key}: nf4 data for shape"):
        load_quantized_model(saved / "base", ModelKind.CAUSAL_LM)


def test_adapter_for_a_different_base(saved, tmp_path):
    model = load_quantized_model(saved / "base", ModelKind.CAUSAL_LM, lora=LoRAConfig(rank=8, dropout=0.0))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.down_proj: adapter shapes \(4, 128\), \(64, 4\) do not match"):
        load_adapter_into(model, load_peft_adapter(saved / "adapter"))
    adapter = load_peft_adapter(saved / "adapter")
    adapter.lora["model.layers.7.mlp.up_proj"] = adapter.lora.pop("model.layers.0.mlp.up_proj")
    model4 = load_quantized_model(saved / "base", ModelKind.CAUSAL_LM, lora=LORA)
    with pytest.raises(ValueError, match="targets 'model.layers.7.mlp.up_proj', which this model does not have"):
        load_adapter_into(model4, adapter)


def test_failed_save_leaves_nothing(tmp_path):
    model = tiny()
    prepare_model(model, QUANT, LORA)
    quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    with pytest.raises(ValueError, match="collides"):
        save_quantized_checkpoint(tmp_path / "x", model.config.to_dict(), quantized, {"model.layers.0.mlp.up_proj.weight": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []
