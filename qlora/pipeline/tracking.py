"""MLflow logging for the pipeline (only qlora/pipeline logs; the library returns numbers).

Where runs go is a `Tracking` (URI + experiment) that the entry point resolves (from MLFLOW_TRACKING_URI
and MLFLOW_EXPERIMENT_NAME, MLflow's own variables, or a sqlite file under the user's cache): it is not
a param of the pipeline, so pointing MLflow elsewhere does not invalidate any DVC stage.

The view that compares data types: every stage of an ablation row (method + data type, e.g. QLoRA on
NF4+DQ; the model, the main run and further base models make rows of their own) nests its run under
one parent run per row, and copies its headline numbers onto that parent under the same names in every
row (`ROW_METRICS`): bits/param and weight MB from `quantize`, perplexity from `evaluate_base`, peak
memory, tokens/s and final loss from training, MMLU and RougeL from `evaluate`, classification accuracy
from the encoder row. Selecting the parent runs in MLflow's compare view puts the data types side by
side. Stages run as separate processes (DVC), so a stage finds its row's parent by a tag and the row's
params (`Row.params`), and creates it when there is none; a row whose params differ (another model,
another block size) gets a parent of its own. Every run carries the same parameter names
(`quant.dtype`, `quant.double_quant`, `quant.block_size`, `method`, `model`).

Metrics go in batches (one `log_batch` of up to 1000 metrics instead of one request per value);
training logs its step metrics while it runs (`LiveRun.on_step`, flushed every few steps or seconds),
so the UI draws the loss curve live. Artifacts go to the experiment's artifact location: for a sqlite
store, a folder beside the database (`artifact_location`), never `./mlruns` of whichever working
directory created the experiment first (a queued DVC experiment's temporary folder).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qlora.config import Method, QuantConfig

_BATCH = 1000
ROW_TAG = "qlora.row"  # the parent run of an ablation row carries its key here
# MLflow's experiment type (the UI's "Model training" vs GenAI): an experiment without it may open on
# an empty Traces tab; "custom_model_development" opens on the runs (mlflow 3.x server/js).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
_EXPLICIT_KINDS = ("custom_model_development", "genai_development", "finetuning", "forecasting", "classification", "regression", "automl")
# the names every row's parent run may hold (the compare view's columns)
ROW_METRICS = ("bits_per_param", "weight_mb", "peak_mb", "tokens_per_s", "final_loss", "perplexity", "mmlu", "rougeL",
               "classification")  # fmt: skip


def quant_params(quant: QuantConfig) -> dict[str, str]:
    """The data type's parameters, under the same names in every stage's MLflow run."""
    return {"quant.dtype": quant.dtype.value, "quant.double_quant": str(quant.double_quant).lower(),
            "quant.block_size": str(quant.block_size), "quant.label": quant.label}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Row:
    """An ablation row: the parent run that a stage's run nests under and copies its headline numbers to.

    Attributes:
        method: how the row's model is obtained (a base evaluated without training belongs to the row of
            the method its data type is trained with: QLoRA for quantized types, LoRA for BF16).
        quant: the row's data type.
        model: the row's model name (causal rows) — the encoder's rows use `encoder_model`; None: not set
            by this stage.
        encoder_model: the encoder's name (classification rows).
        variant: "" for the ablation; "main" for the main run; a base model's key for the further base
            models of Table 2.
    """

    method: Method
    quant: QuantConfig
    model: str | None = None
    encoder_model: str | None = None
    variant: str = ""

    @property
    def key(self) -> str:
        return " ".join(p for p in (self.variant, self.method.value, self.quant.label) if p)

    @property
    def params(self) -> dict[str, str]:
        """What identifies the row: a parent whose params disagree on any of these is another row."""
        out = {"method": self.method.value, **quant_params(self.quant)}
        if self.model is not None:
            out["model"] = self.model
        if self.encoder_model is not None:
            out["encoder_model"] = self.encoder_model
        return out


def base_row(model_key: str, model_name: str, quant_name: str, quant: QuantConfig) -> Row:
    """The row of a stored base (stages quantize, evaluate_base): the row its data type is trained in."""
    from qlora.pipeline import paths
    from qlora.pipeline.config import CAUSAL, main_method

    variant = paths.MAIN if quant_name == paths.MAIN else ("" if model_key == CAUSAL else model_key)
    return Row(main_method(quant), quant, model=model_name, variant=variant)


def stage_row(role: str, run: str, method: Method, quant: QuantConfig, model_name: str, variant: str = "") -> Row:
    """The row of a training or evaluation stage: `run` is a key of ablation.<role>, "main" or "untuned_<quant>"."""
    from qlora.pipeline import paths
    from qlora.pipeline.config import ENCODER

    if role == ENCODER:
        return Row(method, quant, encoder_model=model_name)
    if paths.untuned_quant(run) is not None:
        return Row(Method.NONE, quant, model=model_name)
    return Row(method, quant, model=model_name, variant=paths.MAIN if run == paths.MAIN else variant)


def default_artifact_location(uri: str) -> str:
    """Artifacts beside a sqlite database (`<db folder>/mlflow-artifacts`); "" for a server (it decides)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts").as_uri()
    return ""


