"""Adapters know their base (`qlora.models.base_record`): recorded beside them, checked before loading.

An adapter for another base used to fail after quantizing the whole base with a shape error listing every
module (~7 KB for SmolLM2); one for a same-shape base of other weights loaded without a word.
"""

import json
import time
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qlora.config import ComputeDtype, DataType, LoRAConfig, ModelKind, QuantConfig, Targets
from qlora.models.base_record import fingerprint, read_base_record
from qlora.models.loading import load_for_inference, quantize_checkpoint
from qlora.models.pretrained import from_pretrained
from qlora.models.saving import Save, save_pretrained
from tests.models import tiny_models
from tests.models.test_pretrained import randomize_adapters
from tests.peers import peer

QUANT = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)
LORA = LoRAConfig(rank=4, alpha=8, dropout=0.0)
SUFFIXES = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def other_llama(hidden=64, layers=2, seed=0):
    """A tiny Llama of the given shape (seed 0 and 64 x 2: the weights of tiny_models.llama)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2))  # fmt: skip


@pytest.fixture()
def adapter(tmp_path):
    """An adapter trained (randomised) on tiny_models.llama, saved as the library saves it."""
    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    model = from_pretrained(base, quant=QUANT, lora=LORA)
    randomize_adapters(model)
    return base, save_pretrained(model, tmp_path / "adapter", what=Save.ADAPTER, base_model="tiny-llama"), model


def test_the_adapter_records_its_base_and_peft_style_targets(adapter):
    base, out, model = adapter
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == SUFFIXES and config["base_model_name_or_path"] == "tiny-llama"
    record = read_base_record(out)
    assert (record.name, record.model_type, record.hidden_size, record.num_layers) == ("tiny-llama", "llama", 64, 2)
    assert len(record.fingerprint) == 64 and record.fingerprint == fingerprint(model)


def test_partial_targets_stay_full_names_and_peft_loads_both_forms(tmp_path):
    peft = peer("peft")
    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    only = "model.layers.1.self_attn.q_proj"
    for name, lora, expected in (("all", LORA, SUFFIXES),
                                 ("one", LoRAConfig(rank=4, alpha=8, dropout=0.0, targets=Targets.NAMES, target_names=(only,)), [only])):  # fmt: skip
        model = from_pretrained(base, quant=QUANT, lora=lora)
        randomize_adapters(model)
        out = save_pretrained(model, tmp_path / name, what=Save.ADAPTER)
        assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == expected
        theirs = peft.PeftModel.from_pretrained(tiny_models.llama().eval(), out)
        adapted = sorted(n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if hasattr(m, "lora_A"))
        assert adapted == sorted(n for n, m in model.named_modules() if getattr(m, "lora_a", None) is not None)
        assert sorted(from_pretrained(base, adapter=out).state_dict()) == sorted(model.state_dict())  # and it loads here


@pytest.mark.parametrize("hidden, layers", [(32, 2), (64, 3)], ids=["narrower", "deeper"])
def test_another_base_is_refused_in_one_line_before_quantizing(adapter, tmp_path, monkeypatch, hidden, layers):
    import qlora.models.loading
    import qlora.models.pretrained

    _, out, _ = adapter
    other = tiny_models.save(other_llama(hidden, layers), tmp_path / "other")
    q4 = quantize_checkpoint(other, ModelKind.CAUSAL_LM, QUANT, tmp_path / "other-q4")

    def no_work(*args, **kwargs):
        raise AssertionError("quantized or loaded weights before refusing")

    monkeypatch.setattr(qlora.models.pretrained, "quantize", no_work)
    monkeypatch.setattr(qlora.models.pretrained, "_load_quantized", no_work)
    monkeypatch.setattr(qlora.models.loading, "load_for_training", no_work)
    expected = (rf"^{out}: the adapter was trained on 'tiny-llama' \(llama, hidden size 64, 2 layers\), not on '.*' "
                rf"\(llama, hidden size {hidden}, {layers} layers\): load it onto its own base$")  # fmt: skip
    for load in (lambda: from_pretrained(other, adapter=out), lambda: from_pretrained(q4, adapter=out),
                 lambda: load_for_inference(q4, ModelKind.CAUSAL_LM, out)):  # fmt: skip
        started = time.perf_counter()
        with pytest.raises(ValueError, match=expected) as error:
            load()
        assert time.perf_counter() - started < 2.0
        assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_an_adapter_without_a_record_is_checked_layer_by_layer(adapter, tmp_path):
    """A PEFT-made adapter has no qlora_base.json: its layers' shapes are checked against the base's config."""
    _, out, _ = adapter
    (out / "qlora_base.json").unlink()
    other = tiny_models.save(other_llama(32, 2), tmp_path / "other")
    with pytest.raises(ValueError, match=rf"^{out}: the adapter does not fit '.*' \(llama, hidden size 32, 2 layers\): "
                                         r"14 of its 14 layers do not fit \(e.g. model.layers.0.mlp.down_proj: adapter 128->64, "
                                         r"base 64->32\); load it onto its own base$"):  # fmt: skip
        from_pretrained(other, adapter=out)


def test_a_same_shape_base_with_other_weights_loads_with_a_warning(adapter, tmp_path):
    base, out, model = adapter
    twin = tiny_models.save(other_llama(seed=1), tmp_path / "twin")  # same config, other weights
    with pytest.warns(UserWarning, match=r"trained on 'tiny-llama' \(llama, hidden size 64, 2 layers\), whose weights differ from"):
        loaded = from_pretrained(twin, adapter=out)
    assert torch.equal(loaded.model.layers[0].self_attn.q_proj.lora_b, model.model.layers[0].self_attn.q_proj.lora_b)
    with pytest.warns(UserWarning, match="whose weights differ"):
        load_for_inference(quantize_checkpoint(twin, ModelKind.CAUSAL_LM, QUANT, tmp_path / "twin-q4"), ModelKind.CAUSAL_LM, out)


def test_its_own_base_loads_silently_in_every_form(adapter, tmp_path):
    """The float folder, its 4-bit checkpoints (other tensors in fp32 or bf16) and a bf16 load: one fingerprint."""
    base, out, model = adapter
    forms = [base, quantize_checkpoint(base, ModelKind.CAUSAL_LM, QUANT, tmp_path / "q4-fp32"),
             save_pretrained(from_pretrained(base), tmp_path / "q4-bf16")]  # default compute dtype: bf16 other tensors
    assert json.loads((forms[2] / "config.json").read_text())["dtype"] == "bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a warning here would fail the test
        for folder in forms:
            from_pretrained(folder, adapter=out)
        load_for_inference(forms[1], ModelKind.CAUSAL_LM, out)
        from_pretrained(base, adapter=out, dtype=torch.bfloat16)
    assert fingerprint(from_pretrained(forms[2], quant=QuantConfig())) == read_base_record(out).fingerprint


def test_a_layer_its_target_suffixes_name_must_have_weights(adapter, tmp_path):
    """With PEFT's suffixes the file cannot say which layers it should hold; the base can."""
    from safetensors.torch import load_file, save_file

    base, out, _ = adapter
    state = load_file(out / "adapter_model.safetensors")
    for x in "AB":
        del state[f"base_model.model.model.layers.1.mlp.up_proj.lora_{x}.weight"]
    save_file(state, out / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=rf"^{out}: target_modules \['down_proj', .*\] name 1 layers of '.*' \(llama, hidden size 64, "
                                         r"2 layers\) that the adapter has no weights for \(e.g. model.layers.1.mlp.up_proj\)$"):  # fmt: skip
        from_pretrained(base, adapter=out)
