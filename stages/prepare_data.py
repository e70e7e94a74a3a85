"""DVC stage `prepare_data`: token files for classification, instruction tuning, RougeL and perplexity."""

import os
import shutil
import tempfile
from pathlib import Path

from stage_io import ARTIFACTS, METRICS, pipeline_params, write_json_atomic
from transformers import AutoTokenizer

from qlora.data.bigbench import download_sdist, extract_tasks
from qlora.data.prepare import prepare_datasets

CACHE = Path.home() / ".cache" / "qlora-pipeline"


def main() -> None:
    cfg = pipeline_params()
    sdist = download_sdist(CACHE / "bigbench")  # 358 MB once, cached outside the repo
    out = ARTIFACTS / "data"
    tmp = Path(tempfile.mkdtemp(dir=ARTIFACTS, prefix=".data."))
    try:
        tasks = extract_tasks(sdist, tmp / "bigbench")
        summary = prepare_datasets(cfg.data, cfg.eval, AutoTokenizer.from_pretrained(ARTIFACTS / "models" / "causal"),
                                   AutoTokenizer.from_pretrained(ARTIFACTS / "models" / "encoder"), tasks, tmp / "tokens")  # fmt: skip
        shutil.rmtree(tmp / "bigbench")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "tokens", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(METRICS / "data.json", summary)


if __name__ == "__main__":
    main()
