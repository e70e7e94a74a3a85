"""MLflow logging for the pipeline (only qlora/pipeline logs; the library returns numbers).

Where runs go is a `Tracking` (URI + experiment) that the entry point resolves (from MLFLOW_TRACKING_URI
and MLFLOW_EXPERIMENT_NAME, MLflow's own variables, or a sqlite file under the user's cache): it is not
a param of the pipeline, so pointing MLflow elsewhere does not invalidate any DVC stage.

One MLflow run per stage item (e.g. "train causal qlora_nf4_dq"), in one experiment per pipeline;
params flattened with dots, scalar metrics and series (loss curves) in batches (one `log_batch` of up
to 1000 metrics instead of one request per value).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class Tracking:
    """An MLflow destination. `uri` empty: log nothing (library tests, dry runs)."""

    uri: str
    experiment: str = "qlora-pipeline"

    def log(self, run_name: str, **kwargs: Any) -> str | None:
        """`log_run` to this destination; None when disabled."""
        return log_run(self.uri, self.experiment, run_name, **kwargs) if self.uri else None


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(getattr(value, "value", value))[:500]


def log_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    series: Mapping[str, Sequence[float]] | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Sequence[str | Path] = (),
) -> str:
    """Logs one finished run; returns its run id."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    flat: dict[str, str] = {}
    _flatten("", params or {}, flat)
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    for key, values in (series or {}).items():
        entries += [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
    param_list = [Param(k, v) for k, v in flat.items()]
    # log_batch takes at most 1000 metrics and 100 params per request
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in (tags or {}).items()])
    for i in range(0, len(param_list), 100):
        client.log_batch(run.info.run_id, params=param_list[i : i + 100])
    for i in range(0, len(entries), _BATCH):
        client.log_batch(run.info.run_id, metrics=entries[i : i + _BATCH])
    for path in artifacts:
        if Path(path).exists():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
