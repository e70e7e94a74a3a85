"""The report's tables, built from small fixture records, checked number by number."""

import json

import pandas as pd
import pytest

from qlora.report import EvalRecord, Method, TrainRecord, dump_records, load_records, memory_table, table2, table3, table4, write_table
from qlora.report.plots import accuracy_bars, loss_curves, memory_bars
from qlora.report.records import differs_beyond_noise

M = "SmolLM2-135M"


def ev(task, quant, method, value, n, lo=None, hi=None, model=M, dataset="d"):
    return EvalRecord(task, model, quant, method, dataset, value, n, lo, hi)


@pytest.fixture
def evals():
    return [
        ev("perplexity", "bf16", Method.NONE, 10.34, 6144, dataset="mmlu-text"),
        ev("perplexity", "int4", Method.NONE, 13.22, 6144, dataset="mmlu-text"),
        ev("perplexity", "fp4", Method.NONE, 12.06, 6144, dataset="mmlu-text"),
        ev("perplexity", "nf4_dq", Method.NONE, 12.45, 6144, dataset="mmlu-text"),
        ev("classification", "bf16", Method.FULL, 0.80, 1000, 0.775, 0.825, model="MiniLM", dataset="vitaminc"),
        ev("classification", "bf16", Method.LORA, 0.79, 1000, 0.765, 0.815, model="MiniLM", dataset="vitaminc"),
        ev("classification", "int8", Method.QLORA, 0.60, 1000, 0.57, 0.63, model="MiniLM", dataset="vitaminc"),
        ev("rougeL", "bf16", Method.FULL, 0.40, 200, 0.36, 0.44, dataset="ni"),
        ev("mmlu", "bf16", Method.NONE, 0.30, 500, 0.26, 0.34, dataset="mmlu"),
        ev("mmlu", "bf16", Method.LORA, 0.31, 500, 0.27, 0.35, dataset="mmlu"),
        ev("mmlu", "nf4_dq", Method.QLORA, 0.45, 500, 0.41, 0.49, dataset="mmlu"),
    ]


@pytest.fixture
def trains():
    return [
        TrainRecord(M, "nf4_dq", Method.QLORA, 4.127, 70.0, 18.0, 1500.0, "cpu_peak_rss", 10, 900.0, (3.0, 2.0, 1.0)),
        TrainRecord(M, "bf16", Method.LORA, 16.0, 256.0, 18.0, 2000.0, "cpu_peak_rss", 10, 1100.0, (3.0, 2.5, 1.5)),
    ]


def test_table2_rows_and_paper_column(evals):
    t = table2(evals)
    f = t.frame.set_index("data type")
    assert list(f.index) == ["BF16", "Int4", "FP4 (E2M1, bnb grid)", "FP4 (E3M0)", "NF4", "NF4 + DQ"]
    assert f.loc["Int4", f"{M} perplexity"] == "13.22"
    assert f.loc["NF4", f"{M} perplexity"] == "–"  # not measured: never invented
    assert f.loc["Int4", "paper: mean Pile-CC perplexity"] == "34.3"
    assert f.loc["NF4 + DQ", "paper: mean Pile-CC perplexity"] == "27.4"
    assert f.loc["BF16", "paper: mean Pile-CC perplexity"] == "–"
    assert t.data.set_index("quant").loc["fp4", "perplexity"] == 12.06


def test_table3_values_noise_marks_and_paper(evals):
    t = table3(evals)
    f = t.frame.set_index("method")
    acc = [c for c in f.columns if c.startswith("accuracy")][0]
    assert acc == "accuracy %: vitaminc (MiniLM)"
    assert f.loc["BF16 (full fine-tune)", acc] == "80.0 ± 2.5 (n=1,000)"
    assert f.loc["LoRA BF16", acc].endswith("≈")  # 79 vs 80 within noise
    assert not f.loc["QLoRA Int8", acc].endswith("≈")  # 60 vs 80 is not
    assert f.loc["QLoRA FP4", acc] == "–"
    assert f.loc["QLoRA Int8", "paper: GLUE RoBERTa-large"] == "88.8"
    assert f.loc["QLoRA NF4+DQ", "paper: GLUE RoBERTa-large"] == "–"
    assert f.loc["LoRA BF16", "paper: S-NI T5-11B"] == "60.7"
    d = t.data
    assert d[(d.quant == "int8")].value.item() == 0.60
    assert bool(d[(d.method == "lora") & (d.column == acc)].within_noise_of_first_row.item())


def test_table4(evals):
    f = table4(evals).frame.set_index("method")
    col = "MMLU 5-shot %: mmlu (SmolLM2-135M)"
    assert f.loc["untuned (BF16)", col] == "30.0 ± 4.0 (n=500)"
    assert f.loc["BFloat16", col].endswith("≈")
    assert f.loc["NFloat4 + DQ", col] == "45.0 ± 4.0 (n=500)"
    assert f.loc["Float4", col] == "–"
    assert f.loc["BFloat16", "paper: mean 5-shot MMLU (LLaMA 7–65B)"] == "53.0"
    assert f.loc["NFloat4 + DQ", "paper: mean 5-shot MMLU (LLaMA 7–65B)"] == "53.1"


def test_memory_table(trains):
    t = memory_table(trains)
    f = t.frame
    assert list(f["data type"]) == ["BF16", "NF4 + DQ"]
    assert list(f["bits/param"]) == ["16.000", "4.127"]
    assert f["adapter MB"].tolist() == ["18.0", "18.0"]
    assert "5,048 MB" in t.notes[0]


def test_noise_test():
    a = ev("mmlu", "bf16", Method.NONE, 0.50, 100, 0.40, 0.60)
    b = ev("mmlu", "bf16", Method.NONE, 0.55, 100, 0.45, 0.65)
    c = ev("mmlu", "bf16", Method.NONE, 0.80, 100, 0.72, 0.88)
    assert differs_beyond_noise(a, b) is False and differs_beyond_noise(a, c) is True
    assert differs_beyond_noise(a, ev("mmlu", "bf16", Method.NONE, 0.5, 1)) is None


def test_records_round_trip_and_files(tmp_path, evals, trains):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(dump_records(evals + trains)))
    e, t = load_records([path])
    assert e == evals and t == trains
    written = write_table(table3(e), tmp_path / "reports")
    assert [p.name for p in written] == ["table3.md", "table3.csv"]
    assert pd.read_csv(written[1]).value.max() == 0.80
    assert "## Table 3" in written[0].read_text()
    for png in (loss_curves(t, tmp_path / "loss.png"), accuracy_bars(e, "mmlu", tmp_path / "acc.png"),
                memory_bars(t, tmp_path / "mem.png")):  # fmt: skip
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bad_records_are_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"kind": "eval", "task": "mmlu", "oops": 1}))
    with pytest.raises(ValueError, match="unknown EvalRecord field"):
        load_records([path])
    path.write_text(json.dumps({"kind": "nope"}))
    with pytest.raises(ValueError, match="kind must be 'eval' or 'train', got 'nope'"):
        load_records([path])
