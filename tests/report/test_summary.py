"""The metrics summary DVC compares across experiments: every record's number under its key."""

import pytest

from qlora.eval.result import Score, Task
from qlora.report import EvalRecord, Method, TrainRecord, metrics_summary


def _eval(task, quant, method, value, model="M"):
    task = Task(task)
    return EvalRecord(model, quant, method, "d", Score(task, task.default_metric, value, 10))


def _train(quant, method, losses=(2.0, 1.5), model="M"):
    return TrainRecord(model, quant, method, 4.127, 100.0, 10.0, 1234.0, "cpu_peak_rss", len(losses), 50.0, tuple(losses))


def test_summary_keys_and_values():
    s = metrics_summary([_eval("mmlu", "nf4_dq", Method.QLORA, 0.25), _eval("mmlu", "bf16", Method.NONE, 0.2),
                         _eval("perplexity", "fp4", Method.NONE, 31.5)],
                        [_train("nf4_dq", Method.QLORA)],
                        [_eval("mmlu", None, Method.QLORA, 0.3)], [_train("fp4", Method.QLORA, losses=(3.0, 0.75))])  # fmt: skip
    assert s["eval"]["mmlu"]["M"] == {"qlora_nf4_dq": 0.25, "none_bf16": 0.2}
    assert s["eval"]["perplexity"]["M"]["none_fp4"] == 31.5
    assert s["train"]["final_loss"]["M"]["qlora_nf4_dq"] == 1.5 and s["train"]["peak_mb"]["M"]["qlora_nf4_dq"] == 1234.0
    assert s["main"] == {"mmlu": 0.3, "peak_mb": 1234.0, "tokens_per_s": 50.0, "final_loss": 0.75}


def test_summary_rejects_duplicates():
    with pytest.raises(ValueError, match="two mmlu records for M qlora_fp4"):
        metrics_summary([_eval("mmlu", "fp4", Method.QLORA, 0.1), _eval("mmlu", "fp4", Method.QLORA, 0.2)], [])
    with pytest.raises(ValueError, match="two mmlu records for M qlora_main"):
        metrics_summary([_eval("mmlu", None, Method.QLORA, 0.1), _eval("mmlu", None, Method.QLORA, 0.2)], [])


def test_a_row_trained_once_per_seed_is_summarised_by_its_mean():
    import dataclasses

    seeds = [dataclasses.replace(_train("nf4_dq", Method.QLORA, losses=(2.0, loss)), seed=seed) for seed, loss in ((0, 1.0), (1, 2.0))]
    s = metrics_summary([], seeds)
    assert s["train"]["final_loss"]["M"]["qlora_nf4_dq"] == 1.5
    with pytest.raises(ValueError, match="two training records for M qlora_nf4_dq with the same seed"):
        metrics_summary([], [seeds[0], seeds[0]])


def test_a_variant_row_has_its_own_key_beside_the_tables_row():
    """The findings profile's adapter variants (attention-only, r8) share method and data type with the all-linear row."""
    import dataclasses

    evals = [_eval("heldout_nll", "nf4_dq", Method.QLORA, 1.5), dataclasses.replace(_eval("heldout_nll", "nf4_dq", Method.QLORA, 1.7), variant="r8")]
    trains = [dataclasses.replace(_train("nf4_dq", Method.QLORA), seed=0),
              dataclasses.replace(_train("nf4_dq", Method.QLORA, losses=(2.0, 1.0)), seed=0, variant="attention")]  # fmt: skip
    s = metrics_summary(evals, trains)
    assert s["eval"]["heldout_nll"]["M"] == {"qlora_nf4_dq": 1.5, "qlora_nf4_dq_r8": 1.7}
    assert s["train"]["final_loss"]["M"] == {"qlora_nf4_dq": 1.5, "qlora_nf4_dq_attention": 1.0}
