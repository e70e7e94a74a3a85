"""DVC stage `quantize_demo`: every data type on the encoder's real weights (reports/quantization_demo.*).

usage: python stages/quantize_demo.py
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.params import load_params
from qlora.pipeline.demo import plan_quant_demo as plan

if __name__ == "__main__":
    with stage_errors():
        print(plan(load_params(), *args(sys.argv[1:], 0, usage=__doc__)).run(tracking()))
