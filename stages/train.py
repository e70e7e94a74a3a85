"""DVC stages `train_causal@<row>`, `train_encoder@<row>` (once per seed of ablation.causal_seeds /
ablation.encoder_seeds), `train_causal_main`: fine-tune one row; a killed run resumes from its last checkpoint when re-run.
With train.nproc_per_node > 1 the row runs as that many ranks (torchrun starts this file with --job).

usage: python stages/train.py causal|encoder <key of ablation.causal / ablation.encoder>
       python stages/train.py causal main
       python stages/train.py --job <launch/job.json>   (one rank of a multi-process run)
"""

import sys
from pathlib import Path

from stage_io import args, stage_errors, tracking

from qlora.pipeline.finetune import plan_train as plan
from qlora.pipeline.params import load_params


if __name__ == "__main__":
    with stage_errors():
        argv = args(sys.argv[1:], 2, usage=__doc__)
        if argv[0] == "--job":
            from qlora.pipeline.ranks import run_job_file

            run_job_file(argv[1])
        else:
            plan(load_params(), *argv).run(tracking(), worker=Path(__file__))
