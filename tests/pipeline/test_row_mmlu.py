"""A causal row with `mmlu: false` (the findings profile's (f) and (g) rows, decided on held-out NLL) is
evaluated on RougeL and held-out NLL only; every other row and the untuned bases keep k-shot MMLU."""

import dataclasses

import pytest

from qlora.config import Targets
from qlora.eval.result import Task
from qlora.pipeline.config import RunSpec
from qlora.pipeline.tracking import Tracking


def test_findings_profile_skips_mmlu_only_for_the_variant_rows():
    from qlora.pipeline.evaluate import plan_causal_eval
    from tests.pipeline.test_bad_configs import composed, pipeline_config

    params = pipeline_config(composed("experiment=findings"))
    plans = {row: plan_causal_eval(params, row) for row in params.ablation.causal}
    assert {row: p.mmlu for row, p in plans.items()} == {
        "lora_bf16": True, "qlora_fp4": True, "qlora_nf4_dq": True,
        "qlora_nf4_dq_attention": False, "qlora_nf4_dq_r8": False, "qlora_nf4_dq_r16": False}  # fmt: skip
    assert plan_causal_eval(params, "untuned_nf4_dq").mmlu and plan_causal_eval(params, "main").mmlu


@pytest.mark.slow
def test_a_row_without_mmlu_writes_no_mmlu_record(tmp_path, monkeypatch):
    from qlora.pipeline import paths
    from qlora.pipeline.evaluate import plan_causal_eval
    from qlora.pipeline.finetune import plan_train
    from qlora.pipeline.models import plan_prepare_model
    from qlora.pipeline.quantize import plan_quantize
    from qlora.report.records import load_records
    from tests.pipeline.tiny_profile import tiny_params, write_tiny_data, write_tiny_models

    monkeypatch.chdir(tmp_path)
    tracking = Tracking("")  # no tracking server
    causal, encoder = write_tiny_models(tmp_path / "sources")
    params = tiny_params(causal, encoder)
    rows = {"qlora_nf4_dq": RunSpec(quant="nf4_dq"),
            "qlora_nf4_dq_attention": RunSpec(quant="nf4_dq", targets=Targets.ATTENTION, variant="attention", mmlu=False)}
    params = dataclasses.replace(params, ablation=dataclasses.replace(params.ablation, causal=rows))
    for key in ("causal", "encoder"):  # write_tiny_data tokenizes with both
        plan_prepare_model(params, key).run(tracking)
    write_tiny_data(params, paths.data_dir())
    plan_quantize(params, "causal", "nf4_dq").run(tracking)
    tasks = {}
    for row in rows:
        plan_train(params, "causal", row).run(tracking, progress=False)
        plan_causal_eval(params, row).run(tracking, progress=False)
        records, _ = load_records([paths.eval_metrics("causal", row)])
        tasks[row] = sorted(r.task.value for r in records)
        items = sorted(p.name.split("__")[0] for p in paths.eval_items("causal", row).iterdir())
        assert items == tasks[row]  # one per-item file per record
    assert tasks["qlora_nf4_dq"] == sorted([Task.MMLU.value, Task.ROUGE_L.value, Task.HELDOUT_NLL.value])
    assert tasks["qlora_nf4_dq_attention"] == sorted([Task.ROUGE_L.value, Task.HELDOUT_NLL.value])
