"""A pipeline training job on N ranks: written to a job file, run by torchrun, one rank per process.

`TrainJob.run` with `train.nproc_per_node` > 1 calls `launch_job`: the job (and where MLflow logs) goes
to `<resume folder>/launch/job.json`, and torchrun starts `worker --job <file>` N times (stages/train.py:
a stage's entry point, since only entry points read argv); each rank calls `run_job_file`, which
runs the same `TrainJob.run` under the process group (FSDP2, `qlora.distributed`). Rank 0 writes the
outputs, logs to MLflow and leaves its `TrainRecord` in launch/record.json, which the launching
process returns. A failed or killed rank fails the launch (`RanksFailed`); the checkpoints stay, so
re-running resumes. Any job — a DVC stage's, a Hydra sweep's, a SLURM job's — launches the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import shutil
from pathlib import Path
from typing import Any

from qlora.checks import ConfigError
from qlora.pipeline.finetune import FinetuneResult, TrainJob
from qlora.pipeline.tracking import Tracking

LAUNCH_DIR = "launch"  # inside the job's resume folder
JOB_FILE = "job.json"
RECORD_FILE = "record.json"


def _plain(value: Any) -> Any:
    """JSON data of a job field: enums by name, paths as strings, dataclasses as dicts."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def job_to_json(job: TrainJob, tracking: Tracking) -> dict:
    return {"job": _plain(job), "tracking": {"uri": tracking.uri, "experiment": tracking.experiment}}


def job_from_json(data: dict) -> tuple[TrainJob, Tracking]:
    """The TrainJob and Tracking of `job_to_json`, every field validated as params are.

    Raises:
        ConfigError: a missing or invalid field, named as `job.<field>`.
    """
    import typing

    from qlora.pipeline.params import build

    if not isinstance(data, dict) or not isinstance(data.get("job"), dict) or not isinstance(data.get("tracking"), dict):
        raise ConfigError("job file", type(data).__name__, "an object with 'job' and 'tracking'")
    raw, hints, fields = data["job"], typing.get_type_hints(TrainJob), {}
    for f in dataclasses.fields(TrainJob):
        key = f"job.{f.name}"
        if f.name not in raw:
            raise ConfigError(key, None, "a value: the key is missing")
        value, kind = raw[f.name], hints[f.name]
        if kind is Path or Path in typing.get_args(kind):  # Path, or Path | None
            fields[f.name] = None if value is None else Path(value)
        else:
            fields[f.name] = build(kind, value, key)
    tracking = data["tracking"]
    return TrainJob(**fields), Tracking(str(tracking.get("uri", "")), str(tracking.get("experiment", "qlora-pipeline")))


def launch_job(job: TrainJob, tracking: Tracking, worker: str | Path | None, resume: Path) -> FinetuneResult:
    """Runs `job` on `job.train.nproc_per_node` ranks of this machine; returns rank 0's record (no
    TrainResult: the steps ran in other processes).

    Raises:
        ConfigError: no worker entry point to launch.
        RanksFailed: a rank failed or was killed.
    """
    from qlora.atomic import write_json
    from qlora.distributed.launch import launch
    from qlora.report.records import load_records

    n = job.train.nproc_per_node
    if worker is None:
        raise ConfigError("train.nproc_per_node", n, "1 here: this entry point cannot start ranks; run the training through "
                          "stages/train.py, or under `python -m torch.distributed.run --nproc_per_node N` yourself")  # fmt: skip
    folder = resume / LAUNCH_DIR
    shutil.rmtree(folder, ignore_errors=True)
    write_json(folder / JOB_FILE, job_to_json(job, tracking))
    launch(n, worker, ["--job", str(folder / JOB_FILE)])
    _, records = load_records([folder / RECORD_FILE])
    shutil.rmtree(folder, ignore_errors=True)
    return FinetuneResult(records[0], None)


def run_job_file(path: str | Path, *, progress: bool = True) -> None:
    """One rank's part of a launched job (the worker entry point calls this, under torchrun).

    Raises:
        FileNotFoundError: no such job file. ConfigError: the file does not hold a valid job.
    """
    from qlora.atomic import write_json
    from qlora.readers import read_json
    from qlora.report.records import dump_records

    path = Path(path)
    job, tracking = job_from_json(read_json(path, "training job"))
    out = job.run(tracking, progress=progress)
    if out.record is not None and _is_main():
        write_json(path.parent / RECORD_FILE, dump_records([out.record]))


def _is_main() -> bool:
    from qlora.distributed.world import current_world

    world = current_world()
    return world is None or world.is_main
