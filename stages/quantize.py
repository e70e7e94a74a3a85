"""DVC stage `quantize@<model>-<quant>` / `quantize_main`: a base model stored as one data type.

usage: python stages/quantize.py <key of models> <key of quants>
       python stages/quantize.py causal main      (the main run's data type `quant`)
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.params import load_params
from qlora.pipeline.quantize import plan_quantize as plan

if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 2, usage=__doc__)).run(tracking())
