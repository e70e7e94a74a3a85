"""MLflow logging: stage runs nested under one parent run per ablation row, the same parameter names in
every stage, live step metrics in batches, artifacts beside the sqlite database (never ./mlruns)."""

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from qlora.config import Method, QuantConfig
from qlora.pipeline.tracking import ROW_TAG, Row, Tracking, base_row, default_artifact_location, default_tracking, log_run, stage_row

NF4_DQ = QuantConfig("nf4", True)
BF16 = QuantConfig("bf16", False)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An MLflow sqlite database with its tables (creating them takes ~7 s; copying the file, nothing)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking(tmp_path, monkeypatch, empty_db):
    (tmp_path / "work").mkdir()
    (tmp_path / "db").mkdir()
    shutil.copy(empty_db, tmp_path / "db" / "mlflow.db")
    monkeypatch.chdir(tmp_path / "work")
    return Tracking(f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}", "qlora-test")


def _runs(t: Tracking):
    client = mlflow.MlflowClient(t.uri)
    exp = client.get_experiment_by_name(t.experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_log_run_writes_params_metrics_and_series(tracking):
    run_id = log_run(tracking.uri, "qlora-test", "train nf4_dq", params={"quant": {"dtype": "NF4", "block_size": 64}, "paged": True},
                     metrics={"peak_mb": 123.0}, series={"loss": [3.0, 2.0, 1.5]}, tags={"stage": "train"})  # fmt: skip
    client = mlflow.MlflowClient(tracking.uri)
    run = client.get_run(run_id)
    assert run.data.params == {"quant.dtype": "NF4", "quant.block_size": "64", "paged": "true"}
    assert run.data.metrics["peak_mb"] == 123.0
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert run.data.tags["stage"] == "train" and run.info.status == "FINISHED"


def test_stages_of_a_row_share_one_parent_with_the_same_param_names(tracking):
    model = "tiny-llama"
    q = tracking.log("quantize causal nf4_dq", params={"model": model}, row=base_row("causal", model, "nf4_dq", NF4_DQ),
                     metrics={"bits_per_param": 4.127}, row_metrics={"bits_per_param": 4.127, "weight_mb": 1.5})  # fmt: skip
    e = tracking.log("evaluate causal qlora_nf4_dq", row=stage_row("causal", "qlora_nf4_dq", Method.QLORA, NF4_DQ, model),
                     row_metrics={"mmlu": 0.25, "rougeL": 0.1})  # fmt: skip
    c = tracking.log("evaluate encoder qlora_nf4_dq", row=stage_row("encoder", "qlora_nf4_dq", Method.QLORA, NF4_DQ, "tiny-bert"),
                     row_metrics={"classification": 0.5})  # fmt: skip
    client, runs = _runs(tracking)
    parents = [r for r in runs if ROW_TAG in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "qlora nf4_dq" and parent.info.status == "FINISHED"
    assert parent.data.params == {"method": "qlora", "quant.dtype": "nf4", "quant.double_quant": "true", "quant.block_size": "64",
                                  "quant.label": "nf4_dq", "model": model, "encoder_model": "tiny-bert"}  # fmt: skip
    assert parent.data.metrics == {"bits_per_param": 4.127, "weight_mb": 1.5, "mmlu": 0.25, "rougeL": 0.1, "classification": 0.5}
    for child in (q, e, c):
        assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_rows_differ_by_method_data_type_model_and_variant(tracking):
    tracking.log("a", row=stage_row("causal", "lora_bf16", Method.LORA, BF16, "m1"), row_metrics={"mmlu": 0.3})
    tracking.log("b", row=stage_row("causal", "untuned", Method.NONE, BF16, "m1"), row_metrics={"mmlu": 0.2})
    tracking.log("c", row=stage_row("causal", "main", Method.LORA, BF16, "m1"), row_metrics={"mmlu": 0.4})
    tracking.log("d", row=stage_row("causal", "lora_bf16", Method.LORA, BF16, "m2"), row_metrics={"mmlu": 0.5})  # another model
    tracking.log("e", row=Row(Method.LORA, dataclasses.replace(BF16, block_size=128), model="m1"), row_metrics={"mmlu": 0.6})
    tracking.log("f", row=base_row("gemma", "m3", "bf16", BF16), row_metrics={"perplexity": 9.0})
    tracking.log("g", row=stage_row("causal", "lora_bf16", Method.LORA, BF16, "m1"), row_metrics={"mmlu": 0.35})  # a re-run
    _, runs = _runs(tracking)
    parents = {(r.info.run_name, r.data.params.get("model"), r.data.params["quant.block_size"]): r.data.metrics
               for r in runs if ROW_TAG in r.data.tags}  # fmt: skip
    assert parents == {("lora bf16", "m1", "64"): {"mmlu": 0.35}, ("none bf16", "m1", "64"): {"mmlu": 0.2},
                       ("main lora bf16", "m1", "64"): {"mmlu": 0.4}, ("lora bf16", "m2", "64"): {"mmlu": 0.5},
                       ("lora bf16", "m1", "128"): {"mmlu": 0.6}, ("gemma lora bf16", "m3", "64"): {"perplexity": 9.0}}  # fmt: skip


def test_training_logs_step_metrics_while_it_runs(tracking):
    client = mlflow.MlflowClient(tracking.uri)
    memory = SimpleNamespace(peak=100 * 2**20)
    row = stage_row("causal", "qlora_nf4_dq", Method.QLORA, NF4_DQ, "m")
    with tracking.start("train causal qlora_nf4_dq", row=row, params={"train": {"lr": 1e-3}}, config={"max_steps": 25}) as live:
        for step in range(1, 13):
            live.on_step(SimpleNamespace(step=step, loss=3.0 - 0.1 * step, lr=1e-3, grad_norm=0.5, tokens_per_s=1000.0, memory=memory))
        during = client.get_metric_history(live.run_id, "loss")
        assert [m.step for m in during] == list(range(1, 11))  # flushed after 10 steps, before the run ends
        assert client.get_run(live.run_id).info.status == "RUNNING"
        live.finish(metrics={"final_loss": 1.8}, series={"loss": [3.0 - 0.1 * s for s in range(1, 13)]}, row_metrics={"final_loss": 1.8})
    after = client.get_metric_history(live.run_id, "loss")
    assert [m.step for m in sorted(after, key=lambda m: m.step)] == list(range(1, 13))  # no duplicates from the series
    run = client.get_run(live.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert {"lr", "grad_norm", "step_tokens_per_s", "step_peak_mb"} <= set(run.data.metrics)
    config = Path(mlflow.artifacts.download_artifacts(run_id=live.run_id, artifact_path="config.json", tracking_uri=tracking.uri))
    assert json.loads(config.read_text()) == {"max_steps": 25}


def test_a_failing_stage_ends_failed(tracking):
    with pytest.raises(RuntimeError):
        with tracking.start("train x") as live:
            raise RuntimeError("killed")
    assert mlflow.MlflowClient(tracking.uri).get_run(live.run_id).info.status == "FAILED"


def test_artifacts_go_beside_the_database_not_to_the_working_directory(tracking, tmp_path):
    artifact = tmp_path / "table2.md"
    artifact.write_text("| a |\n")
    run_id = tracking.log("report", artifacts=[artifact])
    exp = mlflow.MlflowClient(tracking.uri).get_experiment_by_name("qlora-test")
    assert exp.artifact_location == (tmp_path / "db" / "mlflow-artifacts").as_uri()
    assert list((tmp_path / "db" / "mlflow-artifacts").rglob("table2.md"))
    assert not (Path.cwd() / "mlruns").exists() and not (Path.cwd() / "mlartifacts").exists()
    assert run_id


def test_default_tracking_is_sqlite_under_the_cache(tmp_path):
    t = default_tracking(tmp_path / "cache")
    assert t.uri == f"sqlite:///{(tmp_path / 'cache' / 'mlflow.db').resolve()}" and t.experiment == "qlora-pipeline"
    assert default_tracking(tmp_path, "http://127.0.0.1:5000", "mine") == Tracking("http://127.0.0.1:5000", "mine")
    assert default_artifact_location("http://127.0.0.1:5000") == ""
    assert Tracking("").log("nothing", metrics={"a": 1.0}) is None  # disabled: no MLflow at all


def test_experiments_are_model_training_experiments(tracking):
    """MLflow's UI opens an experiment by its type: without the tag it may show an empty GenAI Traces tab."""
    from qlora.pipeline.tracking import EXPERIMENT_KIND_TAG

    tracking.log("a run")
    client = mlflow.MlflowClient(tracking.uri)
    assert client.get_experiment_by_name(tracking.experiment).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("made-before")  # an experiment of an earlier version: tagged when next logged to
    client.set_experiment_tag(old, EXPERIMENT_KIND_TAG, "genai_development_inferred")
    Tracking(tracking.uri, "made-before").log("a run")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(old, EXPERIMENT_KIND_TAG, "genai_development")  # the user's explicit choice stays
    Tracking(tracking.uri, "made-before").log("another run")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def _step(step: int, loss: float):
    memory = SimpleNamespace(peak=2**20)
    return SimpleNamespace(step=step, loss=loss, lr=1e-3, grad_norm=1.0, tokens_per_s=10.0, memory=memory)


def test_a_killed_run_is_continued_not_duplicated(tracking, tmp_path):
    run_file = tmp_path / "resume" / "mlflow_run.json"
    params = {"train": {"max_steps": 4}, "out": "my-adapter"}
    with pytest.raises(KeyboardInterrupt):
        with tracking.start("finetune my-adapter", params=params, run_file=run_file) as live:
            for s in (1, 2, 3):
                live.on_step(_step(s, 4.0 - s))
            raise KeyboardInterrupt
    first = json.loads(run_file.read_text())["run_id"]
    client, runs = _runs(tracking)
    assert [r.info.status for r in runs] == ["FAILED"]

    with tracking.start("finetune my-adapter", params=params, run_file=run_file) as live:  # resumed from the checkpoint at step 2
        assert live.run_id == first and live.continued
        assert client.get_run(first).info.status == "RUNNING"
        for s in (3, 4):
            live.on_step(_step(s, 9.0 if s == 3 else 0.5))  # step 3 again: logged once, by the killed process
        live.log_params({"resumed_from_step": "2"})
        live.finish(series={"loss": [3.0, 2.0, 1.0, 0.5]})
    client, runs = _runs(tracking)
    assert [r.info.run_id for r in runs] == [first] and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["resumed_from_step"] == "2" and runs[0].data.params["train.max_steps"] == "4"
    assert sorted((m.step, m.value) for m in client.get_metric_history(first, "loss")) == [(1, 3.0), (2, 2.0), (3, 1.0), (4, 0.5)]

    with tracking.start("finetune my-adapter", params=params, run_file=run_file) as live:  # finished: a new run
        assert live.run_id != first and json.loads(run_file.read_text())["run_id"] == live.run_id
    with pytest.raises(KeyboardInterrupt):
        with tracking.start("x", params=params, run_file=run_file):
            raise KeyboardInterrupt
    with tracking.start("x", params={**params, "out": "elsewhere"}, run_file=run_file) as live:  # params differ: a new run
        assert not live.continued
    assert len(_runs(tracking)[1]) == 4