def default_tracking(cache_dir: str | Path, uri: str = "", experiment: str = "") -> "Tracking":
    """The entry points' choice: `uri` (MLFLOW_TRACKING_URI), else a sqlite file under `cache_dir`."""
    if not uri:
        db = Path(cache_dir) / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db.resolve()}"
    return Tracking(uri, experiment or "qlora-pipeline")


@dataclasses.dataclass(frozen=True)
class Tracking:
    """An MLflow destination. `uri` empty: log nothing (library tests, dry runs).

    Attributes:
        artifact_location: where a new experiment keeps its artifacts; "" derives it from the URI
            (`default_artifact_location`).
    """

    uri: str
    experiment: str = "qlora-pipeline"
    artifact_location: str = ""

    def _client(self):
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient(self.uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            location = self.artifact_location or default_artifact_location(self.uri) or None
            try:
                return client, client.create_experiment(self.experiment, artifact_location=location,
                                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})  # fmt: skip
            except Exception:  # created meanwhile by a concurrent stage
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.tags.get(EXPERIMENT_KIND_TAG) not in _EXPLICIT_KINDS:  # made before this tag, or only inferred by the UI
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return client, found.experiment_id

    def log(self, run_name: str, *, params: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
            series: Mapping[str, Sequence[float]] | None = None, tags: Mapping[str, str] | None = None,
            artifacts: Sequence[str | Path] = (), row: Row | None = None, row_metrics: Mapping[str, float] | None = None,
            config: Any = None, started: float | None = None) -> str | None:  # fmt: skip
        """Logs one finished stage run (nested under `row`'s parent, `row_metrics` copied onto it); its id.

        Args:
            started: when the stage began (`time.time()`): the run's start time, and its `seconds`.
        """
        if not self.uri:
            return None
        metrics = dict(metrics or {})
        if started is not None:
            metrics.setdefault("seconds", time.time() - started)
        with self.start(run_name, params=params, tags=tags, row=row, config=config, started=started) as run:
            run.finish(metrics=metrics, series=series, artifacts=artifacts, row_metrics=row_metrics)
        return run.run_id

    def start(self, run_name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
              row: Row | None = None, config: Any = None, started: float | None = None,
              run_file: str | Path | None = None) -> "LiveRun":  # fmt: skip
        """A running stage run (a context manager: FINISHED on exit, FAILED on an exception).

        Args:
            params: flattened with dots (`{"quant": {"dtype": ...}}` -> `quant.dtype`).
            row: the ablation row to nest under (its parent is found or created).
            config: the stage's resolved job (a dataclass), logged as the artifact `config.json`.
            started: the stage's start (`time.time()`); None: now.
            run_file: where a resumable job keeps its run id (in its resume folder): a re-run continues
                that run if it did not finish (killed: FAILED, or RUNNING after SIGKILL) and its params
                agree, instead of leaving a duplicate; otherwise a new run's id is written there.
        """
        if not self.uri:
            return LiveRun(None, None, None, None)
        client, experiment_id = self._client()
        parent = _row_run(client, experiment_id, row) if row is not None else None
        flat: dict[str, str] = {}
        _flatten("", params or {}, flat)
        run_id = _unfinished_run(client, experiment_id, run_file, flat) if run_file is not None else None
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            have = client.get_run(run_id).data.params
            live = LiveRun(client, run_id, parent, row, logged_steps=_logged_steps(client, run_id))
            live._params({k: v for k, v in flat.items() if k not in have})
        else:
            all_tags = dict(tags or {})
            if parent is not None:
                all_tags["mlflow.parentRunId"] = parent
            start_ms = int(1000 * (started if started is not None else time.time()))
            run_id = client.create_run(experiment_id, start_time=start_ms, run_name=run_name, tags=all_tags).info.run_id
            live = LiveRun(client, run_id, parent, row)
            live._params(flat)
            if run_file is not None:
                from qlora.atomic import write_json

                write_json(run_file, {"run_id": run_id, "tracking_uri": self.uri, "experiment": self.experiment})
        if config is not None:
            client.log_dict(run_id, _plain(config), "config.json")
        return live

    def log_row(self, row: Row, metrics: Mapping[str, float] | None = None, series: Mapping[str, Sequence[float]] | None = None) -> None:
        """Numbers onto a row's parent run only (e.g. the mean over an encoder row's seeds)."""
        if not self.uri:
            return
        client, experiment_id = self._client()
        LiveRun(client, None, _row_run(client, experiment_id, row), row).finish(row_metrics=metrics, row_series=series)


