"""The config dataclasses as Hydra structured-config schemas, and typed loading of params.yaml.

`register_configs()` stores the schemas in Hydra's ConfigStore (group schemas and the whole
pipeline). `pipeline_config(mapping)` validates a composed config (e.g. params.yaml read by a stage)
against them: an unknown key or a bad enum value fails at once, naming the key and the allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qlora.config import DataConfig, EvalConfig, LoRAConfig, ModelConfig, PipelineConfig, QuantConfig
from qlora.train.config import TrainConfig

# PipelineConfig's forward reference to TrainConfig must resolve for OmegaConf
PipelineConfig.__annotations__["train"] = TrainConfig
PipelineConfig.__annotations__["train_encoder"] = TrainConfig

GROUP_SCHEMAS = {"model": ModelConfig, "quant": QuantConfig, "lora": LoRAConfig, "data": DataConfig, "train": TrainConfig,
                 "eval": EvalConfig}  # fmt: skip


def register_configs() -> None:
    cs = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name="schema", node=schema)
    cs.store(name="pipeline_schema", node=PipelineConfig)


def pipeline_config(params: Mapping[str, Any]) -> PipelineConfig:
    """Typed PipelineConfig from a composed mapping (params.yaml).

    Raises:
        ValueError: unknown keys, wrong types or enum values, naming the key (and the allowed values).
    """
    try:
        schema = OmegaConf.structured(PipelineConfig)
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(params)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ValueError(f"invalid pipeline config: {e}") from None
