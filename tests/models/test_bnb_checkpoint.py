"""Quantized checkpoints move both ways between us and transformers + bitsandbytes (on CPU)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import qlora
from qlora.models.bnb_checkpoint import load_quantized_checkpoint, save_quantized_checkpoint
from tests.peers import peer

bnb = peer("bitsandbytes")
from transformers import BitsAndBytesConfig  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_fp32")
    model.save_pretrained(path)
    return model, path


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


def quantize_model(model, quant_type, double_quant):
    names = linear_names(model)
    quantized = {n: qlora.quantize(model.get_submodule(n).weight, quant_type, 64, double_quant) for n in names}
    others = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in quantized}
    return quantized, others


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_our_checkpoint_loads_in_transformers_with_bitsandbytes(tiny, tmp_path, quant_type, double_quant):
    model, _ = tiny
    quantized, others = quantize_model(model, quant_type, double_quant)
    out = save_quantized_checkpoint(tmp_path / "ours", model.config.to_dict(), quantized, others)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == quant_type
    theirs = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
    for name, q in quantized.items():
        module = theirs.get_submodule(name)
        assert isinstance(module, bnb.nn.Linear4bit), name
        w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        assert torch.equal(w.float(), qlora.dequantize(q, torch.float32)), name

    # the same logits as a plain model holding our dequantized weights (bf16 compute inside bnb's layers)
    plain = LlamaForCausalLM(model.config).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, q in quantized.items():
            plain.get_submodule(name).weight.copy_(qlora.dequantize(q, torch.bfloat16).float())
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        ref, got = plain(ids).logits, theirs(ids).logits.float()
    assert (got - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("double_quant", [False, True])
def test_transformers_bitsandbytes_checkpoint_loads_here(tiny, tmp_path, double_quant):
    model, fp32_path = tiny
    bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                                    bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
    theirs = AutoModelForCausalLM.from_pretrained(fp32_path, quantization_config=bnb_config, device_map="cpu")
    theirs.save_pretrained(tmp_path / "bnb")
    config, quantized, others = load_quantized_checkpoint(tmp_path / "bnb")
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert sorted(quantized) == sorted(linear_names(model))
    assert "model.embed_tokens.weight" in others and "lm_head.weight" in others
    for name, q in quantized.items():
        module = theirs.get_submodule(name)
        assert torch.equal(qlora.dequantize(q, torch.float32),
                           bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float())  # fmt: skip
        # and quantizing the original weight ourselves gives the same bytes
        ours = qlora.quantize(model.get_submodule(name).weight, "nf4", 64, double_quant)
        assert torch.equal(ours.data, q.data), name
        if double_quant:
            assert torch.equal(ours.nested.codes, q.nested.codes), name
        else:
            assert torch.equal(ours.absmax, q.absmax), name


@pytest.mark.parametrize("dtype", ["int4", "fp4_e3m0", "int8"])
def test_other_types_round_trip(tiny, tmp_path, dtype):
    model, _ = tiny
    quantized, others = quantize_model(model, dtype, True)
    save_quantized_checkpoint(tmp_path / dtype, model.config.to_dict(), quantized, others)
    config, back, back_others = load_quantized_checkpoint(tmp_path / dtype)
    assert config["quantization_config"] == {"quant_method": "qlora", "data_type": dtype, "double_quant": True, "block_size": 64,
                                             "compute_dtype": "bfloat16"}  # fmt: skip
    for name, q in quantized.items():
        assert torch.equal(qlora.dequantize(back[name], torch.float32), qlora.dequantize(q, torch.float32))
    assert all(torch.equal(back_others[k], v) for k, v in others.items())


def test_mixed_types_are_refused_and_failed_saves_leave_nothing(tiny, tmp_path):
    model, _ = tiny
    q1, others = quantize_model(model, "nf4", False)
    name = next(iter(q1))
    q1[name] = qlora.quantize(model.get_submodule(name).weight, "fp4")
    with pytest.raises(ValueError, match="one data type"):
        save_quantized_checkpoint(tmp_path / "mixed", model.config.to_dict(), q1, others)
    assert list(tmp_path.iterdir()) == []
