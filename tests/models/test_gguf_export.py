"""GGUF export: what transformers reads back equals the merged model (bf16/f16 bit for bit, q8_0/q4_0
within the format's rounding), names and metadata as llama.cpp's converter writes them, the ggml block
formats decoded by hand, unknown architectures refused before loading, outputs never clobbered.

"The merged model" (`qlora.models.gguf_export` module doc): for BF16/F16 `merge_and_unload(model, dtype)
.to(dtype)` — for BF16 exactly the folder `export_merged` writes — loaded by transformers in that dtype;
for Q8_0/Q4_0 the fp32 merge. Both sides are loaded by `from_pretrained` in the same dtype, so both keep
transformers' own fp32 rotary tables: the comparison is of weights and logits, not of construction paths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.models.export import export_merged
from qlora.models.gguf_export import EXPORTER_KEY, GGUFType, export_gguf, permute_rotary
from qlora.models.saving import Save, save_pretrained
from qlora.models.surgery import merge_and_unload, prepare_model
from tests.models.test_pretrained import randomize_adapters
from tests.peers import peer
from tests.tiny_text import tiny_llama, tiny_tokenizer

gguf = peer("gguf")
TEXTS = ["Answer: A the cat sat on the mat", "What is the colour of the sky? blue", "<|im_start|>user\nSay hi.<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def prepared(tokenizer):
    """A tiny Llama on an NF4+DQ base with random (non-zero) adapters: the trained model."""
    model = tiny_llama(len(tokenizer))
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    prepare_model(model, QuantConfig(compute_dtype=ComputeDtype.FP32), LoRAConfig(rank=4, dropout=0.0))
    randomize_adapters(model)
    return model.eval()


def ids_of(tokenizer):
    return torch.tensor([tokenizer(TEXTS[0])["input_ids"]])


def load_gguf(path, dtype):
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()


def assert_same_weights_and_logits(reference, loaded, ids):
    ref, got = reference.state_dict(), loaded.state_dict()
    assert sorted(ref) == sorted(got)
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("gtype, dtype", [(GGUFType.BF16, torch.bfloat16), (GGUFType.F16, torch.float16)])
def test_16_bit_round_trip_is_exact(tmp_path, prepared, tokenizer, gtype, dtype):
    if gtype is GGUFType.BF16:
        export_merged(prepared, tmp_path / "merged")  # the bf16 folder `qlora merge` writes
    else:
        merge_and_unload(prepared, dtype).to(dtype).save_pretrained(tmp_path / "merged")
    result = export_gguf(prepared, tmp_path / "m.gguf", gtype, tokenizer=tokenizer)
    assert result.tensor_types == {gtype.name: 16, "F32": 5}  # 2-D weights in the type; 5 norms in F32
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=dtype).eval()
    assert_same_weights_and_logits(merged, load_gguf(tmp_path / "m.gguf", dtype), ids_of(tokenizer))


def _block_bound(weight: torch.Tensor, levels: int) -> torch.Tensor:
    """Per element, the rounding error of a 32-value block with an fp16 scale d, plus up to `levels` steps
    times fp16's relative error 2^-11 of d: Q8_0 (d = amax/127, symmetric) half a step, 0.5·d; Q4_0
    (d = signed max/-8, codes -8..7) a whole step, d, where a value opposite in sign to the max is
    clipped from +8 to +7."""
    blocks = weight.reshape(-1, 32)
    d = blocks.abs().amax(1, keepdim=True) / levels
    steps = 0.5 if levels == 127 else 1.0
    return ((steps + levels * 2**-11 + 1e-6) * d).expand_as(blocks).reshape(weight.shape)


@pytest.mark.parametrize("gtype, levels, max_relative", [(GGUFType.Q8_0, 127, 0.02), (GGUFType.Q4_0, 8, 0.15)])
def test_quantized_round_trip_within_the_format_rounding(tmp_path, prepared, tokenizer, gtype, levels, max_relative):
    merged = merge_and_unload(prepared, torch.float32)
    result = export_gguf(prepared, tmp_path / "m.gguf", gtype, tokenizer=tokenizer)
    expected = {GGUFType.Q8_0: {"Q8_0": 16, "F32": 5}, GGUFType.Q4_0: {"Q4_0": 14, "Q8_0": 2, "F32": 5}}[gtype]
    assert result.tensor_types == expected  # Q4_0 keeps token_embd and output in Q8_0
    loaded = load_gguf(tmp_path / "m.gguf", torch.float32)
    ref, got = merged.state_dict(), loaded.state_dict()
    for key, w in ref.items():
        if w.dim() == 1:  # norms: F32, exact
            assert torch.equal(got[key], w), key
            continue
        bound = _block_bound(w, 127 if key in ("model.embed_tokens.weight", "lm_head.weight") else levels)
        assert ((got[key] - w).abs() <= bound).all(), key
        assert not torch.equal(got[key], w), key  # really quantized
    ids = ids_of(tokenizer)
    with torch.no_grad():
        a, b = merged(ids).logits, loaded(ids).logits
    # measured on this model: q8_0 0.8%, q4_0 6.8% relative logit error
    assert float((a - b).norm() / a.norm()) < max_relative


def test_q8_0_and_q4_0_bytes_follow_the_ggml_block_format(tmp_path, prepared, tokenizer):
    """Decodes blocks by hand from the format's definition (ggml-common.h: block_q8_0 = fp16 d + 32 int8,
    x = d·q; block_q4_0 = fp16 d + 16 bytes, element j in the low nibble and j+16 in the high nibble of
    byte j, x = d·(nibble - 8)) and checks the scales are the reference quantizers' (d = amax/127; d =
    signed max / -8)."""
    merged = merge_and_unload(prepared, torch.float32)
    w = merged.state_dict()["model.layers.0.mlp.down_proj.weight"]  # (32, 64): not permuted, untied
    for gtype in (GGUFType.Q8_0, GGUFType.Q4_0):
        export_gguf(prepared, tmp_path / f"{gtype.value}.gguf", gtype, tokenizer=tokenizer)
        tensor = next(t for t in gguf.GGUFReader(tmp_path / f"{gtype.value}.gguf").tensors if t.name == "blk.0.ffn_down.weight")
        raw = np.asarray(tensor.data, dtype=np.uint8).reshape(-1)
        blocks_w = w.reshape(-1, 32).double()
        if gtype is GGUFType.Q8_0:
            blocks = raw.reshape(-1, 34)
            d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
            q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
            expected_d = (blocks_w.abs().amax(1) / 127).to(torch.float16).double().numpy()
        else:
            blocks = raw.reshape(-1, 18)
            d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
            nibbles = blocks[:, 2:]
            q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float64) - 8
            signed_max = blocks_w.gather(1, blocks_w.abs().argmax(1, keepdim=True)).squeeze(1)
            expected_d = (signed_max / -8).to(torch.float16).double().numpy()
        assert np.array_equal(d.reshape(-1), expected_d)
        decoded = torch.from_numpy(d * q).reshape(w.shape)
        assert ((decoded - w.double()).abs() <= _block_bound(w, 127 if gtype is GGUFType.Q8_0 else 8).double()).all()


def test_rotary_permutation_is_llama_cpps():
    """transformers rotates the pairs (i, i + d/2) of each head; llama.cpp rotates adjacent pairs (2i, 2i+1):
    the permuted rows of a head are a0 b0 a1 b1 for halves a, b."""
    head = torch.tensor([10.0, 11.0, 20.0, 21.0])  # halves a = (10, 11), b = (20, 21)
    rows = torch.cat([head, head + 100]).reshape(8, 1)  # 2 heads of dim 4
    assert permute_rotary(rows, 2).reshape(-1).tolist() == [10, 20, 11, 21, 110, 120, 111, 121]


def test_names_and_metadata_are_the_converters(tmp_path, prepared, tokenizer):
    export_gguf(prepared, tmp_path / "m.gguf", GGUFType.BF16, tokenizer=tokenizer)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert {k: meta[k] for k in meta if k.startswith("llama.")} == {
        "llama.block_count": 2, "llama.context_length": 512, "llama.embedding_length": 32, "llama.feed_forward_length": 64,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "llama.attention.key_length": 8,
        "llama.attention.value_length": 8, "llama.vocab_size": 400, "llama.rope.dimension_count": 8,
    }  # fmt: skip
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    vocab = tokenizer.get_vocab()
    assert meta["tokenizer.ggml.tokens"] == [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert meta["tokenizer.ggml.token_type"] == [3, 3, 3] + [1] * 397  # the three special tokens are CONTROL
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (1, 2, 0)
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_space_prefix"] is False
    assert meta[EXPORTER_KEY] == "qlora-pipeline 0.1.0 (bf16)"
    blocks = {f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}  # fmt: skip
    assert {t.name for t in reader.tensors} == blocks | {"token_embd.weight", "output_norm.weight", "output.weight"}
    merged = merge_and_unload(prepared, torch.bfloat16).to(torch.bfloat16).state_dict()
    stored_q = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    stored = torch.from_numpy(gguf.quants.dequantize(stored_q.data, stored_q.tensor_type)).reshape(32, 32)
    assert torch.equal(stored, permute_rotary(merged["model.layers.1.self_attn.q_proj.weight"].float(), 4))


def test_tokenizer_round_trip(tmp_path, prepared, tokenizer):
    export_gguf(prepared, tmp_path / "m.gguf", GGUFType.Q8_0, tokenizer=tokenizer)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert [loaded(t)["input_ids"] for t in TEXTS] == [tokenizer(t)["input_ids"] for t in TEXTS]
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    messages = [{"role": "user", "content": "Say hi."}]
    assert loaded.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(messages, tokenize=False)


def tiny_qwen2(vocab_size):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        tie_word_embeddings=False, initializer_range=0.2)).eval()  # fmt: skip


def tiny_gemma3(vocab_size):
    """head_dim 256 = query_pre_attn_scalar: llama.cpp scales queries by head_dim, and transformers' GGUF
    loader has no key for the scalar (it takes Gemma 3's default, 256)."""
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                                               sliding_window=64, max_position_embeddings=256, initializer_range=0.2)).eval()  # fmt: skip
    with torch.no_grad():  # Gemma's norms start at 0 (scale 1 + w): make the stored 1 + w differ from 1
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(std=0.3)
    return model


