"""DVC stage `analysis@<name>`: a measurement behind a claim of the findings (`ablation.analyses`): `memory`
(h: a QLoRA training step's memory by part) or `outliers` (i: weight outliers against model size).
Writes metrics/analysis/<name>.json and .csv and reports/analysis_<name>.png.

usage: python stages/analysis.py <memory|outliers>
"""

import sys

from stage_io import args, cache_dir, stage_errors, tracking

from qlora.pipeline.params import load_params
from qlora.pipeline.analysis import plan_analysis as plan

if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 1, usage=__doc__)).run(tracking(), cache_dir())
