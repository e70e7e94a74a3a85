"""scripts/recompute_findings.py: the independent recomputation of a findings report's paired comparisons
from the per-item files (issue 22's done-when) reproduces known numbers, flags a tampered statistic or a
flipped verdict, and reproduces every perplexity-ratio row of the committed reports/findings.md."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "recompute_findings.py"
MODEL = "Tiny-LM-1M"


def _load_script():
    spec = importlib.util.spec_from_file_location("recompute_findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


recompute = _load_script()


def test_the_script_imports_nothing_from_qlora():
    source = SCRIPT.read_text()
    assert not re.search(r"^\s*(from|import)\s+qlora\b", source, re.M)


# --- synthetic inputs ---------------------------------------------------------------------------------


def _write_items(root: Path, task: str, quant: str, items: list[dict], method: str = "none") -> None:
    folder = root / "base" / f"tiny_{quant}"
    folder.mkdir(parents=True, exist_ok=True)
    head = json.dumps({"format": "qlora-items/1", "task": task})[:-1]
    rows = ",\n".join(json.dumps(i, sort_keys=True) for i in items)
    (folder / f"{task}__{MODEL}__{method}__{quant}.json").write_text(head + ', "items": [\n' + rows + "\n]}\n")


def _windows(nll_per_token: np.ndarray, tokens: np.ndarray) -> list[dict]:
    return [{"content_nll_sum": None, "content_tokens": None, "id": f"w{k:05d}-{k:012x}", "nll_sum": float(x * t), "tokens": int(t)}
            for k, (x, t) in enumerate(zip(nll_per_token, tokens))]  # fmt: skip


HEADER = """# Findings: synthetic

How to read: paired, 95% interval.

Equivalence margins: perplexity ±0.5% (claim b); after fine-tuning (claim c): QLoRA NF4 + DQ recovers at least 90% of LoRA BF16's held-out NLL gain over its untuned base; differences in differences of accuracy ±1 pp, RougeL ±1 points.

## Summary

