"""`qlora.from_pretrained`: quantize while loading equals load-then-prepare_model, bit for bit."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from qlora import DataType
from qlora.config import Checkpointing, ComputeDtype, LoRAConfig, ModelKind, QuantConfig, Targets
from qlora.models.loading import load_base, load_quantized_model, quantize_checkpoint
from qlora.models.pretrained import from_pretrained
from qlora.models.surgery import prepare_model
from qlora.nn import QLoRALinear
from tests.models import tiny_models

NF4_DQ = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)
LORA = LoRAConfig(rank=4, alpha=8, dropout=0.0)


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QLoRALinear) and m.lora_a is not None:
                m.lora_a.copy_(torch.randn(m.lora_a.shape, generator=g) * 0.1)
                m.lora_b.copy_(torch.randn(m.lora_b.shape, generator=g) * 0.1)


def assert_same_model(a, b):
    """Same modules, the same tensors bit for bit (dtype included), the same trainable set."""
    assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    assert [n for n, p in a.named_parameters() if p.requires_grad] == [n for n, p in b.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("build", [tiny_models.llama, tiny_models.llama_tied, tiny_models.qwen2, tiny_models.gpt2])
@pytest.mark.parametrize("quant", [NF4_DQ, QuantConfig(DataType.FP4, False, 128, ComputeDtype.FP32)], ids=["nf4_dq", "fp4_b128"])
def test_streamed_equals_load_then_prepare(tmp_path, build, quant):
    path = tiny_models.save(build(), tmp_path / "model")
    reference = load_base(path, ModelKind.CAUSAL_LM)
    prepare_model(reference, quant, LORA)
    streamed = from_pretrained(path, quant=quant, lora=LORA)
    assert not streamed.training
    randomize_adapters(reference)
    randomize_adapters(streamed)
    assert_same_model(streamed, reference.eval())
    if streamed.config.tie_word_embeddings:
        assert streamed.get_output_embeddings().weight is streamed.get_input_embeddings().weight
    ids = torch.randint(1, 96, (2, 11))
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, reference(ids).logits)


def test_classifier_from_its_own_folder_and_from_a_bare_base(tmp_path):
    ids = torch.randint(1, 96, (2, 9))
    for build in (tiny_models.bert_classifier, tiny_models.bert_base):  # the bare base lacks the "bert." prefix and a head
        path = tiny_models.save(build(), tmp_path / build.__name__)
        reference = load_base(path, ModelKind.SEQ_CLS, num_labels=3)
        prepare_model(reference, NF4_DQ, LORA)
        streamed = from_pretrained(path, quant=NF4_DQ, lora=LORA, kind=ModelKind.SEQ_CLS, num_labels=3)
        assert streamed.classifier.weight.requires_grad and streamed.classifier.weight.shape == (3, 64)
        if build is tiny_models.bert_base:  # a new head: random in both, so copy it across
            assert streamed.classifier.weight.std() > 0
            streamed.classifier.load_state_dict(reference.classifier.state_dict())
        randomize_adapters(reference)
        randomize_adapters(streamed)
        assert_same_model(streamed, reference.eval())
        with torch.no_grad():
            assert torch.equal(streamed(ids).logits, reference(ids).logits)


def test_quantized_folder_is_read_as_it_is(tmp_path):
    path = tiny_models.save(tiny_models.qwen2(), tmp_path / "model")
    qdir = quantize_checkpoint(path, ModelKind.CAUSAL_LM, NF4_DQ, tmp_path / "nf4_dq")
    assert json.loads((qdir / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"
    loaded = from_pretrained(qdir, lora=LORA)
    reference = load_quantized_model(qdir, lora=LORA, compute_dtype=ComputeDtype.AUTO).eval()
    randomize_adapters(loaded)
    randomize_adapters(reference)
    assert_same_model(loaded, reference)
    # and it is the model from_pretrained quantizes from the float folder
    streamed = from_pretrained(path, quant=QuantConfig(DataType.NF4, True), lora=LORA)
    randomize_adapters(streamed)
    assert_same_model(loaded, streamed)
    with pytest.raises(ValueError, match="holds nf4 double_quant=True block_size=64; quant asks for fp4"):
        from_pretrained(qdir, quant=QuantConfig(DataType.FP4, True))


def test_checkpointing_strings_are_parsed_or_refused_as_in_quant_config(tmp_path):
    from qlora.checks import ConfigError

    path = tiny_models.save(tiny_models.llama(), tmp_path / "model")
    flag = "is_activation_checkpointing" if hasattr(LlamaForCausalLM, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert not getattr(from_pretrained(path, quant=NF4_DQ, checkpointing="off"), flag)  # before: any string turned it on
    assert getattr(from_pretrained(path, quant=NF4_DQ, lora=LORA, checkpointing="NON_REENTRANT"), flag)
    for bad in ("sometimes", "no", True, 1):
        with pytest.raises(ConfigError, match=rf"^checkpointing={bad!r}: expected one of OFF, REENTRANT, NON_REENTRANT "
                                              r"\(Checkpointing, case-insensitive\)$"):  # fmt: skip
            from_pretrained(path, quant=NF4_DQ, checkpointing=bad)


def test_checkpointing_and_bad_arguments(tmp_path):
    path = tiny_models.save(tiny_models.llama(), tmp_path / "model")
    model = from_pretrained(path, quant=NF4_DQ, lora=LORA, checkpointing=Checkpointing.NON_REENTRANT)
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(model, flag)
    with pytest.raises(ValueError, match="num_labels=3 is for kind=ModelKind.SEQ_CLS"):
        from_pretrained(path, num_labels=3)
    bare = tiny_models.save(tiny_models.bert_base(), tmp_path / "bert")  # config.json says 3 labels (bert_config)
    assert from_pretrained(bare, kind=ModelKind.SEQ_CLS).classifier.out_features == 3
    with pytest.raises(TypeError, match="quant must be a QuantConfig"):
        from_pretrained(path, quant="nf4")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        from_pretrained(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match=r"lora.target_names \['nothing'\] match no linear layer"):
        from_pretrained(path, lora=LoRAConfig(rank=2, targets=Targets.NAMES, target_names=("nothing",)))


@pytest.mark.parametrize("damage", ["drop_linear", "drop_norm", "extra", "shape"])
def test_a_folder_that_does_not_match_its_config_is_named(tmp_path, damage):
    path = tiny_models.save(tiny_models.llama(), tmp_path / "model")
    state = load_file(path / "model.safetensors")
    if damage == "drop_linear":
        del state["model.layers.1.mlp.up_proj.weight"]
        match = r"no tensor \['model.layers.1.mlp.up_proj.weight'\]"
    elif damage == "drop_norm":
        del state["model.norm.weight"]
        match = r"lacks \['model.norm.weight'\]"
    elif damage == "extra":
        state["model.surprise"] = torch.zeros(3)
        match = r"does not have: \['model.surprise'\]"
    else:
        state["model.embed_tokens.weight"] = torch.zeros(97, 64)
        match = r"model.embed_tokens.weight has shape \(97, 64\), the config says \(96, 64\)"
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=match):
        from_pretrained(path, quant=NF4_DQ)


_PEAK = textwrap.dedent("""
    import resource, sys, torch
    from qlora.config import ComputeDtype, ModelKind, QuantConfig
    from qlora.models.loading import load_base
    from qlora.models.pretrained import from_pretrained
    from qlora.models.surgery import prepare_model
    from qlora.quant.api import quantize
    quant = QuantConfig(compute_dtype=ComputeDtype.FP32)
    quantize(torch.randn(128, 128), "nf4", 64, True)  # the CPU quantizer's compile (~0.3 GiB) before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.argv[2] == "streamed":
        model = from_pretrained(sys.argv[1], quant=quant)
    else:
        model = load_base(sys.argv[1], ModelKind.CAUSAL_LM)
        prepare_model(model, quant)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
