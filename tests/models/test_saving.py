"""`qlora.save_pretrained` and the matching load: adapter, whole 4-bit model, or both; logits identical."""

import json

import pytest
import torch

from qlora import DataType, dequantize
from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig
from qlora.models.pretrained import from_pretrained
from qlora.models.saving import Save, save_pretrained
from qlora.models.surgery import prepare_model
from qlora.nn import QLoRALinear
from tests.models import tiny_models
from tests.models.test_pretrained import assert_same_model, randomize_adapters
from tests.peers import peer

NF4_DQ = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)
LORA = LoRAConfig(rank=4, alpha=8, dropout=0.0)
IDS = torch.randint(1, 96, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture(params=[tiny_models.llama_tied, tiny_models.qwen2])
def base(request, tmp_path):
    return tiny_models.save(request.param(), tmp_path / "base")


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def trained(base, quant=NF4_DQ, lora=LORA):
    model = from_pretrained(base, quant=quant, lora=lora)
    randomize_adapters(model)
    return model


def test_adapter_round_trip_rebuilds_the_model(base, tmp_path):
    quant = QuantConfig(DataType.FP4, False, 128, ComputeDtype.FP32)  # not the default: the folder must say it
    model = trained(base, quant)
    out = save_pretrained(model, tmp_path / "adapter", what=Save.ADAPTER, base_model=str(base))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "qlora_base.json", "qlora_quant.json"]
    assert json.loads((out / "qlora_quant.json").read_text()) == {"block_size": 128, "compute_dtype": "fp32", "double_quant": False, "dtype": "fp4"}
    loaded = from_pretrained(base, adapter=out)
    assert_same_model(loaded, model)
    assert torch.equal(logits(loaded), logits(model))
    with pytest.raises(ValueError, match="either lora .* or adapter"):
        from_pretrained(base, adapter=out, lora=LORA)
    with pytest.raises(FileNotFoundError, match="has no config.json .a PEFT adapter folder: pass its base model as path"):
        from_pretrained(out)


def test_quantized_model_round_trip(base, tmp_path):
    model = from_pretrained(base, quant=NF4_DQ)  # no adapters: inference of the 4-bit model
    out = save_pretrained(model, tmp_path / "q4")  # default: the quantized model (no adapter to add)
    assert not (out / "adapter_config.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4" and config["quantization_config"]["bnb_4bit_use_double_quant"]
    loaded = from_pretrained(out)
    assert_same_model(loaded, model)
    assert torch.equal(logits(loaded), logits(model))
    if loaded.config.tie_word_embeddings:
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


@pytest.mark.parametrize("quant", [QuantConfig(DataType.NVFP4, False, compute_dtype=ComputeDtype.FP32),
                                   QuantConfig(DataType.MXFP4, False, compute_dtype=ComputeDtype.FP32),
                                   QuantConfig(DataType.FP8_E4M3, True, compute_dtype=ComputeDtype.FP32),
                                   QuantConfig(DataType.AF4, True, compute_dtype=ComputeDtype.FP32, double_quant_format="E4M4")],
                         ids=lambda q: q.label)  # fmt: skip
def test_new_types_save_and_load_with_their_adapters(quant, tmp_path):
    base = tiny_models.save(tiny_models.llama_tied(), tmp_path / "base")
    model = trained(base, quant)
    out = save_pretrained(model, tmp_path / "both")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "qlora"
    loaded = from_pretrained(out)
    assert_same_model(loaded, model)
    assert torch.equal(logits(loaded), logits(model))
    stored = {(m.weight.dtype, m.weight.block_size, m.weight.double_quant_format) for m in loaded.modules() if isinstance(m, QLoRALinear)}
    assert stored == {(quant.dtype, quant.block_size, quant.double_quant_mode)}


def test_both_in_one_folder_and_model_save_pretrained(base, tmp_path):
    model = trained(base)
    model.save_pretrained(tmp_path / "both")  # transformers' habit; default: 4-bit model + adapter
    names = {p.name for p in (tmp_path / "both").iterdir()}
    assert {"config.json", "model.safetensors", "qlora_quant.json", "adapter"} <= names and "adapter_config.json" not in names
    assert {p.name for p in (tmp_path / "both" / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "qlora_base.json",
                                                                          "qlora_quant.json"}  # fmt: skip
    loaded = from_pretrained(tmp_path / "both")
    assert_same_model(loaded, model)
    assert torch.equal(logits(loaded), logits(model))
    with pytest.raises(TypeError, match=r"not \['push_to_hub'\] \(see qlora.save_pretrained\)"):
        model.save_pretrained(tmp_path / "x", push_to_hub=True)


def test_prepare_model_gives_a_model_that_saves(tmp_path):
    model = tiny_models.llama()
    prepare_model(model, NF4_DQ, LORA)
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "adapter", what=Save.ADAPTER)
    loaded = from_pretrained(tiny_models.save(tiny_models.llama(), tmp_path / "base"), adapter=tmp_path / "adapter")
    assert torch.equal(logits(loaded.eval()), logits(model.eval()))


def test_the_adapter_loads_in_peft_and_the_model_in_transformers(tmp_path):
    peft = peer("peft")
    peer("bitsandbytes")
    from transformers import AutoModelForCausalLM

    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    model = trained(base)
    save_pretrained(model, tmp_path / "adapter", what=Save.ADAPTER)
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base).eval(), tmp_path / "adapter").eval()
    with torch.no_grad():  # PEFT's base holds our dequantized weights: what differs then is only the adapter
        for name, m in model.named_modules():
            if isinstance(m, QLoRALinear):
                theirs.base_model.model.get_submodule(name).base_layer.weight.copy_(dequantize(m.weight, torch.float32))
    torch.testing.assert_close(logits(theirs), logits(model), rtol=1e-5, atol=1e-5)

    q4 = from_pretrained(base, quant=NF4_DQ)
    save_pretrained(q4, tmp_path / "q4")
    bnb_model = AutoModelForCausalLM.from_pretrained(tmp_path / "q4", device_map="cpu").eval()
    assert type(bnb_model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    ours = logits(q4)
    assert (logits(bnb_model).float() - ours).norm() / ours.norm() < 2e-2  # bitsandbytes computes in bf16


def test_refusals(tmp_path):
    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    plain = from_pretrained(base, quant=NF4_DQ)
    with pytest.raises(ValueError, match="no adapters"):
        save_pretrained(plain, tmp_path / "a", what=Save.ADAPTER)
    with pytest.raises(ValueError, match="not a prepared model"):
        save_pretrained(tiny_models.llama(), tmp_path / "b")
    with pytest.raises(ValueError, match="BF16 base is not a quantized model"):
        save_pretrained(trained(base, QuantConfig(DataType.BF16, False)), tmp_path / "c", what=Save.QUANTIZED_MODEL)
    assert not any(p.name != "base" for p in tmp_path.iterdir())  # nothing half-written


def test_merged_copy_saves_as_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from qlora.models.surgery import merge_and_unload

    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    model = trained(base)
    merged = merge_and_unload(model, torch.float32)
    merged.save_pretrained(tmp_path / "merged")  # transformers' own save: the hook is not copied
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any(isinstance(m, QLoRALinear) for m in reloaded.modules())
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=1e-4, atol=1e-4)


