import mlflow
import pytest

from qlora.pipeline.tracking import log_run


def test_log_run_writes_params_metrics_and_series(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_run(uri, "qlora-test", "train nf4_dq", params={"quant": {"dtype": "NF4", "block_size": 64}},
                     metrics={"peak_mb": 123.0}, series={"loss": [3.0, 2.0, 1.5]}, tags={"stage": "train"})  # fmt: skip
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params == {"quant.dtype": "NF4", "quant.block_size": "64"}
    assert run.data.metrics["peak_mb"] == 123.0
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [3.0, 2.0, 1.5]
    assert run.data.tags["stage"] == "train" and run.info.status == "FINISHED"
