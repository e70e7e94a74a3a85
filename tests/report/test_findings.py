"""reports/findings.md: each verdict kind of each claim, from fixtures whose statistics are known."""

import numpy as np
import pytest

from qlora.report import Margins, Method, TrainRecord, Verdict, assess
from qlora.report.findings import Claim, combine, findings
from tests.report import fixtures as fx
from tests.report.test_tables import ev

BASE = fx.normal(64, 3.0, 0.3, seed=0)


def _noise(mean, sd, seed, n=64):
    return fx.normal(n, mean, sd, seed=seed)


def _table2(model, nf4, fp4, e3m0, int4, dq):
    """Perplexity windows: per-token NLL offsets (mean, sd) of each data type from BF16's."""
    out = [ev("perplexity", "bf16", Method.NONE, fx.windows(BASE), model)]
    nf4_rates = BASE + _noise(*nf4, seed=1)
    out.append(ev("perplexity", "nf4", Method.NONE, fx.windows(nf4_rates), model))
    out.append(ev("perplexity", "nf4_dq", Method.NONE, fx.windows(nf4_rates + _noise(*dq, seed=2)), model))
    for q, spec, seed in (("fp4", fp4, 3), ("fp4_e3m0", e3m0, 4), ("int4", int4, 5)):
        if spec is not None:
            out.append(ev("perplexity", q, Method.NONE, fx.windows(BASE + _noise(*spec, seed=seed)), model))
    return out


def _tuned(model, nf4_vs_lora, fp4_vs_nf4, n=400):
    """Held-out NLL, RougeL and MMLU of untuned, LoRA BF16, QLoRA NF4+DQ and QLoRA FP4."""
    tokens = [20 + i % 5 for i in range(n)]
    lora = fx.normal(n, 1.5, 0.2, seed=10)
    nf4 = lora + fx.normal(n, *nf4_vs_lora, seed=11)
    fp4 = nf4 + fx.normal(n, *fp4_vs_nf4, seed=12)
    rouge = np.clip(fx.normal(n, 0.4, 0.1, seed=13), 0.05, 0.95)
    out = [
        ev("heldout_nll", "bf16", Method.NONE, fx.heldout(lora + 0.5 + fx.normal(n, 0, 0.1, seed=14), tokens), model),
        ev("heldout_nll", "bf16", Method.LORA, fx.heldout(lora, tokens), model),
        ev("heldout_nll", "nf4_dq", Method.QLORA, fx.heldout(nf4, tokens), model),
        ev("heldout_nll", "fp4", Method.QLORA, fx.heldout(fp4, tokens), model),
        ev("rougeL", "bf16", Method.LORA, fx.rouge(rouge), model),
        # RougeL mirrors the NLL: lower NLL, higher RougeL (scaled into the margin's units)
        ev("rougeL", "nf4_dq", Method.QLORA, fx.rouge(np.clip(rouge - (nf4 - lora) / 50, 0, 1)), model),
        ev("rougeL", "fp4", Method.QLORA, fx.rouge(np.clip(rouge - (fp4 - lora) / 50, 0, 1)), model),
    ]
    return out


def _trains(model, bits=4.126953125, weight=70.0):
    return [TrainRecord(model, "nf4_dq", Method.QLORA, bits, weight, 18.0, 1500.0, "cpu_peak_rss", 10, 900.0, (3.0, 1.0)),
            TrainRecord(model, "bf16", Method.LORA, 16.0, 256.0, 18.0, 2000.0, "cpu_peak_rss", 10, 1100.0, (3.0, 1.5))]  # fmt: skip


@pytest.fixture(scope="module")
def verdicts():
    evals = (
        _table2("holds", nf4=(0.05, 0.02), fp4=(0.10, 0.02), e3m0=(0.20, 0.02), int4=(0.15, 0.02), dq=(0.0, 0.0005))
        + _table2("fails", nf4=(0.10, 0.02), fp4=(0.05, 0.02), e3m0=(0.20, 0.02), int4=(0.15, 0.02), dq=(0.03, 0.005))
        + _table2("unclear", nf4=(0.10, 0.3), fp4=(0.10, 0.3), e3m0=None, int4=(0.10, 0.3), dq=(0.0, 0.05))
        + _tuned("holds", nf4_vs_lora=(0.0, 0.02), fp4_vs_nf4=(0.05, 0.02))
        + _tuned("fails", nf4_vs_lora=(0.05, 0.02), fp4_vs_nf4=(-0.05, 0.02))
        + _tuned("unclear", nf4_vs_lora=(0.0, 0.5), fp4_vs_nf4=(0.0, 0.5))
    )
    trains = _trains("holds") + _trains("fails", bits=4.5, weight=300.0)
    found = assess(evals, trains)
    return {(f.claim, f.model): f for f in found}, evals, trains


