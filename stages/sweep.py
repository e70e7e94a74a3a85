"""Hydra app: one QLoRA run of the composed config per job — for Hydra multirun sweeps.

    .venv/bin/python stages/sweep.py -m quant=nf4_dq,fp4,int8

Each job quantizes the prepared causal base (`dvc repro prepare_data` first) to `quant`, trains the
adapters with `train`, evaluates MMLU k-shot with `eval`, and writes metrics.json (EvalRecord and
TrainRecord) into its Hydra output folder (multirun/DATE/TIME/N/); every job is an MLflow run too.
"""

import dataclasses
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from stage_io import ARTIFACTS, tracking_uri, write_json_atomic
from transformers import AutoTokenizer

from qlora.config import Method, ModelKind
from qlora.config_store import pipeline_config
from qlora.data.mmlu import load_fewshot_pool, load_mmlu
from qlora.data.prepare import INSTRUCT_TRAIN
from qlora.eval.mmlu import evaluate_mmlu
from qlora.models.loading import load_adapter_into, load_for_training, quantize_checkpoint
from qlora.models.peft_format import load_peft_adapter
from qlora.report.records import EvalRecord, dump_records
from qlora.tracking import log_run
from qlora.train.finetune import finetune

ROOT = Path(__file__).resolve().parent.parent


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(raw: DictConfig) -> None:
    cfg = pipeline_config(OmegaConf.to_container(raw, resolve=True))
    out = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    artifacts = ROOT / ARTIFACTS
    if not (artifacts / "data" / INSTRUCT_TRAIN).exists():
        raise FileNotFoundError(f"{artifacts / 'data'} is missing: run `dvc repro prepare_data` first")
    label = cfg.quant.label
    qdir = quantize_checkpoint(artifacts / "models" / "causal", ModelKind.CAUSAL_LM, cfg.quant, out / "quantized")
    trained = finetune(model_name=cfg.causal.name, checkpoint=qdir, kind=ModelKind.CAUSAL_LM, method=Method.QLORA, quant=cfg.quant,
                       lora=cfg.lora, train_config=cfg.train, data=artifacts / "data" / INSTRUCT_TRAIN, out_dir=out / "adapter",
                       resume_dir=out / "resume")  # fmt: skip
    model = load_for_training(qdir, ModelKind.CAUSAL_LM, cfg.quant, cfg.lora)
    load_adapter_into(model, load_peft_adapter(out / "adapter"))
    mmlu = evaluate_mmlu(model.eval(), AutoTokenizer.from_pretrained(qdir), load_mmlu(), load_fewshot_pool(), k=cfg.eval.mmlu_shots,
                         limit=cfg.eval.mmlu_questions or None, seed=cfg.eval.seed, batch_size=cfg.eval.batch_size)  # fmt: skip
    record = EvalRecord("mmlu", cfg.causal.name, label, Method.QLORA, "MMLU test (5-shot)", mmlu.value, mmlu.n, mmlu.ci_low, mmlu.ci_high)
    write_json_atomic(out / "metrics.json", dump_records([record, trained.record]))
    log_run(tracking_uri(cfg), cfg.tracking.experiment, f"sweep {label}", params={"quant": dataclasses.asdict(cfg.quant)},
            metrics={"mmlu": mmlu.value, "peak_mb": trained.record.peak_mb}, series={"loss": trained.record.losses},
            tags={"stage": "sweep", "job": os.path.basename(out)})  # fmt: skip


if __name__ == "__main__":
    main()
