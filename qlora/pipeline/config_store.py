"""The config dataclasses as Hydra structured-config schemas (Hydra's ConfigStore).

`register_configs()` stores one schema per conf/ group and the whole pipeline's, for Hydra apps (the
sweep) that want Hydra itself to type-check overrides. The full validation (ranges, finite numbers,
case-insensitive enums, cross-references) is `qlora.pipeline.params.pipeline_config`, which every
entry point applies to what Hydra or DVC composed.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from qlora.config import DataConfig, EvalConfig, LoRAConfig, ModelConfig, QuantConfig
from qlora.pipeline.config import PipelineConfig
from qlora.train.config import TrainConfig

GROUP_SCHEMAS = {"model": ModelConfig, "quant": QuantConfig, "lora": LoRAConfig, "data": DataConfig, "train": TrainConfig,
                 "eval": EvalConfig}  # fmt: skip


def register_configs() -> None:
    cs = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name="schema", node=schema)
    cs.store(name="pipeline_schema", node=PipelineConfig)
