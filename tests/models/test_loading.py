"""Quantized checkpoint -> QLoRA model, adapters in and out."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig
from qlora.models.bnb_checkpoint import save_quantized_checkpoint
from qlora.models.loading import adapter_weights, load_adapter_into, load_quantized_model
from qlora.models.peft_format import TaskType, load_peft_adapter, save_peft_adapter
from qlora.models.surgery import prepare_model
from qlora.nn import QLoRALinear


def tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()  # fmt: skip


def test_quantized_checkpoint_rebuilds_the_same_model_and_adapters_round_trip(tmp_path):
    model = tiny()
    quant = QuantConfig(compute_dtype=ComputeDtype.FP32)
    lora = LoRAConfig(rank=4, alpha=8, dropout=0.0)
    prepare_model(model, quant, lora)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QLoRALinear):
                m.lora_b.normal_(std=0.05)
    quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    others = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in quantized and k != "lm_head.weight"}
    save_quantized_checkpoint(tmp_path / "base", model.config.to_dict(), quantized, others)
    save_peft_adapter(tmp_path / "adapter", adapter_weights(model, lora, TaskType.CAUSAL_LM))

    rebuilt = load_quantized_model(tmp_path / "base", ModelKind.CAUSAL_LM, lora=lora, compute_dtype=ComputeDtype.FP32).eval()
    load_adapter_into(rebuilt, load_peft_adapter(tmp_path / "adapter"))
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert {n.rsplit(".", 1)[-1] for n, p in rebuilt.named_parameters() if p.requires_grad} == {"lora_a", "lora_b"}
    assert rebuilt.lm_head.weight.data_ptr() == rebuilt.model.embed_tokens.weight.data_ptr()  # tied again
