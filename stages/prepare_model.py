"""DVC stage `prepare_model@<key>`: a base model (`models.<key>`) as a plain safetensors folder.

usage: python stages/prepare_model.py <key of models>
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.params import load_params
from qlora.pipeline.models import plan_prepare_model as plan

if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 1, usage=__doc__)).run(tracking())
