"""Hydra app: one QLoRA run of the composed config per job — for Hydra multirun sweeps.

    .venv/bin/python stages/sweep.py -m quant=nf4_dq,fp4,int8
    .venv/bin/python stages/sweep.py -m hydra/launcher=local_joblib quant=nf4_dq,fp4   # 2 jobs at once
    .venv/bin/python stages/sweep.py -m hydra/launcher=slurm train.nproc_per_node=8 quant=nf4_dq,fp4  # SLURM

Each job quantizes the prepared causal base (`dvc repro prepare_data` first) to `quant`, trains the
main run with `lora`/`train`, evaluates it with `eval`, and writes train.json, metrics.json and
items.json into its Hydra output folder (multirun/DATE/TIME/N/); every job is an MLflow run too.
A job whose config is refused removes its output folder if Hydra made it for the job (it holds only
Hydra's files), never a folder that holds anything else (`hydra.run.dir=.`: the working copy).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from stage_io import stage_errors, tracking

from qlora.pipeline.params import load_params, pipeline_config
from qlora.pipeline.sweep import plan_sweep, remove_refused_job_dir

TRAIN_STAGE = Path(__file__).resolve().with_name("train.py")  # runs one training rank of a job file


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(raw: DictConfig) -> None:
    config = hydra.core.hydra_config.HydraConfig.get()
    out = Path(config.runtime.output_dir)
    try:
        with stage_errors():
            job = plan_sweep(pipeline_config(OmegaConf.to_container(raw, resolve=True)), load_params(), out)
    except SystemExit:
        remove_refused_job_dir(out, config.job.name)
        raise
    job.run(tracking(), worker=TRAIN_STAGE)  # train.nproc_per_node > 1: torchrun starts its ranks


if __name__ == "__main__":
    main()
