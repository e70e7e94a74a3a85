"""DVC stage `report`: Tables 2, 3, 4, memory (markdown + CSV), plots and metrics/summary.json.

usage: python stages/report.py
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.params import load_params
from qlora.pipeline.report import plan_report as plan

if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 0, usage=__doc__)).run(tracking())