@pytest.mark.parametrize("claim", [Claim.A, Claim.B, Claim.C, Claim.D])
def test_each_claim_has_each_verdict(verdicts, claim):
    by = verdicts[0]
    assert by[(claim, "holds")].verdict is Verdict.HOLDS
    assert by[(claim, "fails")].verdict is Verdict.DOES_NOT_HOLD
    assert by[(claim, "unclear")].verdict is Verdict.INCONCLUSIVE


def test_claim_details(verdicts):
    by = verdicts[0]
    a = by[(Claim.A, "fails")]
    assert [p.verdict for p in a.parts] == [Verdict.DOES_NOT_HOLD, Verdict.HOLDS, Verdict.HOLDS]  # FP4 beats NF4 here
    assert a.parts[0].comparison.estimate == pytest.approx(np.exp(0.05))
    unclear = by[(Claim.A, "unclear")]
    assert unclear.parts[1].detail == "not measured (reference missing)"  # no E3M0 run
    b = by[(Claim.B, "holds")].parts[0].comparison
    assert 0.995 <= b.ci_low and b.ci_high <= 1.005 and b.mde < 1.005
    c = by[(Claim.C, "holds")]
    assert [p.label for p in c.parts] == ["rougeL: QLoRA NF4 + DQ vs LoRA BF16", "heldout_nll: QLoRA NF4 + DQ vs LoRA BF16"]
    assert by[(Claim.TUNING, "holds")].verdict is Verdict.HOLDS
    assert by[(Claim.E, "holds")].verdict is Verdict.HOLDS and by[(Claim.E, "fails")].verdict is Verdict.DOES_NOT_HOLD
    assert "4.12695 stored bits/param" in by[(Claim.E, "holds")].parts[0].detail
    assert (Claim.E, "unclear") not in by  # no training records


def test_records_without_items_are_inconclusive(verdicts):
    _, evals, _ = verdicts
    bare = [type(e)(e.record) for e in evals if e.record.model == "holds"]
    found = {f.claim: f for f in assess(bare, [])}
    assert found[Claim.A].verdict is Verdict.INCONCLUSIVE
    assert found[Claim.A].parts[0].detail == "no per-item results to pair"


def test_combine():
    assert combine([Verdict.HOLDS, Verdict.HOLDS]) is Verdict.HOLDS
    assert combine([Verdict.HOLDS, Verdict.INCONCLUSIVE]) is Verdict.INCONCLUSIVE
    assert combine([Verdict.INCONCLUSIVE, Verdict.DOES_NOT_HOLD]) is Verdict.DOES_NOT_HOLD
    assert combine([]) is Verdict.INCONCLUSIVE


def test_markdown(verdicts):
    _, evals, trains = verdicts
    text = findings(evals, trains, profile="findings")
    assert text.startswith("# Findings") and "Produced by the `findings` profile." in text
    assert "dequantized from 4–5-bit GGUF" in text and "perplexity ±0.5% (claim b)" in text
    assert "| (a) NF4 beats FP4 (E2M1 and E3M0) and Int4 in perplexity (Table 2) | fails | **does not hold** |" in text
    assert "### unclear: inconclusive" in text and "64 windows" in text and "400 examples" in text
    assert text == findings(evals, trains, profile="findings")  # byte-reproducible
    with pytest.raises(ValueError, match="profile must name"):
        findings(evals, trains, profile="")
    with pytest.raises(ValueError, match="margin accuracy must be a number in"):
        Margins(accuracy=2.0)


def _seeded(model, nf4_minus_fp4_per_seed, n=400):
    """Held-out NLL of QLoRA NF4+DQ and FP4 trained once per seed, pooled as the report pools them."""
    import dataclasses

    from qlora.report.records import pool_seeds

    tokens = [20 + i % 5 for i in range(n)]
    out = []
    for seed, effect in enumerate(nf4_minus_fp4_per_seed):
        fp4 = fx.normal(n, 1.5, 0.2, seed=20 + seed)
        nf4 = fp4 + effect + fx.normal(n, 0, 0.02, seed=30 + seed)
        for quant, rates in (("nf4_dq", nf4), ("fp4", fp4)):
            e = ev("heldout_nll", quant, Method.QLORA, fx.heldout(rates, tokens), model)
            out.append(dataclasses.replace(e, record=dataclasses.replace(e.record, seed=seed)))
    return pool_seeds(out)


@pytest.mark.parametrize("per_seed, expected", [
    ((-0.10, -0.11, -0.09), Verdict.HOLDS),          # every seed agrees: decided
    ((-0.30, -0.25, +0.15), Verdict.INCONCLUSIVE),   # decided per item, not over seeds (run-to-run noise)
])  # fmt: skip
def test_rows_trained_per_seed_must_also_decide_over_seeds(per_seed, expected):
    (d,) = [f for f in assess(_seeded("seeds", per_seed), []) if f.claim is Claim.D]
    (part,) = [p for p in d.parts if p.comparison is not None]
    assert part.comparison.ci_high < 0  # the item-level interval alone would say "holds"
    assert part.verdict is expected
    assert "per-seed mean over 3 seeds" in part.label
