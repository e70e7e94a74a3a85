"""A shared MLflow tracking server: the pipeline logs over HTTP (MLFLOW_TRACKING_URI=http://...), runs and
artifacts land in the server's database and artifact store, never in a local ./mlruns."""

import json
import urllib.request

import pytest

from qlora.pipeline.tracking import Tracking
from tests.mlflow_server import mlflow_server


def _get(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on a sqlite database with a served artifact store (what README "Scaling out" shows)."""
    with mlflow_server("server", tmp_path / "mlflow.db", tmp_path / "artifact-store", "--serve-artifacts") as url:
        yield url, tmp_path


@pytest.mark.slow
def test_pipeline_runs_and_artifacts_arrive_at_a_shared_server_over_http(server, tmp_path, monkeypatch):
    url, root = server
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a client folder: nothing may be written here
    (work / "report.md").write_text("# report\n")
    run_id = Tracking(url, "shared").log(
        "train causal main", params={"model": "tiny", "quant": {"dtype": "nf4", "double_quant": True}},
        metrics={"peak_mb": 123.0}, series={"loss": [3.0, 2.5, 2.0]}, tags={"stage": "train"}, artifacts=[work / "report.md"],
    )  # fmt: skip
    api = f"{url}/api/2.0/mlflow"
    experiment = _get(f"{api}/experiments/get-by-name?experiment_name=shared")["experiment"]
    runs = _get(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    data = runs[0]["data"]
    assert {p["key"]: p["value"] for p in data["params"]} == {"model": "tiny", "quant.dtype": "nf4", "quant.double_quant": "true"}  # as params.yaml writes it
    assert {m["key"]: m["value"] for m in data["metrics"]}["peak_mb"] == 123.0
    history = _get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=loss")["metrics"]
    assert [(m["step"], m["value"]) for m in sorted(history, key=lambda m: m["step"])] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    files = _get(f"{api}/artifacts/list?run_id={run_id}")["files"]
    assert [f["path"] for f in files] == ["report.md"]
    stored = list((root / "artifact-store").rglob("report.md"))  # in the server's artifact store
    assert len(stored) == 1 and stored[0].read_text() == "# report\n"
    assert sorted(p.name for p in work.iterdir()) == ["report.md"]  # no ./mlruns, no mlflow.db on the client
