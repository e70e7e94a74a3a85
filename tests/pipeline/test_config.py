"""conf/ composes into a valid typed PipelineConfig; typos and bad values fail naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from qlora.config import Method
from qlora.pipeline.config_store import register_configs
from qlora.pipeline.params import pipeline_config
from qlora.quant import DataType
from qlora.train import Schedule

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def composed(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def test_default_config_is_valid_and_typed():
    cfg = pipeline_config(composed())
    assert cfg.quant.dtype is DataType.NF4 and cfg.quant.double_quant
    assert sorted(cfg.quants) == ["af4", "bf16", "fp4", "fp4_e3m0", "fp8_e4m3", "fp8_e5m2", "int4", "int8", "mxfp4", "nf4", "nf4_dq",
                                  "nf4_dq_e4m4", "nvfp4"]
    assert cfg.ablation.encoder["full_bf16"].method is Method.FULL and cfg.ablation.encoder["full_bf16"].lr == 3e-5
    assert cfg.lora.rank == 64 and cfg.lora.alpha == 16 and cfg.lora.dropout == 0.1


def test_paper_profile_has_the_paper_hyperparameters():
    cfg = pipeline_config(composed("experiment=paper"))
    t = cfg.train
    assert (t.lr, t.schedule, t.max_grad_norm, t.micro_batch_size * t.grad_accum, t.group_by_length, t.paged) == (
        2e-4, Schedule.CONSTANT, 0.3, 16, True, True)  # fmt: skip
    assert t.optimizer_bits.value == 32 and cfg.eval.mmlu_questions == 0


@pytest.mark.parametrize("option", [p.stem for p in Path(CONF, "quant").glob("*.yaml")])
def test_every_quant_option_validates(option):
    cfg = pipeline_config(composed(f"quant={option}"))
    assert cfg.quant.label == option


def test_unknown_group_option_lists_the_allowed_ones():
    with pytest.raises(ConfigCompositionException, match="nf5"):
        composed("quant=nf5")


def test_typo_in_a_key_fails():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        composed("train.lrr=0.1")
    params = composed()
    params["train"]["lrr"] = 0.1
    with pytest.raises(ValueError, match=r"train.lrr=0.1: expected no such key; train has: .*grad_accum.*lr"):
        pipeline_config(params)


def test_bad_enum_value_names_key_and_allowed_values():
    params = composed()
    params["quant"]["dtype"] = "NF5"
    with pytest.raises(ValueError, match=r"quant.dtype='NF5': expected one of BF16, INT8, INT4, FP4, FP4_E3M0, NF4"):
        pipeline_config(params)


def test_schemas_register_with_hydra():
    from hydra.core.config_store import ConfigStore

    register_configs()
    repo = ConfigStore.instance().repo
    assert "schema.yaml" in repo["quant"] and "pipeline_schema.yaml" in repo


def test_profiles_override_the_root_ablation():
    """Experiment profiles come after the root config: their ablation settings win (a findings run once
    evaluated only the default's one model because the root config was composed last)."""
    cpu = pipeline_config(composed())
    findings = pipeline_config(composed("experiment=findings"))
    assert cpu.ablation.base_models == ("causal",) and cpu.ablation.encoder_seeds == (0,)
    assert findings.ablation.base_models == ("causal", "gemma3_270m", "qwen25_coder_05b")
    assert findings.ablation.encoder_seeds == (0, 1, 2, 3, 4) and findings.ablation.causal_seeds == (0, 1, 2)
    assert cpu.ablation.causal_seeds == (0,) and cpu.ablation.untuned_quants == findings.ablation.untuned_quants == ("bf16", "fp4", "nf4_dq")
    assert findings.eval.val_every == 8 and cpu.eval.val_every == 0 and findings.train.grad_accum * findings.train.micro_batch_size == 16
    assert findings.data.perplexity_windows > cpu.data.perplexity_windows
    assert findings.eval.heldout_examples > cpu.eval.heldout_examples and findings.eval.mmlu_questions > cpu.eval.mmlu_questions
    assert findings.train.max_steps > cpu.train.max_steps
    assert findings.findings_path == "../reports/findings.md" and findings.profile == "findings"