def test_the_hook_survives_pickling_and_deep_copies(tmp_path):
    import copy
    import pickle

    model = trained(tiny_models.save(tiny_models.llama(), tmp_path / "base"))
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.save_pretrained(tmp_path / "clone", what=Save.ADAPTER)  # saves the clone, not the original
        with torch.no_grad():
            for m in clone.modules():
                if isinstance(m, QLoRALinear):
                    m.lora_b.zero_()
        clone.save_pretrained(tmp_path / "zeroed", what=Save.ADAPTER)
        from qlora.models.peft_format import load_peft_adapter

        assert all(float(b.abs().sum()) == 0 for _, b in load_peft_adapter(tmp_path / "zeroed").lora.values())
        assert any(float(b.abs().sum()) > 0 for _, b in load_peft_adapter(tmp_path / "clone").lora.values())


def test_classifier_adapter_round_trip(tmp_path):
    base = tiny_models.save(tiny_models.bert_base(), tmp_path / "base")  # no head, no labels: the adapter has them
    model = from_pretrained(base, quant=NF4_DQ, lora=LORA, kind=ModelKind.SEQ_CLS, num_labels=3)
    randomize_adapters(model)
    with torch.no_grad():
        model.classifier.weight.normal_()
    save_pretrained(model, tmp_path / "adapter", what=Save.ADAPTER)
    loaded = from_pretrained(base, kind=ModelKind.SEQ_CLS, adapter=tmp_path / "adapter")
    assert_same_model(loaded, model.eval())
    assert torch.equal(logits(loaded), logits(model))