| claim | model | verdict |
|---|---|---|
"""


def _findings(sections: list[tuple[str, str, str, list[str]]]) -> str:
    """sections: (label, title, model verdict, rows "comparison | statistic | interval | n | det | verdict")."""
    text = HEADER
    text += "".join(f"| {label} {title} | {MODEL} | **{verdict}** |\n" for label, title, verdict, _ in sections)
    for label, title, verdict, rows in sections:
        text += f"\n## {label} {title}\n\n### {MODEL}: {verdict}\n\n"
        text += "| comparison | statistic | 95% interval | n | smallest detectable | verdict |\n|---|---|---|---|---|---|\n"
        text += "".join(f"| {r} |\n" for r in rows)
    return text


@pytest.fixture
def items(tmp_path):
    """Perplexity windows of unequal length: NF4 ~2.0 nats/token, FP4 0.1 worse and 0.4 worse on short
    windows (so a per-token pooled ratio differs from per-window averages), NF4 + DQ ~NF4 + 0.0005."""
    rng = np.random.default_rng(7)
    n = 40
    tokens = rng.integers(50, 400, size=n)
    nf4 = rng.normal(2.0, 0.4, size=n)
    fp4 = nf4 + 0.1 + 0.3 * (tokens < 150) + rng.normal(0, 0.05, size=n)
    dq = nf4 + 0.0005 + rng.normal(0, 0.0005, size=n)
    root = tmp_path / "items"
    _write_items(root, "perplexity", "nf4", _windows(nf4, tokens))
    _write_items(root, "perplexity", "fp4", _windows(fp4, tokens))
    _write_items(root, "perplexity", "nf4_dq", _windows(dq, tokens))
    # constant per-token NLL: the ratio is exactly exp(2.0 - 2.1) whatever the windows
    _write_items(root, "perplexity", "int4", _windows(np.full(n, 2.1), tokens))
    _write_items(root, "perplexity", "bf16", _windows(np.full(n, 2.0), tokens))
    pooled = lambda x: math.exp(float((x * tokens).sum() / tokens.sum()))  # noqa: E731
    mean_of_windows = lambda x: float(np.exp(x).mean())  # noqa: E731
    unweighted = lambda x: math.exp(float(x.mean()))  # noqa: E731
    return {"root": root, "nf4_fp4": pooled(nf4) / pooled(fp4), "dq_nf4": pooled(dq) / pooled(nf4),
            "nf4_fp4_other_definitions": (mean_of_windows(nf4) / mean_of_windows(fp4), unweighted(nf4) / unweighted(fp4))}  # fmt: skip


def _run(tmp_path, text: str, root: Path) -> tuple[int, str]:
    findings = tmp_path / "findings.md"
    findings.write_text(text)
    out = tmp_path / "recomputed.md"
    code = recompute.main(["--findings", str(findings), "--items", str(root), "--out", str(out)])
    return code, out.read_text()


def _table(report: str) -> list[dict]:
    head = "| claim | model | comparison | printed statistic | recomputed |"
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    names = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip()[1:-1].split(" | ")))))
    return rows


A_TITLE = "NF4 beats FP4 (E2M1 and E3M0) and Int4 in perplexity (Table 2)"
B_TITLE = "Double quantization costs no quality: NF4 + DQ matches NF4 in perplexity"


def test_reproduces_a_known_ratio_and_the_pooled_definition(tmp_path, items):
    expected = items["nf4_fp4"]
    # the pooled definition must be distinguishable at 4 decimals from a mean of per-window perplexities and
    # from exp of the unweighted mean of per-window NLL per token
    assert all(abs(expected - other) > 1e-3 for other in items["nf4_fp4_other_definitions"])
    rows = [f"NF4 vs FP4 (E2M1, bnb grid) | perplexity ratio {expected:.4f} | [0.8000, 0.9000] | 40 windows | – | **holds**",
            "BF16 vs Int4 | perplexity ratio 0.9048 | [0.9048, 0.9048] | 40 windows | – | **holds**"]  # fmt: skip
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "holds", rows)]), items["root"])
    table = _table(report)
    assert code == 0, report
    assert [r["status"] for r in table] == ["reproduced", "reproduced"]
    assert float(table[0]["recomputed"]) == pytest.approx(expected, abs=1e-6)
    assert float(table[1]["recomputed"]) == pytest.approx(math.exp(-0.1), abs=1e-6)  # 0.904837
    lo, hi = (float(x) for x in table[1]["recomputed interval"].strip("[]").split(","))
    assert lo == pytest.approx(math.exp(-0.1), abs=1e-4) and hi == pytest.approx(math.exp(-0.1), abs=1e-4)
    lo, hi = (float(x) for x in table[0]["recomputed interval"].strip("[]").split(","))
    assert lo < expected < hi < 1
    assert "| (a) | Tiny-LM-1M | holds | holds | yes |" in report


def test_flags_a_tampered_statistic(tmp_path, items):
    tampered = round(items["nf4_fp4"], 4) + 0.0002  # 2 units in the last printed digit
    rows = [f"NF4 vs FP4 (E2M1, bnb grid) | perplexity ratio {tampered:.4f} | [0.8000, 0.9000] | 40 windows | – | **holds**"]
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "holds", rows)]), items["root"])
    assert code == 1
    assert _table(report)[0]["status"] == "MISMATCH"
    # half a unit in the last digit is tolerated: the correctly rounded value passes
    rows = [f"NF4 vs FP4 (E2M1, bnb grid) | perplexity ratio {items['nf4_fp4']:.4f} | [0.8000, 0.9000] | 40 windows | – | **holds**"]
    assert _run(tmp_path, _findings([("(a)", A_TITLE, "holds", rows)]), items["root"])[0] == 0


def test_flags_a_wrong_n(tmp_path, items):
    rows = [f"NF4 vs FP4 (E2M1, bnb grid) | perplexity ratio {items['nf4_fp4']:.4f} | [0.8000, 0.9000] | 64 windows | – | **holds**"]
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "holds", rows)]), items["root"])
    assert code == 1 and "printed n 64 windows" in report


def test_flags_a_flipped_verdict_but_not_a_borderline_one(tmp_path, items):
    stat = f"perplexity ratio {items['nf4_fp4']:.4f}"
    flipped = [f"NF4 vs FP4 (E2M1, bnb grid) | {stat} | [1.0500, 1.1000] | 40 windows | – | **does not hold**"]
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "does not hold", flipped)]), items["root"])
    assert code == 1
    assert _table(report)[0]["status"] == "FLIP"
    assert "| (a) | Tiny-LM-1M | does not hold | holds | NO |" in report
    # printed "inconclusive" with an endpoint 0.0001 above 1 (within 10% of the width 0.2): borderline
    near = [f"NF4 vs FP4 (E2M1, bnb grid) | {stat} | [0.8001, 1.0001] | 40 windows | – | **inconclusive**"]
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "inconclusive", near)]), items["root"])
    assert code == 0, report
    assert _table(report)[0]["status"] == "borderline"


def test_matches_uses_the_headers_margin(tmp_path, items):
    ratio = items["dq_nf4"]
    assert 1.0 < ratio < 1.002
    rows = [f"NF4 + DQ vs NF4 | perplexity ratio {ratio:.4f} | [0.9990, 1.0020] | 40 windows | – | **holds**"]
    code, report = _run(tmp_path, _findings([("(b)", B_TITLE, "holds", rows)]), items["root"])
    row = _table(report)[0]
    assert code == 0, report
    assert row["rule"] == "matches ([0.995, 1.005])" and row["status"] == "reproduced"
    assert float(row["recomputed"]) == pytest.approx(ratio, abs=1e-6)
    # the same row as a "beats" comparison is inconclusive or does not hold, never "holds"
    rows = [f"NF4 + DQ vs NF4 | perplexity ratio {ratio:.4f} | [0.9990, 1.0020] | 40 windows | – | **holds**"]
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "holds", rows)]), items["root"])
    assert code == 1 and _table(report)[0]["status"] == "FLIP"


def test_missing_items_fail(tmp_path, items):
    rows = ["NF4 vs NVFP4 (block 16) | perplexity ratio 1.0000 | [0.9900, 1.0100] | 40 windows | – | **inconclusive**"]
    code, report = _run(tmp_path, _findings([("(l)", "NF4 stays the best 4-bit format", "inconclusive", rows)]), items["root"])
    assert code == 1
    row = _table(report)[0]
    assert row["status"] == "MISSING" and "nvfp4" in row["note"]


def test_zero_shot_mmlu_accuracy_difference_counts_ties_as_one_over_k(tmp_path, items):
    def item(k, answer, scores):  # choice rule: choice_logprob_sums / choice_tokens, here tokens 2 each
        return {"answer": answer, "choice_logprob_sums": [2 * s for s in scores], "choice_pred": "ABCD"[int(np.argmax(scores))],
                "choice_tokens": [2, 2, 2, 2], "id": f"subj/{k:012x}", "letter_logprobs": None, "letter_pred": None,
                "shots": 0, "subject": "subj"}  # fmt: skip

    # A: right, two-way tie containing the answer (1/2), wrong, four-way tie (1/4) -> 1.75 of 4
    # B: wrong, right, three-way tie containing the answer (1/3), wrong           -> 1.333.. of 4
    a = [item(0, "A", [-1, -2, -3, -4]), item(1, "B", [-1, -1, -3, -4]), item(2, "C", [-1, -2, -3, -4]),
         item(3, "D", [-1, -1, -1, -1])]  # fmt: skip
    b = [item(0, "A", [-2, -1, -3, -4]), item(1, "B", [-2, -1, -3, -4]), item(2, "C", [-1, -1, -1, -4]),
         item(3, "D", [-1, -2, -3, -4])]  # fmt: skip
    _write_items(items["root"], "mmlu_0shot", "nf4", a)
    _write_items(items["root"], "mmlu_0shot", "bf16", b)
    expected = 100 * (1.75 - (1 + 1 / 3)) / 4  # +10.42 pp
    rows = [f"NF4 vs BF16 | {expected:+.2f} pp (McNemar p = 1) | [-50.00, +60.00] | 4 questions | – | **inconclusive**"]
    code, report = _run(tmp_path, _findings([("(a)", A_TITLE, "inconclusive", rows)]), items["root"])
    row = _table(report)[0]
    assert code == 0, report
    assert float(row["recomputed"]) == pytest.approx(expected, abs=1e-6)
    assert row["rule"] == "beats (> 0)"


# --- the committed report -----------------------------------------------------------------------------

PARTIAL_ROWS = {
    ("(a)", "NF4 vs FP4 (E2M1, bnb grid)"): 0.8537,
    ("(a)", "NF4 vs FP4 (E3M0)"): 0.5467,
    ("(a)", "NF4 vs Int4"): 0.8425,
    ("(b)", "NF4 + DQ vs NF4"): 1.0016,
    ("(k)", "FP8 (E4M3) vs Int8 (within ±0.5%)"): 1.0119,
    ("(k)", "FP8 (E5M2) vs Int8 (within ±0.5%)"): 1.0390,
    ("(k)", "FP8 (E4M3) vs NF4"): 0.7913,
    ("(k)", "FP8 (E5M2) vs NF4"): 0.8124,
    ("(l)", "NF4 (block 64) vs NVFP4 (block 16)"): 1.0391,
    ("(l)", "NF4 (block 64) vs MXFP4 (block 32)"): 0.7613,
    ("(l)", "NF4 (block 64) vs AF4-64 (block 64)"): 1.0036,
    ("(l)", "NF4 + DQ (E4M4) vs NF4 (within ±0.5%)"): 1.0023,
}


@pytest.fixture(scope="module")
def committed_report(tmp_path_factory):
    """The script run once on the committed reports/findings.md (the findings profile's run): (exit status, report,
    stdout, stderr)."""
    out = tmp_path_factory.mktemp("committed") / "recomputed.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--findings", "reports/findings.md", "--items", "findings/items", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return done.returncode, out.read_text() if out.exists() else "", done.stdout, done.stderr


def test_reproduces_every_perplexity_ratio_of_the_committed_findings(committed_report):
    code, report, stdout, stderr = committed_report
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert report == stdout
    rows = [r for r in _table(report) if r["model"] == "SmolLM2-135M-Instruct" and r["claim"] in ("(a)", "(b)", "(k)", "(l)")]
    got = {(r["claim"], r["comparison"]): r for r in rows}
    assert set(got) == set(PARTIAL_ROWS)
    for key, printed in PARTIAL_ROWS.items():
        row = got[key]
        assert row["printed statistic"] == f"perplexity ratio {printed:.4f}", key
        assert abs(float(row["recomputed"]) - printed) <= 5e-5, (key, row["recomputed"])
        assert row["status"] == "reproduced", (key, row)
        assert row["same decision"].startswith("yes"), (key, row)
        lo, hi = (float(x) for x in row["recomputed interval"].strip("[]").split(","))
        plo, phi = (float(x) for x in row["printed interval"].strip("[]").split(","))
        assert lo < float(row["recomputed"]) < hi
        # a percentile interval is not the report's BCa one, but on 64 windows they agree closely
        assert abs(lo - plo) < 0.005 and abs(hi - phi) < 0.005, (key, row)
    for claim, verdict in (("(a)", "holds"), ("(b)", "holds"), ("(k)", "does not hold"), ("(l)", "does not hold")):
        assert f"| {claim} | SmolLM2-135M-Instruct | {verdict} | {verdict} | yes |" in report
    # Gemma-3-270M (scored with its <bos>): NF4 + DQ / NF4 1.0016, inside the ±0.5% margin, where without BOS it was 1.0157
    assert "| (b) | Gemma-3-270M | NF4 + DQ vs NF4 | perplexity ratio 1.0016 | 1.001628 |" in report
    for claim in ("(a)", "(b)"):
        assert f"| {claim} | Gemma-3-270M | holds | holds | yes |" in report
    # Gemma's newer types: FP8 E4M3 misses Int8's ±0.5% by its upper end; NVFP4 and AF4 beat NF4, MXFP4 does not
    assert "| (k) | Gemma-3-270M | FP8 (E4M3) vs Int8 (within ±0.5%) | perplexity ratio 1.0067 | 1.006678 |" in report
    assert "| (l) | Gemma-3-270M | NF4 (block 64) vs NVFP4 (block 16) | perplexity ratio 1.0696 | 1.069582 |" in report
    for claim in ("(k)", "(l)"):
        assert f"| {claim} | Gemma-3-270M | does not hold | does not hold | yes |" in report
    # Qwen2.5-Coder-0.5B: (a) NF4 beats FP4 but not Int4 (0.9944 [0.9820, 1.0072]); (b) holds; FP8 E4M3 matches Int8
    assert "| (a) | Qwen2.5-Coder-0.5B-Instruct | NF4 vs Int4 | perplexity ratio 0.9944 | 0.994382 |" in report
    assert "| (k) | Qwen2.5-Coder-0.5B-Instruct | FP8 (E4M3) vs Int8 (within ±0.5%) | perplexity ratio 1.0009 | 1.000875 |" in report
    for claim, verdict in (("(a)", "inconclusive"), ("(b)", "holds"), ("(k)", "inconclusive"), ("(l)", "does not hold")):
        assert f"| {claim} | Qwen2.5-Coder-0.5B-Instruct | {verdict} | {verdict} | yes |" in report
    # one row is borderline, not a mismatch: Gemma's E4M4 DQ / NF4, whose printed (BCa) upper end 1.0053 and the
    # recomputed (percentile) 1.0050 fall either side of the +0.5% margin; the claim's verdict is the same either way
    assert "Rows recomputed: 52; reproduced: 51, borderline: 1, MISMATCH: 0, FLIP: 0, MISSING: 0;" in report
    (borderline,) = [r for r in _table(report) if r["status"] == "borderline"]
    assert (borderline["claim"], borderline["model"]) == ("(l)", "Gemma-3-270M") and "E4M4" in borderline["comparison"]


# (0) and (c): the committed fine-tuning rows, printed statistic -> (printed number, its half unit)
PARTIAL_FINETUNE_ROWS = {
    ("(0)", "LoRA BF16 vs untuned BF16 (per-seed mean over 3 seeds: -0.2956 nats/token, t interval [-0.5951, +0.0038]; "
            "at this mean and spread 4 seeds would decide)"):
        ("-0.2956 nats/token", -0.2956, 5e-5, "inconclusive"),
    ("(0)", "QLoRA NF4 + DQ vs untuned NF4 + DQ (per-seed mean over 3 seeds: -0.4023 nats/token, t interval [-0.7256, -0.0791])"):
        ("-0.4023 nats/token", -0.4023, 5e-5, "holds"),
    ("(0)", "QLoRA FP4 (E2M1, bnb grid) vs untuned FP4 (E2M1, bnb grid) (per-seed mean over 3 seeds: -0.4875 nats/token, "
            "t interval [-0.7775, -0.1975])"):
        ("-0.4875 nats/token", -0.4875, 5e-5, "holds"),
    ("(c)", "held-out NLL (template tokens left out): share of LoRA BF16's gain that QLoRA NF4 + DQ recovers (>= 90%) "
            "(per-seed mean over 3 seeds: recovers 142.2% of the gain, t interval [61.7%, 222.8%]; at this mean and spread "
            "4 seeds would decide)"):
        ("recovers 136.1% of the gain", 136.1, 0.05, "inconclusive"),
    ("(c)", "held-out NLL with the template's tokens (shown, not deciding): share of the gain (per-seed mean over 3 seeds: "
            "recovers 131.2% of the gain, t interval [106.3%, 156.1%])"):
        ("recovers 130.9% of the gain", 130.9, 0.05, "holds"),
    ("(c)", "mmlu: QLoRA NF4 + DQ's gain - LoRA BF16's gain (per-seed mean over 3 seeds: +2.47 pp, t interval [+0.87, +4.06])"):
        ("+2.47 pp", 2.47, 0.005, "inconclusive"),
    ("(c)", "rougeL: QLoRA NF4 + DQ's gain - LoRA BF16's gain (per-seed mean over 3 seeds: +0.16 RougeL points, "
            "t interval [-5.44, +5.76])"):
        ("+0.16 RougeL points", 0.16, 0.005, "inconclusive"),
    ("(d)", "heldout_nll: QLoRA NF4 + DQ's gain - QLoRA FP4's gain (per-seed mean over 3 seeds: +0.0851 nats/token, "
            "t interval [-0.0806, +0.2509])"):
        ("+0.0851 nats/token", 0.0851, 5e-5, "inconclusive"),
    ("(d)", "mmlu: QLoRA NF4 + DQ's gain - QLoRA FP4's gain (per-seed mean over 3 seeds: +3.20 pp, t interval [-0.28, +6.68]; "
            "at this mean and spread 4 seeds would decide)"):
        ("+3.20 pp", 3.20, 0.005, "inconclusive"),
    ("(d)", "rougeL: QLoRA NF4 + DQ's gain - QLoRA FP4's gain (per-seed mean over 3 seeds: +4.98 RougeL points, "
            "t interval [-1.41, +11.37]; at this mean and spread 4 seeds would decide)"):
        ("+4.98 RougeL points", 4.98, 0.005, "inconclusive"),
    ("(f)", "held-out NLL (template tokens left out): all-linear QLoRA NF4 + DQ's gain - attention-only's gain (per-seed mean "
            "over 3 seeds: -0.0221 nats/token, t interval [-0.2828, +0.2386])"):
        ("-0.0221 nats/token", -0.0221, 5e-5, "inconclusive"),
    ("(f)", "held-out NLL: share of LoRA BF16's gain that attention-only QLoRA NF4 + DQ recovers (>= 90%; shown) (per-seed "
            "mean over 3 seeds: recovers 139.5% of the gain, t interval [39.9%, 239.1%])"):
        ("recovers 128.6% of the gain", 128.6, 0.05, "inconclusive"),
    ("(g)", "held-out NLL: share of rank 64's gain that rank 8 recovers (>= 90%) (per-seed mean over 3 seeds: recovers 93.7% "
            "of the gain, t interval [80.1%, 107.4%])"):
        ("recovers 94.9% of the gain", 94.9, 0.05, "inconclusive"),
    ("(g)", "held-out NLL: share of rank 64's gain that rank 16 recovers (>= 90%) (per-seed mean over 3 seeds: recovers "
            "98.9% of the gain, t interval [72.6%, 125.1%]; at this mean and spread 8 seeds would decide)"):
        ("recovers 99.7% of the gain", 99.7, 0.05, "inconclusive"),
}  # fmt: skip


def test_reproduces_the_fine_tuning_rows_of_the_committed_findings(committed_report):
    code, report, stdout, stderr = committed_report
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    rows = [r for r in _table(report) if r["model"] == "SmolLM2-135M-Instruct" and r["claim"] in ("(0)", "(c)", "(d)", "(f)", "(g)")]
    got = {(r["claim"], r["comparison"]): r for r in rows}
    assert set(got) == set(PARTIAL_FINETUNE_ROWS)
    for key, (printed, value, half, decision) in PARTIAL_FINETUNE_ROWS.items():
        row = got[key]
        assert row["printed statistic"].startswith(printed), key
        assert abs(float(row["recomputed"]) - value) <= half + 1e-12, (key, row["recomputed"])
        assert row["status"] == "reproduced", (key, row)
        assert row["same decision"].startswith("yes"), (key, row)
        assert row["printed verdict"].startswith(decision) or row["printed verdict"].startswith(f"({decision}"), key
    note = got[next(iter(PARTIAL_FINETUNE_ROWS))]["note"]
    # the pooled (0) statistic is per token over every seed's examples, template tokens left out, resampled by task;
    # every seed gains, but the t interval over 3 seeds reaches 0: the verdict must follow from both
    assert "pooled over 3 seed(s) x 400 items per token (template tokens left out)" in note
    assert "bootstrap over 39 tasks (whole)" in note and "per-seed -0.291, -0.4184, -0.1774" in note
    assert "bootstrap says holds, t interval inconclusive: inconclusive" in note
    assert "| (0) | SmolLM2-135M-Instruct | inconclusive | inconclusive | yes |" in report
    # (c): QLoRA NF4 + DQ recovers more than LoRA's gain in every seed (116%, 132%, 178%) and the pooled interval lies
    # above 90%, but the t interval over 3 seeds reaches below it: inconclusive, as the report says
    share = got[("(c)", next(k for c, k in PARTIAL_FINETUNE_ROWS if c == "(c)"))]["note"]
    assert "per-seed 116.2, 132, 178.5" in share and "bootstrap says holds, t interval inconclusive: inconclusive" in share
    assert "| (c) | SmolLM2-135M-Instruct | inconclusive | inconclusive | yes |" in report
    # (d): NF4 + DQ gains more than FP4 in MMLU and RougeL in every seed, the pooled intervals exclude 0, but the t
    # intervals over 3 seeds reach it; in held-out NLL it gains less in every seed, its pooled interval reaching 0
    rouge = got[("(d)", next(k for c, k in PARTIAL_FINETUNE_ROWS if c == "(d)" and k.startswith("rougeL")))]["note"]
    assert "per-seed 3.001, 4.046, 7.886" in rouge and "bootstrap says holds, t interval inconclusive: inconclusive" in rouge
    assert "| (d) | SmolLM2-135M-Instruct | inconclusive | inconclusive | yes |" in report
    assert "skipped (d)" not in report and "not measured" not in report
    # (f): the attention-only row's files (variant "attention") paired with the all-linear row's; the seeds disagree
    # in sign (+0.069, -0.137, +0.002)
    assert "per-seed 0.06901, -0.1369, 0.001553" in got[("(f)", next(k for c, k in PARTIAL_FINETUNE_ROWS if c == "(f)"))]["note"]
    assert "| (f) | SmolLM2-135M-Instruct | inconclusive | inconclusive | yes |" in report
    # (g): rank 8 (files of variant "r8") against the all-linear rank-64 row, both from the untuned NF4 + DQ base
    assert "per-seed 89.37, 99.91, 91.9" in got[("(g)", next(k for c, k in PARTIAL_FINETUNE_ROWS if c == "(g)"))]["note"]
    # rank 16 (files "r16"): 99.7% [95.0%, 105.2%] pooled, above 90% by task, but per seed 107 / 103 / 87%
    r16 = got[("(g)", next(k for c, k in PARTIAL_FINETUNE_ROWS if c == "(g)" and "rank 16" in k))]["note"]
    assert "per-seed 107.1, 102.6, 86.97" in r16 and "bootstrap says holds, t interval inconclusive: inconclusive" in r16
    assert "| (g) | SmolLM2-135M-Instruct | inconclusive | inconclusive | yes |" in report


def test_reproduces_the_encoder_rows_of_the_committed_findings(committed_report):
    """(c) and (d) on the encoder: accuracy differences pooled over 5 seeds x 1,000 examples, no failed run."""
    code, report, stdout, stderr = committed_report
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    rows = {r["claim"]: r for r in _table(report) if r["model"] == "all-MiniLM-L6-v2"}
    assert set(rows) == {"(c)", "(d)"}
    for claim, value, per_seed in (("(c)", -0.84, "per-seed -0.4, -0.5, -1.7, -1, -0.6"), ("(d)", -0.12, "per-seed 0.2, -0.7, 0.2, -0.4, 0.1")):
        row = rows[claim]
        assert row["status"] == "reproduced" and float(row["recomputed"]) == pytest.approx(value, abs=1e-9), row
        assert "pooled over 5 seed(s) x 1000 examples" in row["note"] and per_seed in row["note"], row
        assert f"| {claim} | all-MiniLM-L6-v2 | inconclusive | inconclusive | yes |" in report
    assert "left out as failed" not in report  # every encoder run beat its majority class (55.9%)


# --- fine-tuning rows on synthetic items: hand-computed differences in differences ------------------------

FT_TASKS = ("t1", "t2", "t3", "t4")
CONTENT_TOKENS = (2, 3, 5)  # three examples per task: 10 content tokens per task, 40 per seed
TEMPLATE_TOKENS = 2  # per example: 24 per seed


def _write_eval(root: Path, task: str, method: str, quant: str, items: list[dict], seed: int | None = None,
                variant: str | None = None) -> None:  # fmt: skip
    folder = root / "eval" / (f"tiny_{method}_{quant}" + (f"_{variant}" if variant else ""))
    folder.mkdir(parents=True, exist_ok=True)
    head = json.dumps({"format": "qlora-items/1", "task": task})[:-1]
    rows = ",\n".join(json.dumps(i, sort_keys=True) for i in items)
    tail = (f"__{variant}" if variant else "") + ("" if seed is None else f"__s{seed}")
    (folder / f"{task}__{MODEL}__{method}__{quant}{tail}.json").write_text(head + ', "items": [\n' + rows + "\n]}\n")


def _heldout(content_per_token: list[float], template_per_token: float) -> list[dict]:
    """Per task one per-token content NLL; every example of the task has it; the template's tokens cost
    `template_per_token` each."""
    items = []
    for task, x in zip(FT_TASKS, content_per_token):
        for k, t in enumerate(CONTENT_TOKENS):
            content = x * t
            items.append({"content_nll_sum": content, "content_tokens": t, "id": f"{task}/x{k:05d}-{k:012x}",
                          "nll_sum": content + template_per_token * TEMPLATE_TOKENS, "tokens": t + TEMPLATE_TOKENS})  # fmt: skip
    return items


def _question(k: int, answer: str, credit: float) -> dict:
    """A choice-rule MMLU item whose credit is 1 (answer on top), 0.5 (a two-way tie with it) or 0."""
    a = "ABCD".index(answer)
    other = (a + 1) % 4
    scores = [-3.0] * 4
    scores[a] = -1.0 if credit >= 0.5 else -2.0
    scores[other] = -1.0 if credit <= 0.5 else -2.0
    return {"answer": answer, "choice_logprob_sums": [2 * s for s in scores], "choice_pred": "ABCD"[int(np.argmax(scores))],
            "choice_tokens": [2, 2, 2, 2], "id": f"subj/{k:012x}", "letter_logprobs": None, "letter_pred": None,
            "shots": 5, "subject": "subj"}  # fmt: skip


def _prompts(scores_by_task: list[float]) -> list[dict]:
    return [{"id": f"{task}/{k:012x}", "score": s} for task, s in zip(("ta", "tb"), scores_by_task) for k in range(2)]


@pytest.fixture
def ft_items(tmp_path):
    """Two seeds of LoRA BF16 and QLoRA NF4 + DQ and their untuned bases, numbers chosen by hand:

    held-out NLL, content per token (per task t1..t4; every task has 10 content tokens, so a task mean):
      LoRA's change over its base:  seed 0 [-0.2, -0.4, -0.6, -0.8] (-0.5), seed 1 [-0.4 .. -1.0] (-0.7): pooled -0.6
      QLoRA's change:               seed 0 [-0.1, -0.3, -0.5, -0.7] (-0.4), seed 1 all -0.5:      pooled -0.45
      share of the gain: 0.45 / 0.6 = 75.0% pooled; per seed 80% and 71.43%: mean 75.71%
      with the template's tokens (24 per seed, each 0.5 nats cheaper after tuning, 64 tokens per seed):
      LoRA seed 0 (40 x -0.5 - 12) / 64 = -0.5, seed 1 -0.625; QLoRA -0.4375, -0.5: shares 87.5%, 80%;
      pooled 0.46875 / 0.5625 = 83.33%
    MMLU (4 questions, credit 1 / 0.5 tie / 0), in %: BF16 base 12.5; LoRA 25, 25 (gains 12.5, 12.5);
      NF4 + DQ base 25; QLoRA 50, 75 (gains 25, 50): differences in differences 12.5, 37.5 -> +25.00 pp
    RougeL (tasks ta, tb, 2 prompts each; F -> points): BF16 base 0.2, LoRA 0.4 / 0.5 (gains 20, 30);
      NF4 + DQ base 0.1, QLoRA seed 0 ta 0.2 tb 0.3 (gain 15), seed 1 0.3 (gain 20): -5, -10 -> -7.50 points
    """
    root = tmp_path / "items"
    bf16_base, nf4_base = [2.0, 2.5, 3.0, 3.5], [2.1, 2.6, 3.1, 3.6]
    lora = {0: [-0.2, -0.4, -0.6, -0.8], 1: [-0.4, -0.6, -0.8, -1.0]}
    qlora = {0: [-0.1, -0.3, -0.5, -0.7], 1: [-0.5] * 4}
    _write_eval(root, "heldout_nll", "none", "bf16", _heldout(bf16_base, 1.0))
    _write_eval(root, "heldout_nll", "none", "nf4_dq", _heldout(nf4_base, 1.0))
    for s in (0, 1):
        _write_eval(root, "heldout_nll", "lora", "bf16", _heldout([b + c for b, c in zip(bf16_base, lora[s])], 0.5), s)
        _write_eval(root, "heldout_nll", "qlora", "nf4_dq", _heldout([b + c for b, c in zip(nf4_base, qlora[s])], 0.5), s)
    answers = "ABCD"
    mmlu = {("none", "bf16", None): [0.5, 0, 0, 0], ("lora", "bf16", 0): [1, 0, 0, 0], ("lora", "bf16", 1): [0, 1, 0, 0],
            ("none", "nf4_dq", None): [1, 0, 0, 0], ("qlora", "nf4_dq", 0): [1, 1, 0, 0], ("qlora", "nf4_dq", 1): [1, 1, 1, 0]}
    for (method, quant, seed), credits in mmlu.items():
        _write_eval(root, "mmlu", method, quant, [_question(k, answers[k], c) for k, c in enumerate(credits)], seed)
    rouge = {("none", "bf16", None): [0.2, 0.2], ("lora", "bf16", 0): [0.4, 0.4], ("lora", "bf16", 1): [0.5, 0.5],
             ("none", "nf4_dq", None): [0.1, 0.1], ("qlora", "nf4_dq", 0): [0.2, 0.3], ("qlora", "nf4_dq", 1): [0.3, 0.3]}
    for (method, quant, seed), scores in rouge.items():
        _write_eval(root, "rougeL", method, quant, _prompts(scores), seed)
    return root


ZERO = "(0)", "Fine-tuning worked: LoRA BF16 beats the untuned model on held-out instruction NLL"
C = "(c)", "4-bit QLoRA with NF4 + DQ matches 16-bit LoRA after fine-tuning"
SHARE_ROW = ("held-out NLL (template tokens left out): share of LoRA BF16's gain that QLoRA NF4 + DQ recovers (>= 90%) "
             "(per-seed mean over 2 seeds: recovers 75.7% of the gain, t interval [21.3%, 130.2%]) | recovers 75.0% of the gain "
             "| [66.0%, 100.0%] | 24 examples in 4 tasks (resampled whole) | – | **inconclusive**")  # fmt: skip
C_ROWS = [
    SHARE_ROW,
    "held-out NLL with the template's tokens (shown, not deciding): share of the gain (per-seed mean over 2 seeds: recovers "
    "83.8% of the gain, t interval [36.1%, 131.4%]) | recovers 83.3% of the gain | [70.0%, 100.0%] | 24 examples in 4 tasks "
    "(resampled whole) | – | (inconclusive; not counted)",
    "mmlu: QLoRA NF4 + DQ's gain - LoRA BF16's gain (per-seed mean over 2 seeds: +25.00 pp, t interval [-133.83, +183.83]) "
    "| +25.00 pp | [-50.00, +100.00] | 8 questions | – | **inconclusive**",
    "rougeL: QLoRA NF4 + DQ's gain - LoRA BF16's gain (per-seed mean over 2 seeds: -7.50 RougeL points, t interval "
    "[-39.27, +24.27]) | -7.50 RougeL points | [-10.00, -5.00] | 8 prompts in 2 tasks (resampled whole) | – | **inconclusive**",
]  # fmt: skip
# (0): LoRA's change per seed -0.5, -0.7 (t interval -0.6 ± 12.706 x 0.1), QLoRA's -0.4, -0.5 (-0.45 ± 12.706 x 0.05):
# every resample of the tasks gains, but over 2 seeds the t intervals reach 0, so the rows are inconclusive
ZERO_ROWS = [
    "LoRA BF16 vs untuned BF16 (per-seed mean over 2 seeds: -0.6000 nats/token, t interval [-1.8706, +0.6706]) | -0.6000 nats/token "
    "| [-0.9000, -0.3000] | 24 examples in 4 tasks (resampled whole) | – | **inconclusive**",
    "QLoRA NF4 + DQ vs untuned NF4 + DQ (per-seed mean over 2 seeds: -0.4500 nats/token, t interval [-1.0853, +0.1853]) "
    "| -0.4500 nats/token | [-0.6000, -0.3000] | 24 examples in 4 tasks (resampled whole) | – | **inconclusive**",
]  # fmt: skip


# (f) and (g): adapter variants of QLoRA NF4 + DQ (item files "...__qlora__nf4_dq__<variant>__s<seed>"), paired
# with the all-linear rank-64 row (no variant) of ft_items and the same untuned NF4 + DQ base. Changes per task
# (every task the same, 10 content tokens each):
#   attention-only: seed 0 -0.2, seed 1 -0.35; all-linear (ft_items' QLoRA): -0.4, -0.5
#     (f) all-linear's gain - attention-only's: -0.2, -0.15 -> pooled -0.175; t: -0.175 ± 12.706 x 0.025
#     share of LoRA BF16's gain (-0.5, -0.7) it recovers: 40%, 50% -> pooled 0.275 / 0.6 = 45.83%
#   rank 8: seed 0 -0.36, seed 1 -0.5 -> share of rank 64's gain: 90%, 100% -> pooled 0.86 / 0.9 = 95.56%; t: 95 ± 12.706 x 5
F = "(f)", "Adapters on every linear layer are needed: attention-only adapters fall short (paper Fig. 2)"
G = "(g)", "Rank matters little once every linear layer has adapters: ranks 8 and 16 recover >= 90% of rank 64's gain (paper Fig. 3)"
F_ROWS = [
    "held-out NLL (template tokens left out): all-linear QLoRA NF4 + DQ's gain - attention-only's gain (per-seed mean over "
    "2 seeds: -0.1750 nats/token, t interval [-0.4927, +0.1427]) | -0.1750 nats/token | [-0.2000, -0.1500] | 24 examples in "
    "4 tasks (resampled whole) | – | **inconclusive**",
    "held-out NLL: share of LoRA BF16's gain that attention-only QLoRA NF4 + DQ recovers (>= 90%; shown) (per-seed mean over "
    "2 seeds: recovers 45.0% of the gain, t interval [-18.5%, 108.5%]) | recovers 45.8% of the gain | [40.0%, 52.0%] | "
    "24 examples in 4 tasks (resampled whole) | – | (inconclusive; not counted)",
]  # fmt: skip
G_ROWS = [
    "held-out NLL: share of rank 64's gain that rank 8 recovers (>= 90%) (per-seed mean over 2 seeds: recovers 95.0% of the "
    "gain, t interval [31.5%, 158.5%]) | recovers 95.6% of the gain | [90.0%, 100.0%] | 24 examples in 4 tasks (resampled "
    "whole) | – | **inconclusive**",
]  # fmt: skip


def test_adapter_variant_rows_pair_the_variant_files_with_the_all_linear_row(tmp_path, ft_items):
    nf4_base = [2.1, 2.6, 3.1, 3.6]
    for variant, changes in (("attention", {0: -0.2, 1: -0.35}), ("r8", {0: -0.36, 1: -0.5})):
        for s, c in changes.items():
            _write_eval(ft_items, "heldout_nll", "qlora", "nf4_dq", _heldout([b + c for b in nf4_base], 0.5), s, variant)
    code, report = _run(tmp_path, _findings([(*F, "inconclusive", F_ROWS), (*G, "inconclusive", G_ROWS)]), ft_items)
    table = _table(report)
    assert code == 0, report
    assert [r["status"] for r in table] == ["reproduced"] * 3, report
    assert [float(r["recomputed"]) for r in table] == pytest.approx([-0.175, 100 * 0.275 / 0.6, 100 * 0.86 / 0.9], abs=1e-6)
    assert "mean -0.175, t interval [-0.4927, 0.1427]" in table[0]["note"] and table[0]["rule"] == "beats (< 0)"
    assert "mean 45, t interval" in table[1]["note"] and "mean 95, t interval [31.47, 158.5]" in table[2]["note"]
    assert table[2]["rule"] == "at least 90"
    # a variant whose files are missing is MISSING, never silently the all-linear row
    missing = _findings([(*G, "inconclusive", [G_ROWS[0].replace("rank 8", "rank 16")])])
    code, report = _run(tmp_path, missing, ft_items)
    assert code == 1 and _table(report)[0]["status"] == "MISSING", report
    assert "variant 'r16'" in _table(report)[0]["note"]


def test_fine_tuning_rows_reproduce_hand_computed_differences_in_differences(tmp_path, ft_items):
    text = _findings([(*ZERO, "inconclusive", ZERO_ROWS), (*C, "inconclusive", C_ROWS)])
    code, report = _run(tmp_path, text, ft_items)
    table = _table(report)
    assert code == 0, report
    assert [r["status"] for r in table] == ["reproduced"] * 6, report
    got = [float(r["recomputed"]) for r in table]
    assert got == pytest.approx([-0.6, -0.45, 75.0, 100 * 0.46875 / 0.5625, 25.0, -7.5], abs=1e-6)  # printed to 6 decimals
    # (0): a cluster bootstrap over the 4 tasks: every resample is a mean of 4 task changes in [-0.9, -0.3]
    lo, hi = (float(x) for x in table[0]["recomputed interval"].strip("[]").split(","))
    assert -0.9 - 1e-9 <= lo < hi <= -0.3 + 1e-9 and table[0]["rule"] == "beats (< 0)"
    # the per-seed means and t intervals printed in the comparisons (t quantile 12.706 at 1 degree of freedom)
    assert "mean 75.71, t interval [21.26, 130.2]" in table[2]["note"]
    assert "mean 25, t interval [-133.8, 183.8]" in table[4]["note"]
    # rougeL: the bootstrap interval lies outside ±1 (task changes -10 and -5), the t interval does not:
    # the verdict must follow from both, so inconclusive
    assert table[5]["rule"] == "matches ([-1, 1])" and "bootstrap says does not hold, t interval inconclusive" in table[5]["note"]
    assert table[2]["rule"] == "at least 90"
    assert "bootstrap says holds, t interval inconclusive: inconclusive" in table[0]["note"]
    assert "mean -0.45, t interval [-1.085, 0.1853]" in table[1]["note"]
    assert "| (0) | Tiny-LM-1M | inconclusive | inconclusive | yes |" in report
    assert "| (c) | Tiny-LM-1M | inconclusive | inconclusive | yes |" in report


def test_a_row_pooled_over_seeds_is_decided_by_its_t_interval_too_even_when_the_report_omits_it(tmp_path, ft_items):
    # the report's rule: a verdict over rows trained per seed must also follow from the per-seed t interval; a
    # "holds" printed from the cluster bootstrap alone, with no per-seed part, is a FLIP
    bare = [re.sub(r" \(per-seed mean[^)]*\)", "", row).replace("**inconclusive**", "**holds**") for row in ZERO_ROWS]
    assert "per-seed" not in bare[0] and bare[0].endswith("**holds**")
    code, report = _run(tmp_path, _findings([(*ZERO, "holds", bare)]), ft_items)
    table = _table(report)
    assert code == 1
    assert [r["status"] for r in table] == ["FLIP", "FLIP"], report
    assert all("the report prints no per-seed t interval for this row" in r["note"] for r in table)
    assert all(float(r["recomputed"]) == pytest.approx(v, abs=1e-9) for r, v in zip(table, (-0.6, -0.45)))


def test_fine_tuning_rows_flag_tampering(tmp_path, ft_items):
    tampered = [
        ZERO_ROWS[0].replace("| -0.6000 nats/token", "| -0.6002 nats/token"),  # 2 units in the last digit
        ZERO_ROWS[1].replace("in 4 tasks", "in 5 tasks"),  # the wrong number of clusters
    ]
    c_rows = [SHARE_ROW.replace("recovers 75.7% of the gain", "recovers 75.5% of the gain"),  # the per-seed mean
              C_ROWS[2].replace("t interval [-133.83, +183.83]", "t interval [-13.83, +63.83]"),  # the t interval
              C_ROWS[3].replace("**inconclusive**", "**holds**")]  # fmt: skip
    code, report = _run(tmp_path, _findings([(*ZERO, "inconclusive", tampered), (*C, "inconclusive", c_rows)]), ft_items)
    table = _table(report)
    assert code == 1
    assert [r["status"] for r in table] == ["MISMATCH", "MISMATCH", "MISMATCH", "MISMATCH", "FLIP"], report
    assert "statistic -0.6 vs printed -0.6000" not in table[0]["note"] and "vs printed -0.6002" in table[0]["note"]
    assert "4 tasks, printed 5" in table[1]["note"]
    assert "per-seed mean 75.71" in table[2]["note"] and "t interval" in table[3]["note"]


NO_GAIN_ROW = ("held-out NLL (template tokens left out): share of LoRA BF16's gain that QLoRA NF4 + DQ recovers (>= 90%) | "
               "no gain to share: the reference row's own gain over its untuned base is {gain} [{lo}, {hi}] nats/token (24 items), "
               "its interval reaching 0 | – | – | – | **inconclusive**")  # fmt: skip


def test_no_gain_to_share_row_is_checked_as_the_reference_gain(tmp_path, ft_items):
    # as the fixture stands LoRA's own gain is +0.600 with its interval above 0 (every task gains): there is a
    # gain to share, and the share (75%, its cluster bootstrap interval wholly below 90%) decides "does not
    # hold": the printed "no gain to share" flips, though its statistic reproduces
    row = NO_GAIN_ROW.format(gain="+0.600", lo="+0.300", hi="+0.900")
    code, report = _run(tmp_path, _findings([(*C, "inconclusive", [row])]), ft_items)
    table = _table(report)
    assert code == 1
    assert float(table[0]["recomputed"]) == pytest.approx(0.6, abs=1e-9)
    assert table[0]["status"] == "FLIP" and "the reference gain's interval is above 0: share 75.0%" in table[0]["note"]
    code, report = _run(tmp_path, _findings([(*C, "inconclusive", [row.replace("+0.600 [", "+0.700 [")])]), ft_items)
    assert code == 1 and _table(report)[0]["status"] == "MISMATCH"
    # LoRA's changes now per task t1..t4: seed 0 [+0.6, -0.2, -0.6, -1.0], seed 1 [+0.4, -0.4, -0.8, -1.2]:
    # pooled -0.4 (gain +0.400), but t1 got worse, and resamples rich in t1 reach 0: no gain to share
    bf16_base = [2.0, 2.5, 3.0, 3.5]
    for s, change in ((0, [0.6, -0.2, -0.6, -1.0]), (1, [0.4, -0.4, -0.8, -1.2])):
        _write_eval(ft_items, "heldout_nll", "lora", "bf16", _heldout([b + c for b, c in zip(bf16_base, change)], 0.5), s)
    row = NO_GAIN_ROW.format(gain="+0.400", lo="-0.100", hi="+0.900")
    code, report = _run(tmp_path, _findings([(*C, "inconclusive", [row])]), ft_items)
    table = _table(report)
    assert code == 0, report
    assert table[0]["status"] == "reproduced" and float(table[0]["recomputed"]) == pytest.approx(0.4, abs=1e-9)
    lo, hi = (float(x) for x in table[0]["recomputed interval"].strip("[]").split(","))
    assert lo <= 0 < hi and "no gain to share" in table[0]["note"]


def test_cluster_bootstrap_draws_whole_clusters():
    labels = ["a", "a", "b", "c", "c", "c"]
    w = recompute.cluster_bootstrap_weights(labels, np.random.default_rng(0), resamples=500)
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # 3 clusters drawn per resample


def test_student_t_quantile():
    for df, q in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281), (30, 2.0423)):
        assert recompute.student_t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)


# --- classification rows (the encoder's): accuracy differences pooled over the seeds both rows kept ----------

C_TITLE = ("(c)", "4-bit QLoRA with NF4 + DQ matches 16-bit LoRA after fine-tuning (Tables 3 and 4)")


def _labelled(correct: int, collapsed: bool = False) -> list[dict]:
    """20 examples, 12 of class 0 (the majority: 60%): the first `correct` predicted right, the rest wrong;
    collapsed: class 0 for every example (60% right, no better than the majority class)."""
    labels = [0] * 12 + [1] * 8
    preds = [0] * 20 if collapsed else [y if k < correct else 1 - y for k, y in enumerate(labels)]
    return [{"id": f"e{k:05d}-{k:012x}", "label": y, "pred": p} for k, (y, p) in enumerate(zip(labels, preds))]


def test_classification_rows_pair_seeds_and_leave_failed_runs_out(tmp_path):
    root = tmp_path / "items"
    for seed, (lora, qlora) in enumerate(((18, 17), (17, None), (16, 16))):  # QLoRA's seed 1 collapsed to one class
        _write_eval(root, "classification", "lora", "bf16", _labelled(lora), seed)
        _write_eval(root, "classification", "qlora", "nf4_dq", _labelled(qlora or 0, collapsed=qlora is None), seed)
    # seeds 0 and 2: per seed (17 - 18) / 20 = -5 pp and 0 pp; mean -2.5, sd 3.5355, t(0.975, 1) = 12.7062
    half = 12.7062 * 3.5355339 / math.sqrt(2)
    row = (f"classification: QLoRA NF4 + DQ vs LoRA BF16 (per-seed mean over 2 seeds: -2.50 pp, t interval "
           f"[{-2.5 - half:.2f}, +{-2.5 + half:.2f}]) | -2.50 pp | [-7.50, +2.50] | 40 examples (20 examples x seeds; "
           "resampled by example) | ±9 pp | **inconclusive**")  # fmt: skip
    code, report = _run(tmp_path, _findings([(*C_TITLE, "inconclusive", [row])]), root)
    (got,) = _table(report)
    assert code == 0 and got["status"] == "reproduced", report
    assert float(got["recomputed"]) == pytest.approx(-2.5) and got["rule"] == "matches ([-1, 1])"
    assert "pooled over 2 seed(s) x 20 examples" in got["note"] and "per-seed -5, 0; mean -2.5" in got["note"]
    assert "Tiny-LM-1M QLoRA NF4 + DQ seed 1: accuracy 60.0% <= majority class 60.0%" in report
    # pooling the collapsed seed (printed as 3 seeds, -3.33 pp) is a mismatch, not a reproduction
    pooled = row.replace("over 2 seeds: -2.50", "over 3 seeds: -3.33").replace("| -2.50 pp |", "| -3.33 pp |")
    code, report = _run(tmp_path, _findings([(*C_TITLE, "inconclusive", [pooled])]), root)
    assert code == 1 and _table(report)[0]["status"] == "MISMATCH", report
    assert "2 seeds kept by both rows, printed 3" in _table(report)[0]["note"]
