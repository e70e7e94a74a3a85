"""Validation at the door: bad configs, given as a user gives them (Hydra overrides, an edited
params.yaml, library calls, a stage's arguments), fail at once with one ConfigError that names the key
and what is allowed; a refused stage writes nothing."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qlora.checks import ConfigError
from qlora.config import LoRAConfig, ModelConfig, QuantConfig, SurgeryConfig, Targets
from qlora.pipeline.params import load_params, pipeline_config
from qlora.quant import DataType
from qlora.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


# (Hydra override, the key the error must name)
BAD_OVERRIDES = [
    ("lora.alpha=nan", "lora.alpha"),
    ("lora.alpha=inf", "lora.alpha"),
    ("lora.alpha=-1", "lora.alpha"),
    ("lora.alpha=0", "lora.alpha"),
    ("lora.alpha=abc", "lora.alpha"),
    ("lora.rank=0", "lora.rank"),
    ("lora.rank=-1", "lora.rank"),
    ("lora.rank=2.5", "lora.rank"),
    ("lora.rank=true", "lora.rank"),
    ("lora.dropout=1.0", "lora.dropout"),
    ("lora.dropout=-0.1", "lora.dropout"),
    ("lora.dropout=nan", "lora.dropout"),
    ("lora.targets=NOPE", "lora.targets"),
    ("lora.targets=NAMES", "lora.target_names"),
    ("lora.target_names=[q_proj]", "lora.target_names"),
    ("train.lr=inf", "train.lr"),
    ("train.lr=nan", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.lr=-0.001", "train.lr"),
    ("train.lr=fast", "train.lr"),
    ("train.weight_decay=nan", "train.weight_decay"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.max_grad_norm=nan", "train.max_grad_norm"),
    ("train.max_grad_norm=-0.3", "train.max_grad_norm"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.max_steps=true", "train.max_steps"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("train.micro_batch_size=0", "train.micro_batch_size"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.warmup_ratio=1.0", "train.warmup_ratio"),
    ("train.warmup_ratio=-0.1", "train.warmup_ratio"),
    ("train.schedule=LINEAR", "train.schedule"),
    ("train.optimizer_bits=16", "train.optimizer_bits"),
    ("train.group_by_length=maybe", "train.group_by_length"),
    ("train.deterministic=2", "train.deterministic"),
    ("train.paged=yes", "train.paged"),
    ("train.save_every=-1", "train.save_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.seed=-1", "train.seed"),
    ("train_encoder.lr=nan", "train_encoder.lr"),
    ("quant.dtype=nf5", "quant.dtype"),
    ("quant.block_size=65", "quant.block_size"),
    ("quant.block_size=0", "quant.block_size"),
    ("quant.block_size=64.0", "quant.block_size"),
    ("quant.double_quant=no", "quant.double_quant"),
    ("quant.compute_dtype=fp8", "quant.compute_dtype"),
    ("quants.fp4.block_size=7", "quants.fp4.block_size"),
    ("quants.bf16.double_quant=true", "quants.bf16.double_quant"),
    ("data.max_length=-5", "data.max_length"),
    ("data.max_length=0", "data.max_length"),
    ("data.perplexity_windows=0", "data.perplexity_windows"),
    ("data.perplexity_window_tokens=1", "data.perplexity_window_tokens"),
    ("data.classification_train=0", "data.classification_train"),
    ("data.instruction_test=0", "data.instruction_test"),
    ("data.instruction_test_max_prompt_tokens=3", "data.instruction_test_max_prompt_tokens"),
    ("data.seed=-1", "data.seed"),
    ("data.classification_task=''", "data.classification_task"),
    ("eval.mmlu_shots=6", "eval.mmlu_shots"),
    ("eval.mmlu_questions=-1", "eval.mmlu_questions"),
    ("eval.base_mmlu_questions=-1", "eval.base_mmlu_questions"),
    ("eval.rouge_examples=0", "eval.rouge_examples"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.heldout_examples=0", "eval.heldout_examples"),
    ("eval.seed=1.5", "eval.seed"),
    ("ablation.base_quants=[]", "ablation.base_quants"),
    ("ablation.base_quants=[nf9]", "ablation.base_quants"),
    ("ablation.base_quants=[nf4,nf4]", "ablation.base_quants"),
    ("ablation.base_models=[encoder]", "ablation.base_models"),
    ("ablation.base_models=[gemma]", "ablation.base_models"),
    ("ablation.causal.lora_bf16.quant=nf4", "ablation.causal.lora_bf16.quant"),
    ("ablation.causal.qlora_fp4.quant=bf16", "ablation.causal.qlora_fp4.quant"),
    ("ablation.causal.qlora_fp4.quant=nf5", "ablation.causal.qlora_fp4.quant"),
    ("ablation.causal.qlora_fp4.method=NONE", "ablation.causal.qlora_fp4.method"),
    ("+ablation.causal.qlora_fp4.mmlu=maybe", "ablation.causal.qlora_fp4.mmlu"),
    ("ablation.encoder.full_bf16.lr=0", "ablation.encoder.full_bf16.lr"),
    ("ablation.encoder.full_bf16.lr=nan", "ablation.encoder.full_bf16.lr"),
    ("ablation.encoder_seeds=[]", "ablation.encoder_seeds"),
    ("ablation.encoder_seeds=[0,0]", "ablation.encoder_seeds"),
    ("ablation.encoder_seeds=[-1]", "ablation.encoder_seeds"),
    ("ablation.causal_seeds=[0,0]", "ablation.causal_seeds"),
    ("ablation.untuned_quants=[int8]", "ablation.untuned_quants"),
    ("models.causal.kind=SEQ_CLS", "models.causal.kind"),
    ("models.causal.source=HUB", "models.causal.source"),
    ("models.causal.source=PRETRAINED", "models.causal.path"),
    ("models.causal.name=''", "models.causal.name"),
    ("demo.block_size=3", "demo.block_size"),
    ("demo.dtypes=[nf5]", "demo.dtypes[0]"),
    ("demo.model=nowhere", "demo.model"),
    ("profile=''", "profile"),
]


@pytest.mark.parametrize("override, key", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_names_its_key(override, key):
    with pytest.raises(ConfigError) as caught:
        pipeline_config(composed(override))
    assert caught.value.key == key
    message = str(caught.value)
    assert message.startswith(f"{key}=") and ": expected " in message, message


def test_enum_values_are_case_insensitive():
    for text in ("nf4", "NF4", "Nf4"):
        assert pipeline_config(composed(f"quant.dtype={text}")).quant.dtype is DataType.NF4
    assert pipeline_config(composed("train.schedule=cosine")).train.schedule.value == "cosine"


def test_unknown_key_is_refused_naming_it():
    params = composed()
    params["train"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match=r"^train.lrr=0.1: expected no such key; train has: .*\blr\b"):
        pipeline_config(params)


def test_a_missing_section_is_refused():
    params = composed()
    del params["eval"]
    with pytest.raises(ConfigError, match=r"^eval=None: expected a value: the key is missing"):
        pipeline_config(params)


# an edited params.yaml: (text replacement, key named)
EDITS = [
    ("  double_quant: true\n  block_size: 64\n  compute_dtype: NATIVE\nquants:", "  double_quant: 'no'\n  block_size: 64\n  compute_dtype: NATIVE\nquants:", "quant.double_quant"),
    ("lr: 0.0005", "lr: .inf", "train.lr"),
    ("alpha: 16.0", "alpha: .nan", "lora.alpha"),
    ("max_steps: ", "max_steps: true #", "train.max_steps"),
    ("profile: cpu", "profile: cpu\nextra_section: 1", "extra_section"),
]


@pytest.mark.parametrize("old, new, key", EDITS, ids=[k for *_, k in EDITS])
def test_edited_params_yaml_is_refused(tmp_path, old, new, key):
    text = (ROOT / "params.yaml").read_text()
    assert old in text
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_params(tmp_path / "params.yaml")
    assert caught.value.key == key


def test_broken_yaml_names_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml.*valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a mapping of sections"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(FileNotFoundError, match="compose_params"):
        load_params(tmp_path / "missing.yaml")


# library calls
LIBRARY = [
    (lambda: QuantConfig(double_quant="no"), "double_quant"),
    (lambda: QuantConfig(DataType.BF16, double_quant=True), "double_quant"),
    (lambda: QuantConfig(block_size=True), "block_size"),
    (lambda: QuantConfig("nf5"), "dtype"),
    (lambda: LoRAConfig(alpha="abc"), "alpha"),
    (lambda: LoRAConfig(alpha=math.nan), "alpha"),
    (lambda: LoRAConfig(rank=True), "rank"),
    (lambda: LoRAConfig(targets="names"), "target_names"),
    (lambda: LoRAConfig(target_names="q_proj", targets=Targets.NAMES), "target_names"),
    (lambda: TrainConfig(max_steps=True), "max_steps"),
    (lambda: TrainConfig(lr=math.inf), "lr"),
    (lambda: TrainConfig(max_grad_norm=math.nan), "max_grad_norm"),
    (lambda: TrainConfig(deterministic="false"), "deterministic"),
    (lambda: SurgeryConfig(checkpointing="sometimes"), "checkpointing"),
    (lambda: ModelConfig(source="PRETRAINED"), "path"),
]


@pytest.mark.parametrize("make, key", LIBRARY, ids=[k + str(i) for i, (_, k) in enumerate(LIBRARY)])
def test_library_configs_refuse_bad_values(make, key):
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.key == key


def test_library_configs_accept_enum_names_and_values():
    assert QuantConfig("nf4").dtype is DataType.NF4 and QuantConfig("FP4", False).dtype is DataType.FP4
    assert LoRAConfig(targets="attention").targets is Targets.ATTENTION
    assert TrainConfig(optimizer_bits=8).optimizer_bits.value == 8


def _stage(tmp_path, params_text: str, *argv: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(params_text)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'no.db'}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "stages" / argv[0]), *argv[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, edit, message",
    [
        (("train.py", "causal", "lora_bf16"), ("alpha: 16.0", "alpha: .nan"), "error: lora.alpha=nan: expected a finite number"),
        (("train.py", "causal", "lora_bf16x"), None, "error: ablation.causal='lora_bf16x': expected one of lora_bf16, qlora_fp4"),
        (("train.py", "causal"), None, "usage: python stages/train.py"),
        (("evaluate_base.py", "causal", "nf4"), (r"perplexity_windows: \d+", "perplexity_windows: 0"), "error: data.perplexity_windows=0"),
        (("quantize.py", "causal", "nf9"), None, "error: quants='nf9': expected one of af4, bf16, fp4"),
        (("prepare_model.py", "causal"), (r"source: SMOLLM2\n(    kind: CAUSAL_LM\n)    path: ''", r"source: PRETRAINED\n\1    path: ./no/such/model"),
         "error: models.causal.path='./no/such/model': expected an existing model folder or a hub id: no such folder "),
    ],
)
def test_refused_stage_writes_nothing(tmp_path, argv, edit, message):
    text = (ROOT / "params.yaml").read_text()
    if edit is not None:
        text, n = re.subn(edit[0], edit[1], text, count=1)  # a pattern: the edit survives a change of default
        assert n == 1, edit
    result = _stage(tmp_path, text, *argv)
    assert result.returncode in (1, 2), result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