def test_stored_bits_are_counted_from_the_file(tmp_path):
    """Codes + block absmax + second-level absmax from model.safetensors, against the shapes' own count."""
    import math

    from qlora.config import DataType, ModelKind, QuantConfig
    from qlora.models.loading import quantize_checkpoint
    from qlora.models.storage import stored_bits
    from tests.tiny_text import save_tiny_model

    base = save_tiny_model(tmp_path / "base")
    shapes = [m.weight.shape for n, m in __import__("transformers").AutoModelForCausalLM.from_pretrained(base).named_modules()
              if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]  # fmt: skip
    numel = [a * b for a, b in shapes]
    plain = stored_bits(quantize_checkpoint(base, ModelKind.CAUSAL_LM, QuantConfig(DataType.NF4, False), tmp_path / "nf4"))
    assert plain.params == sum(numel) and plain.core_bytes == sum(n // 2 + 4 * math.ceil(n / 64) for n in numel)
    assert plain.core_bits_per_param == 4.5 and plain.total_bits_per_param > 4.5
    dq = stored_bits(quantize_checkpoint(base, ModelKind.CAUSAL_LM, QuantConfig(DataType.NF4, True), tmp_path / "nf4_dq"))
    assert dq.core_bytes == sum(n // 2 + math.ceil(n / 64) + 4 * math.ceil(math.ceil(n / 64) / 256) for n in numel)
    assert 4.125 < dq.core_bits_per_param < 4.5


def test_a_reloaded_quantized_classifier_trains_its_head(tmp_path):
    """Reloading a 4-bit classifier folder used to freeze its head: only the adapters trained."""
    from qlora.models.loading import load_for_training

    base = tiny_models.save(tiny_models.bert_base(), tmp_path / "base")
    streamed = from_pretrained(base, quant=NF4_DQ, lora=LORA, kind=ModelKind.SEQ_CLS, num_labels=3)
    expected = {n for n, p in streamed.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= expected
    save_pretrained(from_pretrained(base, quant=NF4_DQ, kind=ModelKind.SEQ_CLS, num_labels=3), tmp_path / "q4")
    for reloaded in (from_pretrained(tmp_path / "q4", lora=LORA, kind=ModelKind.SEQ_CLS),
                     load_for_training(tmp_path / "q4", ModelKind.SEQ_CLS, None, LORA)):  # fmt: skip
        assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == expected


def test_a_quantized_checkpoint_stores_its_other_tensors_in_the_compute_dtype(tmp_path):
    """Embeddings, norms and head in bf16 unless asked (they were fp32: 108 of SmolLM2's 164 MiB)."""
    from safetensors import safe_open

    base = tiny_models.save(tiny_models.qwen2(), tmp_path / "base")  # untied head, biases
    model = from_pretrained(base)  # the default QuantConfig: NF4+DQ, compute dtype AUTO
    dtypes = {}
    for name, asked in (("q4", None), ("q4_fp32", torch.float32)):
        out = save_pretrained(model, tmp_path / name, dtype=asked)
        with safe_open(str(out / "model.safetensors"), "pt") as fh:
            packed = {k for k in fh.keys() if ".weight." in k or (k.endswith(".weight") and isinstance(model.get_submodule(k[:-7]), QLoRALinear))}
            dtypes[name] = {k: fh.get_slice(k).get_dtype() for k in fh.keys() if k not in packed}  # the tensors not quantized
        assert json.loads((out / "config.json").read_text())["dtype"] == ("float32" if asked else "bfloat16")
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.bias"} <= set(dtypes["q4"])  # fmt: skip
    assert set(dtypes["q4"].values()) == {"BF16"} and set(dtypes["q4_fp32"].values()) == {"F32"}
    def data_bytes(name):  # the file less its 8-byte length and JSON header
        raw = (tmp_path / name / "model.safetensors").read_bytes()
        return len(raw) - 8 - int.from_bytes(raw[:8], "little")

    other_fp32 = sum(model.state_dict()[k].numel() * 4 for k in dtypes["q4"])
    assert data_bytes("q4_fp32") - data_bytes("q4") == other_fp32 // 2  # half their bytes

    loaded, exact = from_pretrained(tmp_path / "q4"), from_pretrained(tmp_path / "q4_fp32")
    assert torch.equal(logits(exact), logits(model))
    ours = logits(model)
    assert 0 < float((logits(loaded) - ours).norm() / ours.norm()) < 1e-2  # bf16-rounded embeddings and norms
    for name, m in model.named_modules():  # the 4-bit layers are the same bytes either way
        if isinstance(m, QLoRALinear):
            assert torch.equal(loaded.get_submodule(name).qweight, m.qweight) and torch.equal(loaded.get_submodule(name).nested_codes, m.nested_codes)


def test_a_bf16_checkpoint_loads_in_transformers_with_bitsandbytes(tmp_path):
    peer("bitsandbytes")
    from transformers import AutoModelForCausalLM

    base = tiny_models.save(tiny_models.llama(), tmp_path / "base")
    q4 = from_pretrained(base)
    save_pretrained(q4, tmp_path / "q4")
    bnb_model = AutoModelForCausalLM.from_pretrained(tmp_path / "q4", device_map="cpu").eval()
    assert type(bnb_model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert bnb_model.model.embed_tokens.weight.dtype == torch.bfloat16
    ours = logits(q4)
    assert (logits(bnb_model).float() - ours).norm() / ours.norm() < 3e-2  # bitsandbytes and the model compute in bf16
