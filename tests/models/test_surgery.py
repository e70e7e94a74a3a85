"""Model surgery on tiny transformers models (built offline): Llama, BERT classifier, GPT-2."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import qlora
from qlora import DataType
from qlora.config import Checkpointing, ComputeDtype, LoRAConfig, QuantConfig, SurgeryConfig, Targets
from qlora.models.surgery import merge_model, prepare_model, target_modules
from qlora.nn import QLoRALinear
from qlora.train import TrainConfig, train

NF4_DQ = QuantConfig(DataType.NF4, double_quant=True, compute_dtype=ComputeDtype.FP32)


# initializer_range 0.2 (not 0.02): with a frozen final norm and LM head, a tiny random model's logits
# can only move by about |h| * |lm_head row| = 8 * 0.02 * 8 ~ 1.3 nats, which caps how far any adapter
# can lower the loss; pretrained heads are far larger.
def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2))  # fmt: skip


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                                      eos_token_id=0, initializer_range=0.2))  # fmt: skip


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=128, num_labels=3))  # fmt: skip


def fake_quantized_copy(model, names):
    """The same model with each targeted weight replaced by its dequantized NF4+DQ version."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for n in names:
            mod = ref.get_submodule(n)
            w = mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight
            dq = qlora.dequantize(qlora.quantize(w, DataType.NF4, 64, True), torch.float32)
            mod.weight.copy_(dq.t() if type(mod).__name__ == "Conv1D" else dq)
    return ref


@pytest.mark.parametrize("build, expected_layers", [(tiny_llama, 14), (tiny_gpt2, 8), (tiny_bert, 13)])
def test_fresh_adapters_reproduce_the_quantized_model(build, expected_layers):
    model = build().eval()
    names = target_modules(model, LoRAConfig())
    assert len(names) == expected_layers and not any(n.endswith(("lm_head", "classifier")) for n in names)
    reference = fake_quantized_copy(model, names)
    report = prepare_model(model, NF4_DQ, LoRAConfig(rank=8, alpha=16, dropout=0.1))
    assert report.replaced_layers == expected_layers
    ids = torch.randint(1, 96, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_only_adapters_and_a_classification_head_are_trainable():
    llama, bert = tiny_llama(), tiny_bert()
    prepare_model(llama, NF4_DQ, LoRAConfig(rank=4))
    prepare_model(bert, NF4_DQ, LoRAConfig(rank=4))
    assert {n.rsplit(".", 1)[-1] for n, p in llama.named_parameters() if p.requires_grad} == {"lora_a", "lora_b"}
    bert_trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= bert_trainable
    assert all(n.startswith("classifier") or n.endswith(("lora_a", "lora_b")) for n in bert_trainable)
    assert all(m.weight.dtype == torch.float32 for m in bert.modules() if "LayerNorm" in type(m).__name__)


def test_targets_subset_and_report():
    model = tiny_llama()
    total_before = sum(p.numel() for p in model.parameters())
    report = prepare_model(model, NF4_DQ, LoRAConfig(rank=4, targets=Targets.ATTENTION))
    # every linear layer is stored quantized; only the targets get adapters
    assert report.replaced_layers == 14 and report.adapted_layers == 8
    assert all(model.get_submodule(f"model.layers.0.mlp.{p}").lora_a is None for p in ("up_proj", "down_proj"))
    assert all(model.get_submodule(f"model.layers.0.self_attn.{p}").lora_a is not None for p in ("q_proj", "o_proj"))
    assert report.total_params == total_before
    assert report.trainable_params == sum(4 * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, QLoRALinear) and m.lora_a is not None)
    assert 4.12 < report.quantized_bits_per_param < 4.2  # NF4+DQ, small tensors (partial DQ blocks)
    assert report.weight_bytes_after < report.weight_bytes_before
    named = prepare_model(tiny_llama(), NF4_DQ, LoRAConfig(rank=4, targets=Targets.NAMES, target_names=("down_proj",)))
    assert named.replaced_layers == 14 and named.adapted_layers == 2
    with pytest.raises(ValueError, match=r"lora.target_names \['nope'\] match no linear layer \(layers end in: down_proj, gate_proj, k_proj"):
        prepare_model(tiny_llama(), NF4_DQ, LoRAConfig(rank=4, targets=Targets.NAMES, target_names=("nope",)))
    with pytest.raises(TypeError, match="config must be a SurgeryConfig"):
        prepare_model(tiny_llama(), LoRAConfig(rank=4))
    with pytest.raises(ValueError, match="checkpointing=True: expected one of OFF, REENTRANT, NON_REENTRANT"):
        SurgeryConfig(NF4_DQ, LoRAConfig(rank=4), checkpointing=True)


def batch_for(model, n=4, length=12):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 96, (n, length), generator=g)
    if isinstance(model, BertForSequenceClassification):
        return [{"input_ids": ids[i], "label": torch.tensor(i % 3)} for i in range(n)]
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_bert])
def test_thirty_steps_halve_the_loss(build):
    model = build()
    prepare_model(model, NF4_DQ, LoRAConfig(rank=16, alpha=32, dropout=0.0))
    result = train(model, batch_for(model), TrainConfig(max_steps=30, micro_batch_size=4, lr=3e-3, max_grad_norm=1.0,
                                                        warmup_ratio=0.0), progress=False)  # fmt: skip
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses


@pytest.mark.parametrize("mode", [Checkpointing.REENTRANT, Checkpointing.NON_REENTRANT])
def test_gradient_checkpointing_gives_the_same_gradients(mode):
    grads = []
    for checkpointing in (Checkpointing.OFF, mode):
        model = tiny_llama()
        prepare_model(model, SurgeryConfig(NF4_DQ, LoRAConfig(rank=4, dropout=0.0), checkpointing))
        calls = []
        model.get_submodule("model.layers.0.self_attn.q_proj").register_forward_hook(lambda *_: calls.append(1))
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, QLoRALinear):
                    m.lora_b.fill_(0.01)
        model.train()
        ids = torch.randint(1, 96, (2, 10), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids).loss.backward()
        assert len(calls) == (1 if checkpointing is Checkpointing.OFF else 2)  # recomputed in backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(v is not None for v in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


def test_merged_export_matches():
    model = tiny_llama().eval()
    prepare_model(model, NF4_DQ, LoRAConfig(rank=4))
    assert not any(m.training for m in model.modules())  # replaced layers keep the model's mode
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QLoRALinear):
                m.lora_b.normal_(std=0.02)
    ids = torch.randint(1, 96, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        merge_model(model, torch.float32)
        after = model(ids).logits
    assert not any(isinstance(m, QLoRALinear) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_lora_bf16_and_qlora_rows_start_from_the_same_adapters():
    """Note: adapter init per layer — two models prepared after the same manual_seed get the same A per layer,
    even when something consumed the global RNG in between (the loaders of LoRA BF16 and QLoRA rows do)."""
    import torch

    from qlora import DataType, LoRAConfig, QuantConfig
    from qlora.models.surgery import prepare_model
    from tests.tiny_text import tiny_llama

    def adapters(quant, draw):
        torch.manual_seed(3)
        model = tiny_llama(64)
        torch.rand(draw)
        prepare_model(model, QuantConfig(quant, double_quant=False), LoRAConfig(rank=4, alpha=8))
        return {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("lora_a")}

    bf16, nf4 = adapters(DataType.BF16, 0), adapters(DataType.NF4, 777)
    assert bf16.keys() == nf4.keys() and len(bf16) > 4
    assert all(torch.equal(bf16[k], nf4[k]) for k in bf16)
