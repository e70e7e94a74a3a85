"""`benchmarks/shipping_costs.py`'s report on constructed per-item results: the numbers in its table are the
paired comparisons and gain shares of those items (the measuring part runs in the benchmark itself)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

from qlora.eval.items import ItemResults, MMLUItem, TokenNLL
from qlora.eval.result import Task

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("shipping_costs", ROOT / "benchmarks" / "shipping_costs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nll(per_token: list[float], tokens: int = 10) -> ItemResults:
    return ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(f"x{i}", tokens, v * tokens) for i, v in enumerate(per_token)))


def mmlu(correct: list[bool]) -> ItemResults:
    """0-shot items: right or wrong by the choice rule (the letter rule always says "C": not what is scored)."""
    right, wrong = (-1.0, -2.0, -3.0, -4.0), (-2.0, -1.0, -3.0, -4.0)
    items = [MMLUItem(f"q{i}", "s", "A", 0, "C", (-3.0, -2.0, -1.0, -4.0), "A" if ok else "B", right if ok else wrong, (1, 1, 1, 1))
             for i, ok in enumerate(correct)]  # fmt: skip
    return ItemResults(Task.MMLU_ZERO_SHOT, tuple(items))


def test_report_table_numbers(bench):
    base = [3.0, 3.2, 2.8, 3.1, 2.9, 3.0, 3.3, 2.7]
    tuned = [v - 1.0 for v in base]  # gain exactly 1 nat/token
    half = [v - 0.5 for v in base]  # keeps exactly half
    right = [True] * 6 + [False] * 2
    results = {
        "untuned": {"heldout_nll": nll(base), "mmlu": mmlu([True] * 4 + [False] * 4)},
        "adapter": {"heldout_nll": nll(tuned), "mmlu": mmlu(right)},
        "merged_bf16": {"heldout_nll": nll(tuned), "mmlu": mmlu(right)},
        "merged_nf4": {"heldout_nll": nll(half), "mmlu": mmlu(right)},
        "gguf_q8_0": {"heldout_nll": nll(tuned), "mmlu": mmlu(right)},
        "gguf_q4_0": {"heldout_nll": nll([v + 0.25 for v in base]), "mmlu": mmlu([True] * 5 + [False] * 3)},
    }
    out = {"results": results, "seconds": {}, "total_seconds": 60.0, "train": None, "adapter": "a", "sizes": {"gguf_q8_0": 2**20},
           "extra": {"fp32_merge_vs_quantized_layers": 1e-5}}  # fmt: skip
    text, data = bench.report(out, argparse.Namespace(mmlu_shots=0))
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["merged_bf16"]["d_nll"] == 0.0 and rows["merged_bf16"]["gain_kept"] == 1.0
    assert rows["merged_nf4"]["d_nll"] == pytest.approx(0.5) and rows["merged_nf4"]["gain_kept"] == pytest.approx(0.5)
    assert rows["gguf_q4_0"]["gain_kept"] == pytest.approx(-0.25)  # worse than the untuned base
    assert rows["untuned"]["d_nll"] == pytest.approx(1.0) and "gain_kept" not in rows["untuned"]
    assert rows["gguf_q4_0"]["d_mmlu"] == pytest.approx(-1 / 8) and rows["gguf_q4_0"]["mmlu_discordant"] == (0, 1)
    assert rows["adapter"]["mmlu"] == 0.75 and rows["untuned"]["mmlu"] == 0.5
    assert "Fine-tuning gain on held-out NLL: +1.0000 nats/token" in text
    assert "| merged, re-quantized to NF4+DQ (`qlora merge --into nf4`) | 2.5000 | +0.5000 [+0.5000, +0.5000]" in text
    assert set(data["per_item"]) == set(bench.VARIANTS) and len(data["per_item"]["adapter"]["heldout_nll"]["items"]) == 8
