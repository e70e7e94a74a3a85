"""Stage `analysis@<name>` (claims h, i): planned only in profiles that list it, its dependencies declared,
its settings validated, and both jobs run end to end on tiny inputs (a tiny model; small GGUF files)."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from qlora.checks import ConfigError
from qlora.config import Checkpointing, ModelSource
from qlora.pipeline import paths
from qlora.pipeline.analysis import MemoryAnalysisJob, OutlierAnalysisJob, plan_analysis
from qlora.pipeline.config import MemoryAnalysisConfig, OutlierAnalysisConfig
from qlora.pipeline.params import ReadRecorder, pipeline_config
from qlora.pipeline.report import plan_report
from qlora.pipeline.tracking import Tracking
from qlora.report.analyses import analyses_markdown
from tests.data.test_gguf_weights import write_gguf
from tests.pipeline.test_config import composed
from tests.pipeline.test_dvc_contract import ROOT, _covered_key, code_problems


def test_only_the_findings_profile_plans_analyses():
    default, findings = pipeline_config(composed()), pipeline_config(composed("experiment=findings"))
    assert default.ablation.analyses == () and findings.ablation.analyses == ("memory", "outliers")
    with pytest.raises(ConfigError, match=r"ablation.analyses.*a list that includes 'memory'"):
        plan_analysis(default, "memory")
    memory = plan_analysis(findings, "memory")
    assert isinstance(memory, MemoryAnalysisJob)
    assert (memory.model_name, memory.quant.label, memory.model_dir) == ("SmolLM2-135M-Instruct", "nf4_dq", paths.model_dir("causal"))
    configs = memory.configurations()
    assert len(configs) == 3 * 2 * 3 and configs[:4] == [(8, "off", 128), (8, "off", 256), (8, "off", 512), (8, "non_reentrant", 128)]
    assert (memory.lora.alpha, memory.lora.dropout) == (16.0, 0.1)  # the runs' adapters, at each rank of the grid
    outliers = plan_analysis(findings, "outliers")
    assert isinstance(outliers, OutlierAnalysisJob)
    assert outliers.settings.models == (ModelSource.SMOLLM2, ModelSource.GEMMA3_270M, ModelSource.QWEN25_CODER_05B,
                                        ModelSource.QWEN25_CODER_15B)  # fmt: skip
    assert plan_report(default).analysis_files == ()
    assert plan_report(findings).analysis_files == (Path("metrics/analysis/memory.json"), Path("metrics/analysis/outliers.json"))


def _with(overrides: dict, *profile):
    params = composed(*profile)
    for dotted, value in overrides.items():
        *head, last = dotted.split(".")
        node = params
        for k in head:
            node = node[k]
        node[last] = value
    return params


@pytest.mark.parametrize("overrides, key, expected", [
    ({"ablation.analyses": ["memory", "bogus"]}, "ablation.analyses[1]", "one of memory, outliers"),
    ({"ablation.analyses": ["MEMORY"]}, "ablation.analyses[0]", "one of memory, outliers"),
    ({"ablation.analyses": ["memory", "memory"]}, "ablation.analyses", "without repeats"),
    ({"analysis.memory.ranks": []}, "analysis.memory.ranks", "a non-empty list"),
    ({"analysis.memory.seq_lens": [128, 0]}, "analysis.memory.seq_lens[1]", ">= 1"),
    ({"analysis.memory.checkpointing": "OFF"}, "analysis.memory.checkpointing", "REENTRANT or NON_REENTRANT"),
    ({"analysis.memory.quant": "nf5"}, "analysis.memory.quant", "one of the data types in quants"),
    ({"analysis.outliers.models": ["SMOLLM2", "MINILM"]}, "analysis.outliers.models[1]", "an embedded GGUF model"),
    ({"analysis.outliers.sigmas": 0}, "analysis.outliers.sigmas", "> 0"),
])  # fmt: skip
def test_bad_analysis_settings_are_refused_with_their_key(overrides, key, expected):
    with pytest.raises(ConfigError) as err:
        pipeline_config(_with(overrides))
    assert key in str(err.value) and expected in str(err.value)


def _findings_stages() -> dict:
    """The root pipeline resolved with the findings profile's params (the profile's dvc.yaml is generated from it)."""
    from dvc.parsing import DataResolver
    from dvc.repo import Repo

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return DataResolver(Repo(str(ROOT)), str(ROOT / "findings"), copy.deepcopy(doc)).resolve()["stages"]


def test_the_findings_pipeline_declares_what_the_analyses_import_and_read():
    from qlora.pipeline.params import load_params

    stages = {k: v for k, v in _findings_stages().items() if k.startswith("analysis@")}
    assert sorted(stages) == ["analysis@memory", "analysis@outliers"]
    assert code_problems(stages) == []
    params = load_params(ROOT / "findings" / "params.yaml")
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        recorder = ReadRecorder(params)
        plan_analysis(recorder, *argv[2:])
        declared = [str(p) for p in stage["params"]]
        assert [k for k in sorted(recorder.reads) if not _covered_key(k, declared)] == [], name
        assert "quants.nf4_dq" in declared and "requirements/assets_findings.txt" in stage["deps"]
        item = argv[2]
        assert [next(iter(o)) for o in stage["outs"]] == [f"metrics/analysis/{item}.csv"]
        assert [next(iter(o)) for o in stage["metrics"]] == [f"metrics/analysis/{item}.json"]
        assert [next(iter(o)) for o in stage["plots"]] == [f"reports/analysis_{item}.png"]


def test_the_report_depends_on_a_folder_that_exists_in_every_profile():
    for folder in ("", "findings"):
        doc = yaml.safe_load((ROOT / folder / "dvc.yaml").read_text())
        assert "metrics/analysis" in doc["stages"]["report"]["deps"]
        assert (ROOT / folder / "metrics" / "analysis" / "README.md").is_file()  # the default profile writes nothing there
        assert ("analysis" in doc["stages"]) and doc["stages"]["analysis"]["foreach"] == "${ablation.analyses}"
    findings_doc = yaml.safe_load((ROOT / "findings" / "dvc.yaml").read_text())
    assert "../requirements/assets_findings.txt" in findings_doc["stages"]["analysis"]["do"]["deps"]
    assert "../requirements/asset_files.txt" in findings_doc["stages"]["prepare_data"]["deps"]


def _gguf(path: Path, arch: str, rows: int, cols: int, outliers: list[int], seed: int) -> Path:
    """Four linear weights of N(0, 0.02) with the given number of outliers (1.0) in distinct blocks."""
    rng = np.random.default_rng(seed)
    tensors = {"token_embd.weight": rng.standard_normal((50, cols))}
    for layer, k in enumerate(outliers):
        w = rng.standard_normal(rows * cols) * 0.02
        w[np.arange(k) * 64 + 5] = 1.0
        tensors[f"blk.{layer}.attn_q.weight"] = w.reshape(rows, cols)
    return write_gguf(path, arch, tensors)


def test_the_outlier_job_measures_what_is_installed_and_reports_the_rest(tmp_path, monkeypatch):
    import qlora.data.sources as sources

    files = {ModelSource.SMOLLM2: _gguf(tmp_path / "s.gguf", "llama", 64, 64, [1, 1, 2, 1], 0),  # ~300 per million
             ModelSource.QWEN25_CODER_05B: _gguf(tmp_path / "m.gguf", "qwen2", 128, 128, [15, 16, 17, 16], 1),  # ~980
             ModelSource.QWEN25_CODER_15B: _gguf(tmp_path / "l.gguf", "qwen2", 256, 128, [63, 64, 65, 64], 2)}  # ~1,950

    def gguf_path(source, cache_dir):
        if source not in files:
            raise FileNotFoundError(f"the embedded asset package for {source.value} is not installed")
        return files[source]

    monkeypatch.setattr(sources, "gguf_path", gguf_path)
    monkeypatch.chdir(tmp_path)
    out = OutlierAnalysisJob(OutlierAnalysisConfig(n_resamples=500)).run(Tracking(""), tmp_path)
    written = json.loads(paths.analysis_metrics("outliers").read_text())
    assert written == json.loads(json.dumps(out))
    by = {m["model"]: m for m in written["models"]}
    assert by["Gemma-3-270M"]["measured"] is False and "not installed" in by["Gemma-3-270M"]["reason"]
    small = by["SmolLM2-135M-Instruct"]
    assert (small["linear_parameters"], small["linear_weights"], small["source_types"]) == (4 * 64 * 64, 4, {"F32": 4})
    assert small["means"]["outlier_share"]["value"] == pytest.approx(5 / 4 / 4096)
    share = written["trends"]["outlier_share"]
    assert share["slope_per_decade"]["low"] > 0
    assert list(share["within_family"]) == ["Qwen2.5-Coder-1.5B-Instruct - Qwen2.5-Coder-0.5B-Instruct"]
    assert share["within_family"]["Qwen2.5-Coder-1.5B-Instruct - Qwen2.5-Coder-0.5B-Instruct"]["value"] == pytest.approx(64 / 32768 - 16 / 16384)
    rows = paths.analysis_rows("outliers").read_text().splitlines()
    assert rows[0] == "model,name,layer,kind,source_type,numel,outlier_share,excess_kurtosis,absmax_spread,tensor_outlier_share"
    assert len(rows) == 1 + 12 and rows[1].startswith("SmolLM2-135M-Instruct,blk.0.attn_q.weight,0,attn_q,F32,4096,")
    assert paths.analysis_plot("outliers").read_bytes()[:4] == b"\x89PNG"
    text = analyses_markdown({"outliers": written})
    assert "### SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct, Qwen2.5-Coder-1.5B-Instruct: holds" in text
    assert "| Gemma-3-270M | – | – | – | – | not measured: the embedded asset package for gemma3_270m is not installed |" in text


def test_the_memory_job_writes_one_row_per_configuration(tmp_path, monkeypatch):
    from qlora.config import LoRAConfig, QuantConfig
    from tests.models.tiny_models import llama

    model_dir = tmp_path / "artifacts" / "models" / "causal"
    llama().save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    settings = MemoryAnalysisConfig(ranks=(2, 4), seq_lens=(16, 32), micro_batch_size=2, micro_batches=1)
    job = MemoryAnalysisJob("tiny", Path("artifacts/models/causal"), QuantConfig(compute_dtype="fp32"), LoRAConfig(rank=64, dropout=0.0),
                            settings)  # fmt: skip
    out = job.run(Tracking(""))
    rows = out["configurations"]
    assert [(r["rank"], r["checkpointing"], r["seq_len"]) for r in rows] == job.configurations()
    assert (out["compute_dtype"], out["quant"], out["micro_batch_size"]) == ("float32", "nf4_dq", 2)
    by = {(r["rank"], r["checkpointing"], r["seq_len"]): r for r in rows}
    assert by[(4, "off", 16)]["adapters"] == 2 * by[(2, "off", 16)]["adapters"] == 2 * 4 * 2048 * 2
    for r, t in ((2, 16), (2, 32), (4, 16), (4, 32)):
        assert by[(r, "non_reentrant", t)]["activations_saved"] < by[(r, "off", t)]["activations_saved"]
        assert by[(r, "off", t)]["peak"] == sum(by[(r, "off", t)][k] for k in ("weights", "adapters", "gradients", "optimizer_state",
                                                                                "activations_peak"))  # fmt: skip
    assert json.loads(paths.analysis_metrics("memory").read_text())["configurations"] == rows
    assert len(paths.analysis_rows("memory").read_text().splitlines()) == 1 + 8
    assert paths.analysis_plot("memory").read_bytes()[:4] == b"\x89PNG"
    assert Checkpointing(settings.checkpointing) is Checkpointing.NON_REENTRANT


def test_the_report_ignores_analyses_its_params_do_not_list(tmp_path, monkeypatch, capsys):
    job = plan_report(pipeline_config(composed()))
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / "metrics" / "analysis" / "memory.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing records"):
        job.run(tracking=None)
    assert "ignoring metrics/analysis/memory.json: not an analysis of this pipeline's params" in capsys.readouterr().out
