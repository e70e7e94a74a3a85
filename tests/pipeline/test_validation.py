"""Validation while a causal row trains: the curve, the best step's adapter as the output, and training
that is the same with or without it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from qlora.config import ComputeDtype, DataType, LoRAConfig, Method, ModelKind, QuantConfig
from qlora.data.tokenization import TokenizedDataset, encode_instruction
from qlora.models.loading import quantize_checkpoint
from qlora.pipeline.finetune import finetune
from qlora.pipeline.validation import Validation, ValidationCurve, read_curve
from qlora.train.config import TrainConfig
from tests.tiny_text import save_tiny_model, tiny_tokenizer

QUANT = QuantConfig(DataType.NF4, True, compute_dtype=ComputeDtype.FP32)


def test_best_step_is_the_lowest_earliest():
    assert ValidationCurve((2, 4, 6), (1.5, 1.2, 1.2)).best_step == 4
    assert ValidationCurve((3,), (9.0,)).best_step == 3


@pytest.fixture
def setup(tmp_path):
    base = save_tiny_model(tmp_path / "base")
    qdir = quantize_checkpoint(base, ModelKind.CAUSAL_LM, QUANT, tmp_path / "nf4_dq")
    tok = tiny_tokenizer()
    train = [(f"the cat sat on mat {i}", f"the dog {i % 3}") for i in range(24)]
    val = [(f"a mat for the cat {i}", f"the dog {i % 3}") for i in range(6)]
    TokenizedDataset.from_examples([encode_instruction(tok, p, r) for p, r in train]).save(tmp_path / "train.safetensors")
    TokenizedDataset.from_examples([encode_instruction(tok, p, r) for p, r in val]).save(tmp_path / "val.safetensors")
    (tmp_path / "val.json").write_text(json.dumps({"tasks": ["t1", "t2"] * 3, "template_tail": [2] * 6}))
    return tmp_path, qdir


def _run(tmp_path, qdir, name, validation):
    return finetune(model_name="tiny", checkpoint=qdir, kind=ModelKind.CAUSAL_LM, method=Method.QLORA, quant=QUANT,
                    lora=LoRAConfig(rank=4, alpha=8, dropout=0.1),
                    train_config=TrainConfig(max_steps=6, micro_batch_size=4, lr=3e-2, warmup_ratio=0.0, save_every=3),
                    data=tmp_path / "train.safetensors", out_dir=tmp_path / name, resume_dir=tmp_path / f"{name}.resume",
                    progress=False, validation=validation)  # fmt: skip


def test_validation_picks_the_best_step_without_changing_training(setup):
    tmp_path, qdir = setup
    plain = _run(tmp_path, qdir, "plain", None)
    val = Validation(tmp_path / "val.safetensors", tmp_path / "val.json", every=2, examples=6, batch_size=4)
    checked = _run(tmp_path, qdir, "checked", val)
    assert checked.record.losses == plain.record.losses  # evaluating draws nothing and trains nothing
    rec = checked.record
    assert rec.val_steps == (0, 2, 4, 6) and len(rec.val_nll) == 4 and all(v > 0 for v in rec.val_nll)
    # step 0 is the adapters as initialised: every LoRA B is zero, so the model is the untuned one
    init = load_file(str(tmp_path / "checked.resume" / "validation" / "step00000" / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in init) and all(not v.any() for k, v in init.items() if "lora_B" in k)
    assert rec.val_nll[0] != rec.val_nll[-1]
    assert rec.chosen_step == rec.val_steps[rec.val_nll.index(min(rec.val_nll))]
    curve = read_curve(tmp_path / "checked.resume" / "validation", 6)
    assert curve.steps == rec.val_steps and curve.nll == rec.val_nll
    chosen = load_file(str(tmp_path / "checked.resume" / "validation" / f"step{rec.chosen_step:05d}" / "adapter_model.safetensors"))
    out = load_file(str(tmp_path / "checked" / "adapter_model.safetensors"))
    assert out.keys() == chosen.keys() and all(torch.equal(out[k], chosen[k]) for k in out)
    assert (tmp_path / "checked" / "qlora_quant.json").exists()  # the quantization record stays with the adapter
    last = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    assert all(torch.equal(out[k], last[k]) for k in out) == (rec.chosen_step == 6)
    assert plain.record.val_steps == () and plain.record.chosen_step is None
