"""DVC stage `evaluate_<model>@<run>`: the trained (or untuned) model on its tasks.

usage: python stages/evaluate.py causal <run>|untuned|main   (MMLU k-shot + RougeL on held-out NI subtasks)
       python stages/evaluate.py encoder <run>           (classification accuracy)
"""

import dataclasses
import json
import sys

from stage_io import ARTIFACTS, METRICS, pipeline_params, tracking_uri, write_json_atomic
from transformers import AutoTokenizer

from qlora.config import Method, ModelKind, RunSpec
from qlora.data.mmlu import load_fewshot_pool, load_mmlu
from qlora.data.prepare import CLS_LABELS, CLS_TEST, INSTRUCT_TEST
from qlora.data.tokenization import TokenizedDataset
from qlora.eval.batches import pad_id
from qlora.eval.classification import evaluate_classification
from qlora.eval.mmlu import evaluate_mmlu
from qlora.eval.rouge import evaluate_rouge
from qlora.models.loading import load_adapter_into, load_base, load_for_training
from qlora.models.peft_format import load_peft_adapter
from qlora.report.records import EvalRecord, dump_records
from qlora.tracking import log_run


def _record(task, model_name, spec: RunSpec, dataset, result) -> EvalRecord:
    return EvalRecord(task, model_name, spec.quant, spec.method, dataset, result.value, result.n, result.ci_low, result.ci_high)


def main(which: str, run: str) -> None:
    cfg = pipeline_params()
    ev = cfg.eval
    if which == "causal":
        if run == "main":
            spec, quant = RunSpec(Method.QLORA, "main"), cfg.quant
        else:
            spec = RunSpec(Method.NONE, "bf16") if run == "untuned" else cfg.ablation.causal[run]
            quant = cfg.quant_named(spec.quant)
        checkpoint = ARTIFACTS / "quantized" / spec.quant
        lora = None if spec.method is Method.NONE else cfg.lora
        model = load_for_training(checkpoint, ModelKind.CAUSAL_LM, quant, lora)
        if lora is not None:
            load_adapter_into(model, load_peft_adapter(ARTIFACTS / "adapters" / "causal" / run))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        mmlu = evaluate_mmlu(model, tokenizer, load_mmlu(), load_fewshot_pool(), k=ev.mmlu_shots,
                             limit=ev.mmlu_questions or None, seed=ev.seed, batch_size=ev.batch_size)  # fmt: skip
        test = json.loads((ARTIFACTS / "data" / INSTRUCT_TEST).read_text())["examples"][: ev.rouge_examples]
        rouge = evaluate_rouge(model, tokenizer, [t["prompt"] for t in test], [t["references"] for t in test],
                               max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, groups=[t["subtask"] for t in test])  # fmt: skip
        records = [_record("mmlu", cfg.causal.name, spec, "MMLU test (5-shot)", mmlu),
                   _record("rougeL", cfg.causal.name, spec, "Natural Instructions held-out subtasks", rouge)]  # fmt: skip
    elif which == "encoder":
        spec = cfg.ablation.encoder[run]
        labels = json.loads((ARTIFACTS / "data" / CLS_LABELS).read_text())
        adapter_dir = ARTIFACTS / "adapters" / "encoder" / run
        if spec.method is Method.FULL:
            model = load_base(adapter_dir, ModelKind.SEQ_CLS, num_labels=len(labels["labels"]))
        else:
            model = load_for_training(ARTIFACTS / "models" / "encoder", ModelKind.SEQ_CLS, cfg.quant_named(spec.quant), cfg.lora,
                                      num_labels=len(labels["labels"]))  # fmt: skip
            load_adapter_into(model, load_peft_adapter(adapter_dir))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(ARTIFACTS / "models" / "encoder")
        result = evaluate_classification(model, TokenizedDataset.load(ARTIFACTS / "data" / CLS_TEST), pad_token_id=pad_id(tokenizer),
                                         batch_size=ev.batch_size * 4)  # fmt: skip
        records = [_record("classification", cfg.encoder.name, spec, labels["task"], result)]
    else:
        raise ValueError(f"model must be 'causal' or 'encoder', got {which!r}")
    target = METRICS / "main" / f"eval_{which}_main.json" if run == "main" else METRICS / "eval" / f"{which}_{run}.json"
    write_json_atomic(target, dump_records(records))
    log_run(tracking_uri(cfg), cfg.tracking.experiment, f"evaluate {which} {run}",
            params={"method": spec.method.value, "quant": spec.quant, "eval": dataclasses.asdict(ev)},
            metrics={f"{r.task}": r.value for r in records} | {f"{r.task}_n": r.n for r in records},
            tags={"stage": "evaluate", "model": which, "run": run})  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