""")


@pytest.mark.slow
def test_streaming_keeps_peak_memory_near_the_quantized_size(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8)  # fmt: skip
    with torch.device("meta"):
        n_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "model")
    del model
    fp32_bytes = 4 * n_params  # 134M parameters: 537 MB
    peaks = {}
    for how in ("streamed", "full"):
        # through a shell: Linux carries a parent's RSS high-water mark into a child's ru_maxrss across
        # fork/exec (a child of this big pytest process would start at its peak); a grandchild starts clean
        argv = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", _PEAK, str(tmp_path / "model"), how]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        peaks[how] = int(out.stdout.split()[-1])
    print(f"peak RSS above imports: streamed {peaks['streamed'] / 2**20:.0f} MiB, load-then-prepare {peaks['full'] / 2**20:.0f} MiB, "
          f"fp32 weights {fp32_bytes / 2**20:.0f} MiB")  # fmt: skip
    # measured: streamed 177 MiB (the 4-bit model is 69 MB; + a 64 MiB window of freed temporaries before
    # `_release_free_heap` + one layer), load-then-prepare 921 MiB (the fp32 model + temporaries)
    assert peaks["full"] < 3 * fp32_bytes  # a clean measurement (not the pytest parent's high-water mark)
    assert peaks["full"] > 0.8 * fp32_bytes  # the float model is in memory at once
    assert peaks["streamed"] < 0.5 * fp32_bytes and peaks["streamed"] < peaks["full"] / 3
