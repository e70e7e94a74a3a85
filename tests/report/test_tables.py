"""The report's tables from fixture records and per-item results: paired comparisons against the
reference row (a clear difference, an identical pair, a too-small sample, records without items)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qlora.eval.result import Metric, Score, Task
from qlora.eval.stats import wilson_interval
from qlora.report import (DataTypeLabel, EvalRecord, Evaluation, Method, TrainRecord, attach_items, dump_records, items_filename,
                          load_records, memory_table, table2, table3, table4, write_table)  # fmt: skip
from qlora.report.plots import accuracy_bars, loss_curves, memory_bars
from qlora.report.records import differs_beyond_noise
from tests.report import fixtures as fx

M, G, E = "SmolLM2-135M", "Gemma-3-270M", "MiniLM"


def rec(task, quant, method, value, n, lo=None, hi=None, model=M, dataset="d", metric=None):
    task = Task(task)
    return EvalRecord(model, quant, method, dataset, Score(task, metric or task.default_metric, value, n, lo, hi))


def ev(task, quant, method, items, model=M, dataset="d", metric=None):
    """An evaluation whose record is computed from its items (value, n)."""
    first = items.items[0]
    if task == "perplexity":
        value = math.exp(sum(i.nll_sum for i in items.items) / sum(i.tokens for i in items.items))
        n = sum(i.tokens for i in items.items)
    elif task == "heldout_nll":
        value, n = sum(i.nll_sum for i in items.items) / sum(i.tokens for i in items.items), len(items)
    elif task == "rougeL":
        value, n = float(np.mean([i.score for i in items.items])), len(items)
    else:
        ok = [i.correct if hasattr(first, "correct") else i.letter_correct for i in items.items]
        lo, hi = wilson_interval(sum(ok), len(ok))
        return Evaluation(rec(task, quant, method, sum(ok) / len(ok), len(ok), lo, hi, model, dataset, metric), items)
    return Evaluation(rec(task, quant, method, value, n, model=model, dataset=dataset, metric=metric), items)


BASE = fx.normal(64, 3.0, 0.3, seed=0)


@pytest.fixture
def table2_evals():
    out = []
    for model, shift in ((M, 0.0), (G, 0.5)):
        out += [
            ev("perplexity", "bf16", Method.NONE, fx.windows(BASE + shift), model, "wiki"),
            ev("perplexity", "nf4", Method.NONE, fx.windows(BASE + shift + fx.normal(64, 0.10, 0.05, seed=1)), model, "wiki"),
            ev("perplexity", "nf4_dq", Method.NONE, fx.windows(BASE + shift + fx.normal(64, 0.10, 0.05, seed=1)), model, "wiki"),
            ev("perplexity", "fp4", Method.NONE, fx.windows(BASE + shift + fx.normal(64, 0.20, 0.05, seed=2)), model, "wiki"),
        ]
    out.append(Evaluation(rec("perplexity", "int4", Method.NONE, 40.0, 64 * 255, dataset="wiki")))  # no items (legacy)
    row, ref = fx.correct_pairs(300, 40, 80, 580)
    out += [ev("mmlu_0shot", "bf16", Method.NONE, fx.mmlu(ref, ref, Task.MMLU_ZERO_SHOT)),
            ev("mmlu_0shot", "nf4", Method.NONE, fx.mmlu(row, row, Task.MMLU_ZERO_SHOT)),
            ev("mmlu_0shot", "nf4_dq", Method.NONE, fx.mmlu(ref, ref, Task.MMLU_ZERO_SHOT))]  # fmt: skip
    return out


def test_table2_models_comparisons_and_paper(table2_evals):
    t = table2(table2_evals, profile="default")
    f = t.frame.set_index(["model", "data type"])
    assert list(f.loc[M].index) == ["BF16", "Int4", "FP4 (E2M1, bnb grid)", "FP4 (E3M0)", "NF4", "NF4 + DQ"]
    assert sorted(set(t.frame.model)) == [G, M]
    nf4 = f.loc[(M, "NF4")]
    assert nf4["perplexity"] == f"{math.exp(3.1):.2f}"
    assert nf4["vs BF16"].startswith("+10.52% [") and nf4["vs BF16"].endswith(", n=64")  # exp(0.1): a clear difference
    assert nf4["vs FP4 (E2M1, bnb grid)"].startswith("-9.52% [")  # exp(-0.1)
    assert f.loc[(M, "BF16"), "vs BF16"] == "reference" and f.loc[(M, "FP4 (E2M1, bnb grid)"), "vs FP4 (E2M1, bnb grid)"] == "reference"
    assert f.loc[(M, "Int4"), "vs BF16"] == "n/a (no per-item results)"
    assert f.loc[(M, "FP4 (E3M0)"), "perplexity"] == "–" and f.loc[(M, "FP4 (E3M0)"), "vs BF16"] == "–"
    # 0-shot MMLU: NF4 alone right on 40 questions, BF16 alone on 80: -4 pp, McNemar p = binomial(40 of 120)
    assert f.loc[(M, "NF4"), "MMLU 0-shot vs BF16"].startswith("-4.0 pp [") and "p=0.00033" in f.loc[(M, "NF4"), "MMLU 0-shot vs BF16"]
    assert f.loc[(M, "NF4 + DQ"), "MMLU 0-shot vs BF16"] == "≈ (+0.0 pp [-0.2, +0.2], n=1,000, p=1)"  # identical pair (Newcombe, phi ~ 1)
    assert f.loc[(G, "NF4"), "MMLU 0-shot %"] == "–"
    assert f.loc[(M, "Int4"), "paper: mean Pile-CC perplexity"] == "34.3" and f.loc[(M, "BF16"), "paper: mean Pile-CC perplexity"] == "–"
    d = t.data[(t.data.task == "perplexity") & (t.data.model == M)].set_index("quant")
    assert d.loc["nf4", "vs_bf16_estimate"] == pytest.approx(math.exp(0.1)) and not d.loc["nf4", "vs_bf16_covers_no_difference"]
    assert d.loc["nf4_dq", "vs_fp4_ci_high"] < 1
    assert "Produced by the `default` profile." in t.notes and "GGUF" in t.notes[0]


@pytest.fixture
def tuned_evals():
    lora_ok = [True] * 620 + [False] * 380
    full_ok = [True] * 370 + [False] * 630
    out = [
        ev("classification", "bf16", Method.FULL, fx.labels(full_ok), E, "multiemo"),
        ev("classification", "bf16", Method.LORA, fx.labels(lora_ok), E, "multiemo"),
        ev("classification", "int8", Method.QLORA, fx.labels(lora_ok), E, "multiemo"),  # identical to the reference
    ]
    ref_rouge = np.clip(fx.normal(200, 0.3, 0.1, seed=5), 0, 1)
    out += [
        ev("rougeL", "bf16", Method.LORA, fx.rouge(ref_rouge), dataset="ni"),
        ev("rougeL", "nf4_dq", Method.QLORA, fx.rouge(np.clip(ref_rouge + fx.normal(200, 0.05, 0.05, seed=6), 0, 1)), dataset="ni"),
    ]
    tokens = [20 + i % 7 for i in range(100)]
    lora_nll = fx.normal(100, 1.5, 0.2, seed=7)
    out += [
        ev("heldout_nll", "bf16", Method.NONE, fx.heldout(lora_nll + 0.4 + fx.normal(100, 0, 0.05, seed=8), tokens), dataset="ni"),
        ev("heldout_nll", "bf16", Method.LORA, fx.heldout(lora_nll, tokens), dataset="ni"),
    ]
    m_row, m_ref = fx.correct_pairs(150, 10, 12, 328)
    out += [
        ev("mmlu", "bf16", Method.LORA, fx.mmlu(m_ref), dataset="mmlu"),
        ev("mmlu", "nf4_dq", Method.QLORA, fx.mmlu(m_row), dataset="mmlu"),
        Evaluation(rec("mmlu", "fp4", Method.QLORA, 0.3, 500, 0.26, 0.34, dataset="mmlu")),
    ]
    return out


def test_table3_comparisons_against_lora_bf16(tuned_evals):
    t = table3(tuned_evals)
    f = t.frame.set_index("method")
    acc = "accuracy %: multiemo (MiniLM)"
    assert f.loc["BF16 (full fine-tune)", acc] == "37.0 ± 3.0 (n=1,000)"
    full = f.loc["BF16 (full fine-tune)", f"{acc} vs LoRA BF16"]
    assert full.startswith("-25.0 pp [") and "p=" in full and not full.startswith("≈")  # a clear difference
    assert f.loc["LoRA BF16", f"{acc} vs LoRA BF16"] == "reference"
    assert f.loc["QLoRA Int8", f"{acc} vs LoRA BF16"].startswith("≈ (+0.0 pp")  # an identical pair
    assert f.loc["QLoRA FP4", acc] == "–" and f.loc["QLoRA FP4", f"{acc} vs LoRA BF16"] == "–"
    rouge = "RougeL %: ni (SmolLM2-135M)"
    assert f.loc["QLoRA NF4+DQ", f"{rouge} vs LoRA BF16"].startswith("+")
    nll = "held-out NLL (nats/token): ni (SmolLM2-135M)"
    assert f.loc["untuned (BF16)", f"{nll} vs LoRA BF16"].startswith("+0.4")  # the untuned model is worse
    assert f.loc["untuned (BF16)", acc] == "–" and f.loc["QLoRA Int8", "paper: GLUE RoBERTa-large"] == "88.8"
    assert f.loc["QLoRA NF4+DQ", "paper: GLUE RoBERTa-large"] == "–" and f.loc["LoRA BF16", "paper: S-NI T5-11B"] == "60.7"
    d = t.data.set_index(["column", "method", "quant"])
    assert d.loc[(acc, "full", "bf16"), "vs_lora_bf16_p_value"] < 1e-20


def test_table4_and_a_too_small_sample(tuned_evals):
    f = table4(tuned_evals).frame.set_index("method")
    col = "MMLU 5-shot %: mmlu (SmolLM2-135M)"
    assert f.loc["BFloat16", col].startswith("32.4 ± ") and f.loc["BFloat16", f"{col} vs LoRA BF16"] == "reference"
    assert f.loc["NFloat4 + DQ", f"{col} vs LoRA BF16"].startswith("≈ (-0.4 pp [")  # 10 vs 12 discordant: noise
    assert f.loc["Float4", f"{col} vs LoRA BF16"] == "n/a (no per-item results)"
    assert f.loc["untuned (BF16)", col] == "–"
    assert f.loc["NFloat4 + DQ", "paper: mean 5-shot MMLU (LLaMA 7–65B)"] == "53.1"
    small = [ev("rougeL", "bf16", Method.LORA, fx.rouge([0.5, 0.1, 0.6, 0.2])),
             ev("rougeL", "nf4_dq", Method.QLORA, fx.rouge([0.3, 0.4, 0.2, 0.3]))]  # fmt: skip
    cell = table3(small).frame.set_index("method").loc["QLoRA NF4+DQ", "RougeL %: d (SmolLM2-135M) vs LoRA BF16"]
    assert cell.startswith("≈ (-5.0 pts [") and cell.endswith("n=4)")  # wide: 4 prompts


def test_duplicate_cells_are_refused(tuned_evals):
    with pytest.raises(ValueError, match="2 mmlu records for SmolLM2-135M lora bf16"):
        table4(tuned_evals + [tuned_evals[-3]])


@pytest.fixture
def trains():
    return [
        TrainRecord(M, "nf4_dq", Method.QLORA, 4.126953125, 70.0, 18.0, 1500.0, "cpu_peak_rss", 10, 900.0, (3.0, 2.0, 1.0)),
        TrainRecord(M, "bf16", Method.LORA, 16.0, 256.0, 18.0, 2000.0, "cpu_peak_rss", 10, 1100.0, (3.0, 2.5, 1.5)),
    ]


def test_memory_table(trains):
    t = memory_table(trains)
    f = t.frame
    assert list(f["data type"]) == ["BF16", "NF4 + DQ"] and list(f["bits/param"]) == ["16.000", "4.127"]
    assert f["adapter MB"].tolist() == ["18.0", "18.0"] and f["peak MB"].tolist()[0] == "2,000 (cpu_peak_rss)"
    assert "5,048 MB" in t.notes[0]


def test_noise_test():
    a = rec("mmlu", "bf16", Method.NONE, 0.50, 100, 0.40, 0.60)
    b = rec("mmlu", "bf16", Method.NONE, 0.55, 100, 0.45, 0.65)
    c = rec("mmlu", "bf16", Method.NONE, 0.80, 100, 0.72, 0.88)
    assert differs_beyond_noise(a, b) is False and differs_beyond_noise(a, c) is True
    assert differs_beyond_noise(a, rec("mmlu", "bf16", Method.NONE, 0.5, 1)) is None


def test_records_items_round_trip_and_files(tmp_path, tuned_evals, trains):
    records = [e.record for e in tuned_evals]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(dump_records(records + trains)))
    e, t = load_records([path])
    assert e == records and t == trains
    for x in tuned_evals:
        if x.items is not None:
            x.items.save(tmp_path / "items" / items_filename(x.record))
    assert attach_items(e, tmp_path / "items") == tuned_evals
    assert items_filename(records[0]) == "classification__MiniLM__full__bf16.json"
    written = write_table(table3(tuned_evals), tmp_path / "reports")
    assert [p.name for p in written] == ["table3.md", "table3.csv"]
    csv = pd.read_csv(written[1])
    assert csv[csv.task == "classification"].value.max() == 0.62 and "## Table 3" in written[0].read_text()
    assert csv.set_index(["task", "method"]).loc[("classification", "full"), "vs_lora_bf16_estimate"] == pytest.approx(-0.25)
    for png in (loss_curves(t, tmp_path / "loss.png"), accuracy_bars(e, "mmlu", tmp_path / "acc.png"),
                memory_bars(t, tmp_path / "mem.png")):  # fmt: skip
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_legacy_record_files_are_read(tmp_path):
    legacy = [{"kind": "eval", "task": "mmlu", "model": M, "quant": "main", "method": "qlora", "dataset": "MMLU test (5-shot)",
               "value": 0.2, "n": 24, "ci_low": 0.09, "ci_high": 0.4},
              {"kind": "train", "adapter_mb": 74.5, "bits_per_param": 4.126953125, "losses": [2.5, 1.7], "method": "qlora",
               "model": M, "peak_kind": "cpu_peak_rss", "peak_mb": 4793.3, "quant": "nf4_dq", "steps": 2,
               "tokens_per_s": 51.2, "weight_mb": 160.4}]  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(legacy))
    (e,), (t,) = load_records([path])
    assert e.quant is None and e.metric is Metric.ACCURACY and e.task is Task.MMLU
    assert t.quant == DataTypeLabel.parse("nf4_dq") and t.peak_kind.value == "cpu_peak_rss"


@pytest.mark.parametrize("record,match", [
    ({"kind": "eval", "task": "mmlu", "oops": 1}, r"record 0: EvalRecord keys: unknown \['oops'\]"),
    ({"kind": "nope"}, "kind must be 'eval' or 'train', got 'nope'"),
    ({"kind": "eval", "task": "mmlu", "model": M, "quant": "nf5", "method": "qlora", "dataset": "d", "value": 0.2, "n": 3},
     "data type label must be"),
    ({"kind": "eval", "task": "mmlu", "model": M, "quant": "nf4", "method": "sgd", "dataset": "d", "value": 0.2, "n": 3},
     r"method must be one of \['none'"),
    ({"kind": "eval", "task": "bleu", "model": M, "quant": "nf4", "method": "lora", "dataset": "d", "value": 0.2, "n": 3},
     "task must be one of"),
    ({"kind": "eval", "task": "mmlu", "model": M, "quant": "nf4", "method": "lora", "dataset": "d", "value": 0.2, "n": 3,
      "ci_low": 0.3, "ci_high": 0.5}, "does not contain the value"),
    ({"kind": "train", "model": M, "quant": "nf4", "method": "lora", "bits_per_param": 4.5, "weight_mb": 1.0, "adapter_mb": 1.0,
      "peak_mb": 1.0, "peak_kind": "gpu", "steps": 1, "tokens_per_s": 1.0, "losses": []}, "peak_kind must be one of"),
])  # fmt: skip
def test_bad_records_are_rejected(tmp_path, record, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=match) as e:
        load_records([path])
    assert str(path) in str(e.value)
