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


def quantize_model_as(model, dtype, double_quant):
    names = linear_names(model)
    quantized = {n: qlora.quantize(model.get_submodule(n).weight, dtype, None, double_quant) for n in names}
    others = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in quantized}
    return quantized, others


@pytest.mark.parametrize(
    ("dtype", "double_quant", "block_size"),
    [("fp8_e4m3", False, 64), ("fp8_e5m2", True, 64), ("fp8_e4m3", "e4m4", 64), ("nvfp4", False, 16), ("mxfp4", False, 32),
     ("af4", "e4m4", 64), ("nf4", "e4m4", 64), ("fp4", "e4m4", 64)],
)  # fmt: skip
def test_new_types_round_trip_in_our_format(tiny, tmp_path, dtype, double_quant, block_size):
    model, _ = tiny
    quantized, others = quantize_model_as(model, dtype, double_quant)
    out = save_quantized_checkpoint(tmp_path / "ckpt", model.config.to_dict(), quantized, others)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    expected = {"quant_method": "qlora", "data_type": dtype, "double_quant": bool(double_quant), "block_size": block_size,
                "compute_dtype": "bfloat16"}  # fmt: skip
    if double_quant == "e4m4":
        expected["double_quant_format"] = "e4m4"
    assert qc == expected
    from safetensors.torch import load_file

    keys = load_file(out / "model.safetensors")
    assert any(k.endswith(f".weight.quant_state.qlora__{dtype}") for k in keys)
    assert not any("bitsandbytes__" in k for k in keys)
    _, back, back_others = load_quantized_checkpoint(out)
    for name, q in quantized.items():
        b = back[name]
        assert b.dtype is q.dtype and b.block_size == q.block_size and b.double_quant_format is q.double_quant_format
        assert torch.equal(b.data, q.data)
        if q.scales is not None:
            assert torch.equal(b.scales.codes, q.scales.codes) and b.scales.format is q.scales.format
            assert (q.scales.tensor_scale is None) or torch.equal(b.scales.tensor_scale, q.scales.tensor_scale)
        assert b.storage_bytes() == q.storage_bytes()
        assert torch.equal(qlora.dequantize(b, torch.float32), qlora.dequantize(q, torch.float32)), name
    assert all(torch.equal(back_others[k], v) for k, v in others.items())


def _rewrite(path, edit_config=None, edit_state=None):
    from safetensors.torch import load_file, save_file

    if edit_config:
        cfg = json.loads((path / "config.json").read_text())
        edit_config(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
    if edit_state:
        state = load_file(path / "model.safetensors")
        save_file(edit_state(state), str(path / "model.safetensors"), metadata={"format": "pt"})


def test_a_bitsandbytes_claim_is_refused_for_what_its_layout_cannot_express(tiny, tmp_path):
    from qlora.readers import BadFileError

    model, _ = tiny
    quantized, others = quantize_model_as(model, "nvfp4", False)
    out = save_quantized_checkpoint(tmp_path / "nv", model.config.to_dict(), quantized, others)
    _rewrite(out, edit_config=lambda c: c.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True,
                                                                     "bnb_4bit_quant_type": "nvfp4", "bnb_4bit_use_double_quant": False}))  # fmt: skip
    with pytest.raises(BadFileError, match="'bitsandbytes', but the weights are nvfp4, which bitsandbytes' layout cannot express"):
        load_quantized_checkpoint(out)

    # an NF4 weight with E4M4 double quantization filed under bitsandbytes' state key
    quantized, others = quantize_model_as(model, "nf4", "e4m4")
    out = save_quantized_checkpoint(tmp_path / "e4m4", model.config.to_dict(), quantized, others)
    _rewrite(out, edit_state=lambda s: {k.replace("qlora__nf4", "bitsandbytes__nf4"): v for k, v in s.items()})
    with pytest.raises(ValueError, match="bitsandbytes' layout cannot express nf4 with e4m4 double quantization"):
        load_quantized_checkpoint(out)


def test_new_types_refuse_a_wrong_scale_state(tiny, tmp_path):
    from qlora.quant.bnb_format import from_bnb_dict, to_bnb_dict

    w = torch.randn(8, 64)
    q = qlora.quantize(w, "mxfp4")
    state = to_bnb_dict(q)
    assert set(state) == {"absmax", "quant_map", "quant_state.qlora__mxfp4"}
    assert torch.equal(from_bnb_dict(q.data, state).scales.codes, q.scales.codes)
    bad = dict(state, absmax=torch.full_like(state["absmax"], 255))  # E8M0's NaN
    with pytest.raises(ValueError, match="scale_codes: 16 of 16 e8m0 codes are no finite non-negative scale"):
        from_bnb_dict(q.data, bad)
    nv = qlora.quantize(w, "nvfp4")
    state = to_bnb_dict(nv)
    meta = json.loads(bytes(state["quant_state.qlora__nvfp4"].tolist()))
    assert meta["scale_format"] == "e4m3" and meta["tensor_scale"] == nv.scales.tensor_scale.item() and meta["blocksize"] == 16
    del meta["tensor_scale"]
    broken = dict(state, **{"quant_state.qlora__nvfp4": torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)})
    with pytest.raises(ValueError, match="'tensor_scale' missing"):
        from_bnb_dict(nv.data, broken)
