"""One job of a Hydra multirun sweep: quantize the prepared causal base to `quant`, train the main QLoRA
run with `train`/`lora`, evaluate it with `eval`; everything inside the job's own output folder.

The sweep reuses the artifacts that `dvc repro prepare_data` made from params.yaml (the base model and
the token files), so it refuses overrides of what those were made from (the models, `data`): those
belong to a DVC experiment (`dvc exp run -S ...`), which re-runs the preparation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.checks import ConfigError
from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, PipelineConfig, main_method
from qlora.pipeline.evaluate import CausalEvalJob
from qlora.pipeline.finetune import TrainJob
from qlora.pipeline.quantize import QuantizeJob
from qlora.pipeline.tracking import Tracking


@dataclasses.dataclass(frozen=True)
class SweepJob:
    quantize: QuantizeJob
    train: TrainJob
    evaluate: CausalEvalJob
    out: Path

    def run(self, tracking: Tracking, *, progress: bool = True, worker: Path | None = None) -> list:
        """worker: the entry point that runs one training rank (stages/train.py), for train.nproc_per_node > 1."""
        from qlora.models.loading import quantize_checkpoint

        q = self.quantize
        quantize_checkpoint(paths.model_dir(CAUSAL), q.model.kind, q.quant, self.train.checkpoint)
        self.train.run(tracking, progress=progress, worker=worker)
        return self.evaluate.run(tracking, progress=progress)


def plan_sweep(job: PipelineConfig, prepared: PipelineConfig, out: Path) -> SweepJob:
    """The sweep job for the Hydra-composed `job`, checked against `prepared` (params.yaml).

    Raises:
        ConfigError: the job changes a setting that the prepared artifacts were made with, or those
            artifacts are missing.
    """
    from qlora.data.prepared import INSTRUCT_TRAIN

    for key in ("models", "data"):
        if getattr(job, key) != getattr(prepared, key):
            differ = _diff(getattr(prepared, key), getattr(job, key), key)
            raise ConfigError(differ[0], differ[1], f"{differ[2]!r} as in params.yaml: the sweep trains on the artifacts "
                              "prepared from params.yaml; change models or data with `dvc exp run -S ...` instead")  # fmt: skip
    if not (paths.data_dir() / INSTRUCT_TRAIN).exists():
        raise ConfigError("data", str(paths.data_dir()), "prepared token files: run `dvc repro prepare_data` first")
    model = job.models[CAUSAL]
    quant = job.quant
    method = main_method(quant)
    checkpoint = out / "quantized"
    train = TrainJob(CAUSAL, paths.MAIN, model.name, model.kind, method, quant, job.lora, job.train, checkpoint,
                     paths.data_dir() / INSTRUCT_TRAIN, out_dir=out / "adapter", resume_root=out / "resume",
                     metrics_path=out / "train.json", loss_path=out / "loss.csv", base_reference=model.reference)  # fmt: skip
    evaluate = CausalEvalJob(paths.MAIN, model.name, method, quant, job.eval, checkpoint, out / "adapter", out / "metrics.json",
                             out / "items")  # fmt: skip
    return SweepJob(QuantizeJob(CAUSAL, model, paths.MAIN, quant), train, evaluate, out)


def remove_refused_job_dir(out: Path, job_name: str) -> bool:
    """Removes a refused job's output folder only if Hydra made it for this job: it holds nothing but
    what Hydra writes before a job runs (`.hydra/`, `<job_name>.log`). A folder holding anything else —
    `hydra.run.dir=.` makes it the working copy — is left as it is.

    Returns:
        Whether the folder was removed.
    """
    import shutil

    if not out.is_dir() or out.is_symlink():
        return False
    if any(p.name not in (".hydra", f"{job_name}.log") for p in out.iterdir()):
        return False
    shutil.rmtree(out)
    return True


def _diff(a, b, key: str) -> tuple[str, object, object]:
    """(dotted key, the job's value, params.yaml's value) of the first difference."""
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                return _diff(getattr(a, f.name), getattr(b, f.name), f"{key}.{f.name}")
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                if k in a and k in b:
                    return _diff(a[k], b[k], f"{key}.{k}")
                return f"{key}.{k}", b.get(k), a.get(k)
    return key, getattr(b, "value", b), getattr(a, "value", a)
