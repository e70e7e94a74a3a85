"""Surgery on the real embedded models (slow): SmolLM2-135M (a Llama) and all-MiniLM-L6-v2 (BERT).

The logits' error against the original model is bounded by that of bitsandbytes 0.50.2 NF4+DQ
(block 64) applied to the same layers: the reference implementation of the paper's data type.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from qlora import DataType
from qlora.config import ComputeDtype, LoRAConfig, QuantConfig
from qlora.data.offline import minilm_dir
from qlora.models.surgery import prepare_model, target_modules

pytestmark = pytest.mark.slow
NF4_DQ = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)
TEXT = ("Quantization reduces the memory needed to store the weights of a neural network. "
        "The frozen model is kept in four bits, while small adapters are trained in higher precision.")  # fmt: skip


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def bnb_nf4_dq_copy(model, names):
    """The model with each targeted weight replaced by bitsandbytes' NF4+DQ (block 64) round trip."""
    import bitsandbytes.functional as bnbf

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            w = ref.get_submodule(name).weight
            q, state = bnbf.quantize_4bit(w.data, blocksize=64, compress_statistics=True, quant_type="nf4")
            w.copy_(bnbf.dequantize_4bit(q, state).to(w.dtype))
    return ref


def test_smollm2_nf4_dq(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(smollm2_dir)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        original = model(ids).logits
        bnb = bnb_nf4_dq_copy(model, target_modules(model, LoRAConfig()))(ids).logits
    report = prepare_model(model, NF4_DQ, LoRAConfig(rank=64, alpha=16, dropout=0.1))
    model.eval()
    assert report.replaced_layers == 30 * 7  # q k v o gate up down in 30 layers; the tied head is kept
    assert report.total_params == 134_515_008
    # r * (in + out) per layer: q, o 576x576; k, v 576->192; gate, up 576->1536; down 1536->576
    assert report.trainable_params == 30 * 64 * (2 * 1152 + 2 * 768 + 3 * 2112) == 19_537_920
    # 4 bits + 8-bit absmax per 64 + fp32 second-level constant per 256 absmax = 4.127 (paper §3: 4.127)
    assert abs(report.quantized_bits_per_param - 4.127) < 0.002
    assert report.weight_bytes_after < 0.5 * report.weight_bytes_before  # embeddings (28 M params) stay fp32
    with torch.no_grad():
        quantized = model(ids).logits
    err, bnb_err = relative_error(quantized, original), relative_error(bnb, original)
    agree = float((quantized.argmax(-1) == original.argmax(-1)).float().mean())
    print(f"SmolLM2-135M NF4+DQ logits relative error: ours {err:.4f}, bitsandbytes {bnb_err:.4f}; top-1 agreement {agree:.3f}")
    assert err <= 1.01 * bnb_err + 1e-4
    assert 0.005 < err < 0.3  # quantization shows (measured 0.228 on TEXT), but the model is intact
    assert agree > 0.5, agree  # measured 0.647 (22 of 34 next tokens; bitsandbytes the same): most predictions kept


def test_minilm_classifier_nf4_dq():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=3).eval()
    batch = AutoTokenizer.from_pretrained(minilm_dir())([TEXT, TEXT[:60]], padding=True, return_tensors="pt")
    with torch.no_grad():
        original = model(**batch)
        original_hidden = model.bert(**batch).last_hidden_state
        bnb = bnb_nf4_dq_copy(model, target_modules(model, LoRAConfig()))(**batch).logits
    report = prepare_model(model, NF4_DQ, LoRAConfig(rank=8, alpha=16))
    model.eval()
    assert report.replaced_layers == 6 * 6 + 1  # q k v, attention out, intermediate, output per layer + pooler
    assert abs(report.quantized_bits_per_param - 4.127) < 0.01
    assert report.trainable_params == sum(8 * (m.in_features + m.out_features) for m in model.modules()
                                          if hasattr(m, "lora_a") and m.lora_a is not None) + 384 * 3 + 3  # fmt: skip
    assert model.classifier.weight.requires_grad and model.classifier.weight.dtype == torch.float32
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state
    err, bnb_err = relative_error(logits, original.logits), relative_error(bnb, original.logits)
    hidden_err = relative_error(hidden, original_hidden)
    print(f"all-MiniLM-L6-v2 NF4+DQ relative error: logits ours {err:.4f}, bitsandbytes {bnb_err:.4f}; hidden states {hidden_err:.4f}")
    assert err <= 1.01 * bnb_err + 1e-4
    assert 0.005 < hidden_err < 0.4  # errors compound through 6 small (384-wide) layers
