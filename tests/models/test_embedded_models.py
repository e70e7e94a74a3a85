"""Surgery on the real embedded models (slow): SmolLM2-135M (a Llama) and all-MiniLM-L6-v2 (BERT)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from qlora import DataType
from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.data.offline import minilm_dir
from qlora.models.surgery import prepare_model

pytestmark = pytest.mark.slow
NF4_DQ = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_smollm2_nf4_dq(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        original = model(ids).logits
    report = prepare_model(model, NF4_DQ, LoRAConfig(rank=64, alpha=16, dropout=0.1))
    model.eval()
    assert report.replaced_layers == 30 * 7  # q k v o gate up down in 30 layers; the tied head is kept
    assert report.total_params == 134_515_008
    # r * (in + out) per layer: q, o 576x576; k, v 576->192; gate, up 576->1536; down 1536->576
    assert report.trainable_params == 30 * 64 * (2 * 1152 + 2 * 768 + 3 * 2112) == 19_537_920
    assert abs(report.quantized_bits_per_param - 4.127) < 0.002
    with torch.no_grad():
        quantized = model(ids).logits
    err = relative_error(quantized, original)
    print(f"SmolLM2-135M NF4+DQ logits relative error {err:.4f}")
    assert 0.01 < err < 0.25  # quantization shows, but the model is intact


def test_minilm_classifier_nf4_dq():
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=3).eval()
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (2, 24))
    with torch.no_grad():
        original = model.bert(ids).last_hidden_state
    report = prepare_model(model, NF4_DQ, LoRAConfig(rank=8, alpha=16))
    model.eval()
    assert report.replaced_layers == 6 * 6 + 1  # q k v, attention out, intermediate, output per layer + pooler
    assert abs(report.quantized_bits_per_param - 4.127) < 0.01
    assert report.trainable_params == sum(8 * (m.in_features + m.out_features) for m in model.modules()
                                          if hasattr(m, "lora_a") and m.lora_a is not None) + 384 * 3 + 3  # fmt: skip
    with torch.no_grad():
        err = relative_error(model.bert(ids).last_hidden_state, original)
    print(f"all-MiniLM-L6-v2 NF4+DQ hidden-state relative error {err:.4f}")
    assert 0.005 < err < 0.4  # measured 0.27: errors compound through 6 small (384-wide) layers
