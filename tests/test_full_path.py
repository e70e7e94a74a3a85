"""The whole user path on the embedded SmolLM2-135M (slow): quantize -> train 20 steps -> save ->
load in a fresh process -> the same logits; and PEFT loads the adapter onto the dequantized base."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import qlora
from qlora.config import ComputeDtype, LoRAConfig, Method, ModelKind, QuantConfig
from qlora.data.tokenization import TokenizedDataset, encode_instruction
from qlora.models.loading import load_adapter_into, load_for_training, quantize_checkpoint
from qlora.models.peft_format import load_peft_adapter
from qlora.nn import QLoRALinear
from qlora.quant import DataType
from qlora.train import TrainConfig
from qlora.pipeline.finetune import finetune
from tests.peers import peer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
QUANT = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)
LORA = LoRAConfig(rank=8, alpha=16, dropout=0.05)

LOAD_AND_RUN = """
import sys, torch
from safetensors.torch import save_file
from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig
from qlora.models.loading import load_adapter_into, load_for_training
from qlora.models.peft_format import load_peft_adapter
from qlora.quant import DataType
qdir, adapter, ids_file, out = sys.argv[1:5]
from safetensors.torch import load_file
ids = load_file(ids_file)["ids"]
model = load_for_training(qdir, ModelKind.CAUSAL_LM, QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32),
                          LoRAConfig(rank=8, alpha=16, dropout=0.05))
load_adapter_into(model, load_peft_adapter(adapter))
with torch.no_grad():
    save_file({"logits": model.eval()(ids).logits.contiguous()}, out)
"""


def test_quantize_train_save_load_in_a_fresh_process(smollm2_dir, tmp_path):
    qdir = quantize_checkpoint(smollm2_dir, ModelKind.CAUSAL_LM, QUANT, tmp_path / "nf4_dq")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    pairs = [(f"Add {a} and {b}.", str(a + b)) for a in range(3, 9) for b in range(2, 5)]
    TokenizedDataset.from_examples([encode_instruction(tok, p, r) for p, r in pairs]).save(tmp_path / "train.safetensors")
    result = finetune(model_name="SmolLM2-135M", checkpoint=qdir, kind=ModelKind.CAUSAL_LM, method=Method.QLORA, quant=QUANT,
                      lora=LORA, train_config=TrainConfig(max_steps=20, micro_batch_size=4, lr=1e-3, save_every=10),
                      data=tmp_path / "train.safetensors", out_dir=tmp_path / "adapter", resume_dir=tmp_path / "resume",
                      pad_token_id=tok.pad_token_id or 0, progress=False)  # fmt: skip
    assert result.record.steps == 20 and result.record.losses[-1] < result.record.losses[0]
    assert abs(result.record.bits_per_param - 4.127) < 1e-3

    ours = load_for_training(qdir, ModelKind.CAUSAL_LM, QUANT, LORA)
    load_adapter_into(ours, load_peft_adapter(tmp_path / "adapter"))
    ours.eval()
    ids = tok(["Add 5 and 3.", "Add 7 and 4."], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        expected = ours(ids).logits
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(qdir), str(tmp_path / "adapter"), str(tmp_path / "ids.safetensors"),
                    str(tmp_path / "out.safetensors")], check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["logits"], expected, rtol=0, atol=0)

    # PEFT puts our adapter on the dequantized base and computes the same logits
    peft = peer("peft")
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, m in ours.named_modules():
            if isinstance(m, QLoRALinear):
                base.get_submodule(name).weight.copy_(qlora.dequantize(m.weight, torch.float32))
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(ids).logits
    torch.testing.assert_close(theirs, expected, rtol=1e-4, atol=1e-4)
