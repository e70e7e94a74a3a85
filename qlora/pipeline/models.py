"""Preparing the base models: each `models.<key>` as a plain safetensors folder (artifacts/models/<key>)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.config import ModelConfig
from qlora.pipeline import paths
from qlora.pipeline.config import PipelineConfig
from qlora.pipeline.params import lookup
from qlora.pipeline.tracking import Tracking


@dataclasses.dataclass(frozen=True)
class PrepareModelJob:
    """Materialise `models.<key>` into artifacts/models/<key>."""

    key: str
    model: ModelConfig

    def run(self, tracking: Tracking) -> Path:
        import time

        from qlora.checks import ConfigError
        from qlora.data.sources import check_model_path, materialise

        try:
            check_model_path(self.model)
        except FileNotFoundError:
            missing = Path(self.model.path).expanduser().resolve()
            raise ConfigError(f"models.{self.key}.path", self.model.path, f"an existing model folder or a hub id: no such folder {missing}") from None
        started = time.time()
        out = materialise(self.model, paths.model_dir(self.key))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        tracking.log(f"prepare_model {self.key}", params={"model": self.model.name, "source": self.model.source.value},
                     metrics={"folder_mb": size / 2**20}, started=started, config=self,
                     tags={"stage": "prepare_model", "model": self.model.name})  # fmt: skip
        return out


def plan_prepare_model(params: PipelineConfig, key: str) -> PrepareModelJob:
    return PrepareModelJob(key, lookup(params.models, key, "models"))
