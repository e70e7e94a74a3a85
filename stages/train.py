"""DVC stage `train_<model>@<run>`: fine-tune one ablation row; a killed run resumes when re-run.

usage: python stages/train.py causal|encoder <run name>   (a key of ablation.causal / ablation.encoder)
       python stages/train.py causal main                  (the main QLoRA run: data type `quant`)
Outputs: artifacts/adapters/<model>/<run>/ (PEFT adapter, or a full model for method FULL),
metrics/train/<model>_<run>.json (a TrainRecord), metrics/train/<model>_<run>_loss.csv (plot data).
"""

import dataclasses
import hashlib
import json
import shutil
import sys

from stage_io import ARTIFACTS, METRICS, fingerprint, pipeline_params, tracking_uri, write_atomic, write_json_atomic

from qlora.config import Method, RunSpec
from qlora.data.prepare import CLS_LABELS, CLS_TRAIN, INSTRUCT_TRAIN
from qlora.report.records import dump_records
from qlora.tracking import log_run
from qlora.train.finetune import finetune


def main(which: str, run: str) -> None:
    cfg = pipeline_params()
    if which not in ("causal", "encoder"):
        raise ValueError(f"model must be 'causal' or 'encoder', got {which!r}")
    runs = cfg.ablation.causal if which == "causal" else cfg.ablation.encoder
    main_run = which == "causal" and run == "main"
    if run not in runs and not main_run:
        raise ValueError(f"unknown {which} run {run!r}; expected one of {sorted(runs)} (or 'main' for causal)")
    spec = RunSpec(Method.QLORA, "main") if main_run else runs[run]
    quant = cfg.quant if main_run else cfg.quant_named(spec.quant)
    model_cfg = cfg.causal if which == "causal" else cfg.encoder
    train_cfg = cfg.train if which == "causal" else cfg.train_encoder
    if which == "causal":
        checkpoint, data, num_labels = ARTIFACTS / "quantized" / spec.quant, ARTIFACTS / "data" / INSTRUCT_TRAIN, None
    else:
        checkpoint, data = ARTIFACTS / "models" / "encoder", ARTIFACTS / "data" / CLS_TRAIN
        num_labels = len(json.loads((ARTIFACTS / "data" / CLS_LABELS).read_text())["labels"])
    settings = json.dumps([dataclasses.asdict(train_cfg), dataclasses.asdict(cfg.lora), dataclasses.asdict(quant)], default=str, sort_keys=True)
    # A killed run resumes only into the same run: same settings, same base checkpoint, same data.
    key = hashlib.sha256((settings + fingerprint(checkpoint, data)).encode()).hexdigest()[:12]
    resume = ARTIFACTS / "resume" / f"{which}_{run}" / key
    for stale in resume.parent.glob("*"):  # checkpoints of this stage's earlier, different runs
        if stale != resume:
            shutil.rmtree(stale)
    out = finetune(
        model_name=model_cfg.name, checkpoint=checkpoint, kind=model_cfg.kind, method=spec.method, quant=quant, lora=cfg.lora,
        train_config=train_cfg, data=data, out_dir=ARTIFACTS / "adapters" / which / run, resume_dir=resume, num_labels=num_labels,
    )  # fmt: skip
    shutil.rmtree(resume, ignore_errors=True)  # finished: DVC caches the adapter; the resumable state is no longer needed
    record = out.record
    stem = METRICS / ("main" if main_run else "train") / f"{which}_{run}"
    write_json_atomic(f"{stem}.json", dump_records([record]))
    write_atomic(f"{stem}_loss.csv", "step,loss\n" + "".join(f"{i},{v}\n" for i, v in enumerate(record.losses, start=1)))
    log_run(tracking_uri(cfg), cfg.tracking.experiment, f"train {which} {run}",
            params={"model": model_cfg.name, "method": spec.method.value, "quant": dataclasses.asdict(quant),
                    "lora": dataclasses.asdict(cfg.lora), "train": dataclasses.asdict(train_cfg)},
            metrics={"peak_mb": record.peak_mb, "weight_mb": record.weight_mb, "adapter_mb": record.adapter_mb,
                     "bits_per_param": record.bits_per_param, "tokens_per_s": record.tokens_per_s},
            series={"loss": record.losses}, tags={"stage": "train", "model": which, "run": run})  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