class LiveRun:
    """A stage run while it works: step metrics buffered and flushed in batches, then `finish`."""

    def __init__(self, client, run_id: str | None, parent_id: str | None, row: Row | None, *, flush_steps: int = 10,
                 flush_seconds: float = 5.0, logged_steps: set[int] = frozenset()) -> None:  # fmt: skip
        """logged_steps: the steps a continued run logged before it was killed (not logged twice)."""
        self.client, self.run_id, self.parent_id, self.row = client, run_id, parent_id, row
        self.flush_steps, self.flush_seconds = flush_steps, flush_seconds
        self._pending: list = []
        self._before = set(logged_steps)
        self._steps: set[int] = set(logged_steps)
        self._last_flush = time.monotonic()

    @property
    def continued(self) -> bool:
        """Whether this run continues one that a killed process started."""
        return bool(self._before)

    def __enter__(self) -> "LiveRun":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if self.client is None or self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, "FAILED" if kind is not None else "FINISHED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """More params (flattened as `Tracking.start`'s), e.g. what is known only at the end."""
        if self.client is None or self.run_id is None:
            return
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        have = self.client.get_run(self.run_id).data.params
        self._params({k: v for k, v in flat.items() if k not in have})

    def _params(self, flat: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per request
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def on_step(self, metrics) -> None:
        """The trainer's `on_step` callback: loss, lr, grad norm, tokens/s and memory of one step."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        if metrics.step in self._before:  # logged by the killed process this run continues
            return
        now = int(time.time() * 1000)
        values = {"loss": metrics.loss, "lr": metrics.lr, "grad_norm": metrics.grad_norm, "step_tokens_per_s": metrics.tokens_per_s,
                  "step_peak_mb": metrics.memory.peak / 2**20}  # fmt: skip
        self._pending += [Metric(k, float(v), now, metrics.step) for k, v in values.items()]
        self._steps.add(metrics.step)
        if len(self._steps) % self.flush_steps == 0 or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.client is None or not self._pending:
            return
        for i in range(0, len(self._pending), _BATCH):
            self.client.log_batch(self.run_id, metrics=self._pending[i : i + _BATCH])
        self._pending = []
        self._last_flush = time.monotonic()

    def finish(self, *, metrics: Mapping[str, float] | None = None, series: Mapping[str, Sequence[float]] | None = None,
               artifacts: Sequence[str | Path] = (), row_metrics: Mapping[str, float] | None = None,
               row_series: Mapping[str, Sequence[float]] | None = None) -> None:  # fmt: skip
        """The stage's final numbers (series steps already logged live are skipped) and artifacts, and the
        row's headline numbers onto its parent."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if self.run_id is not None:
            self._pending += [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
            for key, values in (series or {}).items():
                self._pending += [Metric(key, float(v), now, s) for s, v in enumerate(values, start=1) if s not in self._steps]
            self.flush()
            for path in artifacts:
                path = Path(path)
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), path.name)
                elif path.exists():
                    self.client.log_artifact(self.run_id, str(path))
        if self.parent_id is not None and (row_metrics or row_series):
            entries = [Metric(k, float(v), now, 0) for k, v in (row_metrics or {}).items()]
            for key, values in (row_series or {}).items():
                entries += [Metric(key, float(v), now, s) for s, v in enumerate(values, start=1)]
            for i in range(0, len(entries), _BATCH):
                self.client.log_batch(self.parent_id, metrics=entries[i : i + _BATCH])
            self.client.set_terminated(self.parent_id, "FINISHED")  # end time: the row's latest stage


def _unfinished_run(client, experiment_id: str, run_file: str | Path, params: Mapping[str, str]) -> str | None:
    """The run id in `run_file` if that run may be continued: in this experiment, not FINISHED, and no
    param differs from `params` (MLflow params cannot change); else None."""
    import json

    try:
        run_id = json.loads(Path(run_file).read_text())["run_id"]
        run = client.get_run(run_id)
    except Exception:  # no file, a bad file, or a run this store does not have
        return None
    if run.info.experiment_id != experiment_id or run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
        return None
    have = run.data.params
    return run_id if all(have.get(k, v) == v for k, v in params.items()) else None


def _logged_steps(client, run_id: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, "loss")}


def _row_run(client, experiment_id: str, row: Row) -> str:
    """The latest parent run of `row` whose params agree with the row's (absent ones are added), or a new one."""
    from mlflow.entities import Param

    wanted = row.params
    found = client.search_runs([experiment_id], filter_string=f"tags.`{ROW_TAG}` = '{row.key}'",
                               order_by=["attributes.start_time DESC"], max_results=100)  # fmt: skip
    for run in found:
        have = run.data.params
        if all(have.get(k, v) == v for k, v in wanted.items()):
            missing = [Param(k, v) for k, v in wanted.items() if k not in have]
            if missing:
                client.log_batch(run.info.run_id, params=missing)
            return run.info.run_id
    run = client.create_run(experiment_id, run_name=row.key, tags={ROW_TAG: row.key})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in wanted.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool):
        out[prefix] = str(value).lower()
    else:
        out[prefix] = str(getattr(value, "value", value))[:500]


def _plain(value: Any) -> Any:
    """A job (dataclasses, enums, paths, tuples) as JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    return value


def log_run(tracking_uri: str, experiment: str, run_name: str, **kwargs: Any) -> str | None:
    """Logs one finished run to `tracking_uri` (see `Tracking.log`); returns its run id."""
    return Tracking(tracking_uri, experiment).log(run_name, **kwargs)