@pytest.mark.parametrize("build, arch, expected_tensors", [
    (tiny_qwen2, "qwen2", {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "output.weight"}),
    (tiny_gemma3, "gemma3", {"blk.0.attn_q_norm.weight", "blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"}),
])  # fmt: skip
def test_qwen2_and_gemma3_bf16_round_trip_is_exact(tmp_path, tokenizer, build, arch, expected_tensors):
    model = build(len(tokenizer))
    prepare_model(model, QuantConfig(compute_dtype=ComputeDtype.FP32), LoRAConfig(rank=4, dropout=0.0))
    randomize_adapters(model)
    export_merged(model, tmp_path / "merged")
    export_gguf(model, tmp_path / "m.gguf", GGUFType.BF16, tokenizer=tokenizer)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.architecture"].contents() == arch
    assert expected_tensors <= {t.name for t in reader.tensors}
    if arch == "gemma3":  # stored as 1 + w (llama.cpp's norm multiplies by the stored weight)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.bfloat16)
        stored = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
        assert torch.equal(torch.from_numpy(np.array(stored.data)), merged.model.layers[0].input_layernorm.weight.float() + 1)
        assert reader.fields["gemma3.attention.sliding_window"].contents() == 64
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.bfloat16).eval()
    assert_same_weights_and_logits(merged, load_gguf(tmp_path / "m.gguf", torch.bfloat16), ids_of(tokenizer))


