"""scripts/recompute_findings.py: the independent recomputation of a findings report's paired comparisons
from the per-item files (issue 22's done-when) reproduces known numbers, flags a tampered statistic or a
flipped verdict, and reproduces every perplexity-ratio row of the committed reports/findings_partial.md."""

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

Equivalence margins: perplexity ±0.5% (claim b); differences in differences of accuracy ±1 pp.

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
    ("(a)", "NF4 vs FP4 (E2M1, bnb grid)"): 0.8712,
    ("(a)", "NF4 vs FP4 (E3M0)"): 0.5726,
    ("(a)", "NF4 vs Int4"): 0.8454,
    ("(b)", "NF4 + DQ vs NF4"): 1.0009,
    ("(k)", "FP8 (E4M3) vs Int8 (within ±0.5%)"): 1.0111,
    ("(k)", "FP8 (E5M2) vs Int8 (within ±0.5%)"): 1.0397,
    ("(k)", "FP8 (E4M3) vs NF4"): 0.7919,
    ("(k)", "FP8 (E5M2) vs NF4"): 0.8143,
    ("(l)", "NF4 (block 64) vs NVFP4 (block 16)"): 1.0489,
    ("(l)", "NF4 (block 64) vs MXFP4 (block 32)"): 0.7816,
    ("(l)", "NF4 (block 64) vs AF4-64 (block 64)"): 1.0095,
    ("(l)", "NF4 + DQ (E4M4) vs NF4 (within ±0.5%)"): 1.0000,
}


def test_reproduces_every_perplexity_ratio_of_the_committed_partial_findings(tmp_path):
    out = tmp_path / "recomputed.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--findings", "reports/findings_partial.md", "--items", "findings/items", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = out.read_text()
    assert report == done.stdout
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
    assert "Rows recomputed: 12; reproduced: 12," in report
