"""DVC stage `perplexity@<quant>`: perplexity of the causal base stored as one data type (Table 2).

usage: python stages/perplexity.py <quant name>
"""

import dataclasses
import sys

from safetensors.torch import load_file
from stage_io import ARTIFACTS, METRICS, pipeline_params, tracking_uri, write_json_atomic

from qlora.config import Method
from qlora.data.prepare import PERPLEXITY
from qlora.eval.perplexity import evaluate_perplexity
from qlora.models.loading import load_for_training
from qlora.report.records import EvalRecord, dump_records
from qlora.tracking import log_run


def main(name: str) -> None:
    cfg = pipeline_params()
    quant = cfg.quant_named(name)
    model = load_for_training(ARTIFACTS / "quantized" / name, cfg.causal.kind, quant, None).eval()
    windows = load_file(str(ARTIFACTS / "data" / PERPLEXITY))["input_ids"].long()
    result = evaluate_perplexity(model, windows, batch_size=cfg.eval.batch_size)
    record = EvalRecord("perplexity", cfg.causal.name, name, Method.NONE, "MMLU question stems", result.value, result.n,
                        result.ci_low, result.ci_high)  # fmt: skip
    write_json_atomic(METRICS / "perplexity" / f"{name}.json", dump_records([record]))
    log_run(tracking_uri(cfg), cfg.tracking.experiment, f"perplexity {name}", params={"quant": dataclasses.asdict(quant)},
            metrics={"perplexity": result.value, "tokens": result.n}, tags={"stage": "perplexity", "quant": name})  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