def test_adapter_and_checkpoint_folders_export_the_same_tensors_as_the_model(tmp_path, prepared, tokenizer):
    """A PEFT adapter folder (merged into the base it names) and a 4-bit checkpoint with its adapter/ give
    the bytes the model object gives."""
    base = tmp_path / "base"
    tiny_llama(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    save_pretrained(prepared, tmp_path / "adapter", what=Save.ADAPTER, base_model=str(base))
    save_pretrained(prepared, tmp_path / "checkpoint", tokenizer=tokenizer)  # NF4+DQ model + adapter/
    from_model = export_gguf(prepared, tmp_path / "m.gguf", GGUFType.Q8_0, tokenizer=tokenizer)
    expected = gguf.GGUFReader(from_model.path)
    for source in ("adapter", "checkpoint"):
        result = export_gguf(tmp_path / source, tmp_path / f"{source}.gguf", GGUFType.Q8_0)
        assert result.tensor_types == from_model.tensor_types
        got = gguf.GGUFReader(result.path)
        assert [t.name for t in got.tensors] == [t.name for t in expected.tensors]
        assert all(np.array_equal(x.data, y.data) for x, y in zip(got.tensors, expected.tensors)), source


def test_unknown_architecture_is_refused_before_loading(tmp_path, tokenizer):
    folder = tmp_path / "mistral"
    folder.mkdir()  # no weights at all: the refusal must come from config.json alone
    (folder / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ValueError) as error:
        export_gguf(folder, tmp_path / "m.gguf")
    assert str(error.value) == ("GGUF export knows model_type llama, qwen2 and gemma3_text; this model is 'mistral' "
                                "(MistralForCausalLM)")  # fmt: skip
    assert not (tmp_path / "m.gguf").exists()
    from tests.models.tiny_models import gpt2

    with pytest.raises(ValueError, match="this model is 'gpt2'"):
        export_gguf(gpt2(), tmp_path / "m.gguf", tokenizer=tokenizer)
    from transformers import LlamaConfig, LlamaForSequenceClassification

    classifier = LlamaForSequenceClassification(LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                            num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    with pytest.raises(ValueError, match="^GGUF export writes causal LMs; this model is a LlamaForSequenceClassification$"):
        export_gguf(classifier, tmp_path / "m.gguf", tokenizer=tokenizer)


def test_output_safety(tmp_path, prepared, tokenizer):
    target = tmp_path / "model.gguf"
    target.write_text("someone's notes")
    with pytest.raises(FileExistsError, match="not a GGUF file written by qlora export"):
        export_gguf(prepared, target, GGUFType.Q4_0, tokenizer=tokenizer)
    assert target.read_text() == "someone's notes"
    export_gguf(prepared, target, GGUFType.Q4_0, tokenizer=tokenizer, overwrite=True)
    first = target.read_bytes()
    export_gguf(prepared, target, GGUFType.Q8_0, tokenizer=tokenizer)  # an earlier export: replaced without overwrite
    assert target.read_bytes() != first and gguf.GGUFReader(target).fields[EXPORTER_KEY].contents().endswith("(q8_0)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temporary leftovers
    with pytest.raises(TypeError, match="type must be a GGUFType"):
        export_gguf(prepared, tmp_path / "x.gguf", "q8_0", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs tokenizer="):
        export_gguf(prepared, tmp_path / "x.gguf")


@pytest.mark.slow
def test_smollm2_export_matches_the_merged_model_and_the_source_files_keys(tmp_path, smollm2_dir):
    """The embedded SmolLM2 (a plain folder: the merged form) exported in bf16 and q8_0: bf16 logits bit for
    bit; q8_0 within 4% relative logit error (measured 2.6%, next-token argmax equal at 18 of 19 positions); every llama.* and tokenizer key of
    the package's original GGUF file present with the same value, except `tokenizer.ggml.pre` (see
    `qlora.models.gguf_vocab`) and the file type."""
    from qlora.data.offline import smollm2_gguf_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = torch.tensor([tokenizer("The capital of France is Paris. 12 + 30 = 42.")["input_ids"]])
    export_gguf(smollm2_dir, tmp_path / "bf16.gguf", GGUFType.BF16)
    merged = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, load_gguf(tmp_path / "bf16.gguf", torch.bfloat16)(ids).logits)
    del merged

    source = {k: f.contents() for k, f in gguf.GGUFReader(smollm2_gguf_path()).fields.items()}
    ours = {k: f.contents() for k, f in gguf.GGUFReader(tmp_path / "bf16.gguf").fields.items()}
    shared = [k for k in source if k.startswith(("llama.", "tokenizer.")) and k != "tokenizer.ggml.pre"]
    assert {k: ours.get(k) for k in shared} == {k: source[k] for k in shared}
    assert ours["tokenizer.ggml.pre"] == "gpt-2" and source["tokenizer.ggml.pre"] == "smollm"

    export_gguf(smollm2_dir, tmp_path / "q8_0.gguf", GGUFType.Q8_0)
    merged = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = merged(ids).logits, load_gguf(tmp_path / "q8_0.gguf", torch.float32)(ids).logits
    relative = float((a - b).norm() / a.norm())
    assert relative < 0.04, relative  # measured 0.026 (2026-12-06)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.85  # measured 18/19


def test_the_callers_model_is_left_as_it_was(tmp_path, prepared, tokenizer):
    plain = tiny_llama(len(tokenizer))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    export_gguf(plain, tmp_path / "plain.gguf", GGUFType.BF16, tokenizer=tokenizer)
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    state = {k: v.clone() for k, v in prepared.state_dict().items()}
    export_gguf(prepared, tmp_path / "prepared.gguf", GGUFType.Q4_0, tokenizer=tokenizer)
    assert all(torch.equal(v, state[k]) for k, v in prepared.state_dict().items())
