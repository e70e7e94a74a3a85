"""DVC stages `evaluate_causal@<row>` (each seed), `evaluate_causal_untuned@<quant>`, `evaluate_causal_main`: k-shot
MMLU, RougeL and held-out NLL of a causal row; `evaluate_encoder@<row>`: classification accuracy of an encoder row
(each seed).

usage: python stages/evaluate.py causal <key of ablation.causal>|untuned_<quant>|main
       python stages/evaluate.py encoder <key of ablation.encoder>
"""

import sys

from stage_io import args, stage_errors, tracking

from qlora.pipeline.evaluate import plan_causal_eval, plan_encoder_eval
from qlora.pipeline.params import load_params


def plan(params, role: str, row: str):
    from qlora.checks import ConfigError

    if role == "causal":
        return plan_causal_eval(params, row)
    if role == "encoder":
        return plan_encoder_eval(params, row)
    raise ConfigError("role", role, "causal or encoder")


if __name__ == "__main__":
    with stage_errors():
        plan(load_params(), *args(sys.argv[1:], 2, usage=__doc__)).run(tracking())
