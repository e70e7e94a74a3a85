"""DVC stage `evaluate_base@<model>-<quant>`: a base model stored as one data type, without training —
perplexity on held-out text (Table 2) and zero-shot MMLU.

usage: python stages/evaluate_base.py <key of models> <key of quants>
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.evaluate import plan_base_eval as plan
from qlora.pipeline.params import load_params

if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 2, usage=__doc__)).run(tracking())
