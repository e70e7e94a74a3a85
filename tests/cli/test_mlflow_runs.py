"""What `qlora finetune` leaves in MLflow: one run per command named after --out, with the data it trained
on (source, format, record count), the output folder and the step it resumed from; a killed run that is
run again continues its MLflow run instead of leaving a duplicate."""

from __future__ import annotations

from pathlib import Path

import mlflow

from tests.cli.test_cli import ALPACA, CHAT, run


def test_runs_are_named_after_out_and_a_resumed_run_continues(capsys, tmp_path, tiny_model_dir, monkeypatch):
    from qlora.pipeline import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    chat_out, alpaca_out = tmp_path / "chat-adapter", tmp_path / "alpaca-adapter"
    argv = ["finetune", "--out", chat_out, f"model={tiny_model_dir}", f"data.path={CHAT}", "train.max_steps=4", "train.save_every=2",
            "lora=small", "--quiet"]  # fmt: skip
    original = tracking.LiveRun.on_step

    def killed_after_3(self, metrics):
        original(self, metrics)
        if metrics.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking.LiveRun, "on_step", killed_after_3)
    assert run(capsys, *argv)[0] == 130
    monkeypatch.setattr(tracking.LiveRun, "on_step", original)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    code, _, err = run(capsys, "finetune", "--out", alpaca_out, f"model={tiny_model_dir}", f"data.path={ALPACA}", "train.max_steps=2",
                       "lora=small", "--quiet")  # fmt: skip
    assert code == 0, err

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("qlora-cli")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {f"finetune {chat_out}", f"finetune {alpaca_out}"}  # the killed run was continued, not duplicated
    chat, alpaca = runs[f"finetune {chat_out}"], runs[f"finetune {alpaca_out}"]
    assert chat.info.status == alpaca.info.status == "FINISHED"
    assert {k: chat.data.params[k] for k in ("data.source", "data.format", "data.records", "data.path", "out", "resumed_from_step")} == {
        "data.source": "JSONL", "data.format": "CHAT", "data.records": "4", "data.path": str(CHAT), "out": str(chat_out),
        "resumed_from_step": "2"}  # fmt: skip
    assert {k: alpaca.data.params[k] for k in ("data.format", "data.records", "out", "resumed_from_step")} == {
        "data.format": "ALPACA", "data.records": "20", "out": str(alpaca_out), "resumed_from_step": "none"}  # fmt: skip
    assert alpaca.data.params["model.path"] == str(tiny_model_dir)
    assert [m.step for m in client.get_metric_history(chat.info.run_id, "loss")] == [1, 2, 3, 4]
    assert not Path(f"{chat_out}.work").exists()
