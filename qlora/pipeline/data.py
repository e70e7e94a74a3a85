"""Preparing the data: token files for classification, instruction tuning, held-out RougeL and NLL, and
the perplexity text, from the pinned assets that set-up fetched (nothing downloads here) or, for the hub
options of `data`, from the Hugging Face hub; when `data.source` selects them, the user's own
instruction records (`qlora.data.user`) for training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.config import DataConfig
from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, ENCODER, PipelineConfig
from qlora.pipeline.params import whole
from qlora.pipeline.tracking import Tracking


@dataclasses.dataclass(frozen=True)
class PrepareDataJob:
    """Token files for classification, instruction tuning, held-out RougeL/NLL, and the perplexity text."""

    data: DataConfig

    def run(self, tracking: Tracking, assets_dir: Path | None = None) -> dict:
        """Writes `paths.data_dir()` whole (or nothing) and metrics/data.json.

        Args:
            assets_dir: where set-up put the pinned data files (None: the environment's default).
        """
        import time

        from transformers import AutoTokenizer

        from qlora.atomic import atomic_dir, write_json
        from qlora.data.prepare import prepare_datasets

        started = time.time()
        with atomic_dir(paths.data_dir()) as out:
            summary = prepare_datasets(self.data, AutoTokenizer.from_pretrained(paths.model_dir(CAUSAL)),
                                       AutoTokenizer.from_pretrained(paths.model_dir(ENCODER)), assets_dir, out)  # fmt: skip
        write_json(paths.METRICS / "data.json", summary)
        tracking.log("prepare_data", params={"data": self.data},
                     metrics={k: float(v) for k, v in summary.items()}, tags={"stage": "prepare_data"}, started=started,
                     artifacts=[paths.METRICS / "data.json"], config=self)  # fmt: skip
        return summary


def plan_prepare_data(params: PipelineConfig) -> PrepareDataJob:
    return PrepareDataJob(whole(params.data))
