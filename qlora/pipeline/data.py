"""Preparing the data: token files for classification, instruction tuning, held-out RougeL and NLL, and
the perplexity text, from the embedded assets (the bigbench sdist is downloaded once into a cache) and,
when `data.source` selects them, the user's own instruction records (`qlora.data.user`)."""

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

    def run(self, tracking: Tracking, cache_dir: Path) -> dict:
        import shutil
        import time

        from transformers import AutoTokenizer

        from qlora.atomic import atomic_dir, write_json
        from qlora.data.bigbench import download_sdist, extract_tasks
        from qlora.data.prepare import prepare_datasets

        started = time.time()
        sdist = download_sdist(cache_dir / "bigbench")  # 358 MB once, cached outside the repo
        with atomic_dir(paths.data_dir()) as out:
            scratch = out / ".bigbench"
            tasks = extract_tasks(sdist, scratch)
            summary = prepare_datasets(self.data, AutoTokenizer.from_pretrained(paths.model_dir(CAUSAL)),
                                       AutoTokenizer.from_pretrained(paths.model_dir(ENCODER)), tasks, out)  # fmt: skip
            shutil.rmtree(scratch)
        write_json(paths.METRICS / "data.json", summary)
        tracking.log("prepare_data", params={"data": self.data},
                     metrics={k: float(v) for k, v in summary.items()}, tags={"stage": "prepare_data"}, started=started,
                     artifacts=[paths.METRICS / "data.json"], config=self)  # fmt: skip
        return summary


def plan_prepare_data(params: PipelineConfig) -> PrepareDataJob:
    return PrepareDataJob(whole(params.data))
