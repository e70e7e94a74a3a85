"""The report reads the records of the rows its params define, never whatever sits in metrics/: a row
removed from the ablation (its files left behind) once put stale numbers into Table 3."""

from pathlib import Path

import pytest

from qlora.pipeline import paths
from qlora.pipeline.params import pipeline_config
from qlora.pipeline.report import plan_report
from tests.pipeline.test_config import composed


def _names(files) -> set[str]:
    return {str(Path(f).relative_to(paths.METRICS)) for f in files}


def test_the_report_plans_exactly_the_rows_of_its_params():
    job = plan_report(pipeline_config(composed()))
    assert _names(job.metric_files) == {
        *(f"base/causal_{q}.json" for q in ("bf16", "int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq")),
        *(f"{kind}/causal_{row}.json" for kind in ("train", "eval") for row in ("lora_bf16", "qlora_fp4", "qlora_nf4_dq")),
        *(f"{kind}/encoder_{row}.json" for kind in ("train", "eval")
          for row in ("full_bf16", "lora_bf16", "qlora_int8", "qlora_fp4", "qlora_nf4_dq")),
    }
    assert _names(job.optional_files) == {f"eval/causal_untuned_{q}.json" for q in ("bf16", "fp4", "nf4_dq")}
    assert _names(job.main_files) == {"main/causal_main.json", "main/causal_main_eval.json"}
    findings = plan_report(pipeline_config(composed("experiment=findings")))
    assert "base/qwen25_coder_05b_nf4.json" in _names(findings.metric_files)


def test_a_missing_record_is_named(tmp_path, monkeypatch, capsys):
    job = plan_report(pipeline_config(composed()))
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / paths.METRICS / "eval" / "causal_qlora_int8.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing records metrics/base/causal_bf16.json, .*run their stages first"):
        job.run(tracking=None)
    assert "ignoring metrics/eval/causal_qlora_int8.json: not a row of this pipeline's params" in capsys.readouterr().out
