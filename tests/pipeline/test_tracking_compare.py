"""MLflow through its REST API, as the UI sees it: a tracking server on sqlite, the tiny profile's stage
jobs logging to it, and one comparable parent run per data type holding every headline number."""

import json
import urllib.parse
import urllib.request

import pytest

from qlora.pipeline.tracking import ROW_METRICS, ROW_TAG, Tracking
from tests.mlflow_server import mlflow_server
from tests.pipeline.tiny_profile import DTYPES, run_tiny_profile

EXPERIMENT = "qlora-tiny"


def _api(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path):
    """`mlflow ui` on a fresh sqlite store, artifacts in its own folder; (base URL, artifact folder)."""
    store = tmp_path / "server"
    store.mkdir()
    with mlflow_server("ui", store / "mlflow.db", store / "artifacts", cwd=store) as base:
        yield base, store / "artifacts"


@pytest.mark.slow
def test_the_compare_view_has_one_row_per_data_type_with_every_metric(server, tmp_path, monkeypatch):
    base, artifacts = server
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run_tiny_profile(work, Tracking(base, EXPERIMENT))

    experiment = _api(base, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    runs = _api(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000})["runs"]

    def params(run):
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    def metrics(run):
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    parents = [r for r in runs if ROW_TAG in tags(r)]
    by_dtype = {}
    for r in parents:
        by_dtype.setdefault(params(r)["quant.label"], []).append(r)
    assert sorted(by_dtype) == sorted(DTYPES)
    for dtype in DTYPES:
        (row,) = by_dtype[dtype]  # one comparable row per data type
        p, m = params(row), metrics(row)
        assert p["method"] == ("lora" if dtype == "bf16" else "qlora") and p["model"] == "tiny-llama" and p["encoder_model"] == "tiny-bert"
        assert p["quant.dtype"] == dtype.split("_")[0] and p["quant.double_quant"] == str(dtype.endswith("_dq")).lower()
        assert p["quant.block_size"] == "64"
        assert set(ROW_METRICS) <= set(m), (dtype, sorted(set(ROW_METRICS) - set(m)))
        assert m["bits_per_param"] == pytest.approx({"bf16": 16.0, "fp4": 4.5, "nf4_dq": 4.127}[dtype], abs=1e-3)
        assert 0 <= m["mmlu"] <= 1 and 0 <= m["classification"] <= 1 and 0 <= m["rougeL"] <= 1 and m["perplexity"] > 1
        assert m["peak_mb"] > 0 and m["tokens_per_s"] > 0 and m["weight_mb"] > 0
    weight = {d: metrics(by_dtype[d][0])["linear_weight_mb"] for d in DTYPES}  # the data type's share of the weights
    assert weight["bf16"] > weight["fp4"] > weight["nf4_dq"] > 0

    # every stage run of a row is nested under its parent and carries the same parameter names
    children = [r for r in runs if tags(r).get("mlflow.parentRunId")]
    parent_ids = {r["info"]["run_id"] for r in parents}
    assert {tags(r)["mlflow.parentRunId"] for r in children} == parent_ids
    for r in children:
        assert {"model", "method", "quant.dtype", "quant.double_quant", "quant.block_size"} <= set(params(r)), r["info"]["run_name"]
    stages = {tags(r)["stage"] for r in runs if "stage" in tags(r)}
    assert {"prepare_model", "quantize", "evaluate_base", "train", "evaluate", "report"} <= stages

    # training logged its curve step by step (the live log), and every run has a real duration
    train = next(r for r in runs if r["info"]["run_name"] == "train causal qlora_nf4_dq-s0")  # a row trained per seed (one here)
    history = _api(base, "metrics/get-history", run_id=train["info"]["run_id"], metric_key="loss")["metrics"]
    assert sorted(h["step"] for h in history) == [1, 2, 3, 4]
    assert all(int(r["info"]["end_time"]) >= int(r["info"]["start_time"]) for r in runs)

    # artifacts are in the server's artifact store, not in the working directory
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"config.json", "adapter_config.json", "table2.md", "loss_curves.png"} <= stored
    assert not (work / "mlruns").exists() and not (work / "mlartifacts").exists()
