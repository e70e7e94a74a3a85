"""DVC stages `train_causal@<row>`, `train_causal_main`, `train_encoder@<row>` (once per seed of
ablation.encoder_seeds): fine-tune one row; a killed run resumes from its last checkpoint when re-run.

usage: python stages/train.py causal|encoder <key of ablation.causal / ablation.encoder>
       python stages/train.py causal main
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.finetune import plan_train as plan
from qlora.pipeline.params import load_params


if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 2, usage=__doc__)).run(tracking())
