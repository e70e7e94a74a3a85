"""DVC stage `prepare_data`: token files for classification, instruction tuning, held-out RougeL and
NLL, and the perplexity text, from the pinned data files that set-up fetched ($QLORA_ASSETS, else the
environment's share/qlora-pipeline/assets). Nothing is downloaded.

usage: python stages/prepare_data.py
"""

import sys

from stage_io import args, assets_dir, stage_errors, tracking

from qlora.pipeline.params import load_params
from qlora.pipeline.data import plan_prepare_data as plan

if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 0, usage=__doc__)).run(tracking(), assets_dir())
