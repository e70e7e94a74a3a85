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
    assert [p.label for p in c.parts] == [f"{t}: QLoRA NF4 + DQ vs LoRA BF16 (tuned rows; no untuned base of each)" for t in ("rougeL", "heldout_nll")]
    assert all(p.needed.startswith("80% power at this margin needs ~") for p in c.parts)
    assert by[(Claim.TUNING, "holds")].verdict is Verdict.HOLDS
    assert by[(Claim.E, "holds")].verdict is Verdict.HOLDS and by[(Claim.E, "fails")].verdict is Verdict.DOES_NOT_HOLD
    assert "4.12695 bits/param counted from the bytes" in by[(Claim.E, "holds")].parts[0].detail
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


def _tuned_per_seed_and_base(gains_per_seed, n=400):
    """Held-out NLL of LoRA BF16 trained once per seed (pooled as the report pools them) and of its untuned
    base, evaluated once: seed s is `gains_per_seed[s]` nats/token better than the base."""
    import dataclasses

    from qlora.report.records import pool_seeds

    tokens = [20 + i % 5 for i in range(n)]
    base = fx.normal(n, 2.0, 0.2, seed=50)
    out = [ev("heldout_nll", "bf16", Method.NONE, fx.heldout(base, tokens), "m")]
    for seed, gain in enumerate(gains_per_seed):
        e = ev("heldout_nll", "bf16", Method.LORA, fx.heldout(base - gain + fx.normal(n, 0, 0.02, seed=60 + seed), tokens), "m")
        out.append(dataclasses.replace(e, record=dataclasses.replace(e.record, seed=seed)))
    return pool_seeds(out)


@pytest.mark.parametrize("gains, expected", [
    ((0.30, 0.28, 0.32), Verdict.HOLDS),         # every seed gains alike: decided
    ((0.60, 0.45, -0.10), Verdict.INCONCLUSIVE),  # the pooled items gain, the seeds disagree
])  # fmt: skip
def test_a_tuned_row_against_its_untuned_base_must_also_decide_over_seeds(gains, expected):
    # the untuned base is evaluated once; each seed of the tuned row is compared with it (claim (0))
    (zero,) = [f for f in assess(_tuned_per_seed_and_base(gains), []) if f.claim is Claim.TUNING]
    (part,) = zero.parts
    assert part.comparison.ci_high < 0  # the pooled item-level interval alone would say "holds"
    assert part.verdict is expected
    assert part.label.startswith("LoRA BF16 vs untuned BF16 (per-seed mean over 3 seeds: ")
    mean = sum(gains) / 3
    assert f"-{mean:.4f} nats/token" in part.label or f"-{mean:.3f}" in part.label
    # where the seeds do not decide, how many would at this mean and spread: gains 0.60, 0.45, -0.10 have mean
    # 0.3167 and sd 0.3686; t(n-1) x sd / sqrt(n) < 0.3167 first at n = 8 (2.365 x 0.3686 / 2.828 = 0.308)
    assert ("seeds would decide" in part.label) is (expected is Verdict.INCONCLUSIVE)
    if expected is Verdict.INCONCLUSIVE:
        assert part.label.endswith("; at this mean and spread 8 seeds would decide)")


# --- fine-tuning gains over each row's own untuned base (differences in differences) ----------------------

def _gains(model, qlora_share, fp4_share, n=240, tasks=8, lora_gain=0.5):
    """Held-out NLL (content fields) of each untuned base and each tuned row; LoRA BF16 gains `lora_gain`
    nats/token over its base, QLoRA NF4+DQ `qlora_share` of 0.5 over its own (worse) base, FP4 `fp4_share`."""
    from qlora.eval.items import ItemResults, TokenNLL

    tokens = [10 + i % 7 for i in range(n)]
    noise = lambda seed: fx.normal(n, 0, 0.05, seed=seed)  # noqa: E731
    base = {"bf16": fx.normal(n, 2.0, 0.3, seed=40)}
    base["nf4_dq"], base["fp4"] = base["bf16"] + 0.25, base["bf16"] + 0.35  # quantization costs before training
    tuned = {"bf16": base["bf16"] - lora_gain + noise(41), "nf4_dq": base["nf4_dq"] - 0.5 * qlora_share + noise(42),
             "fp4": base["fp4"] - 0.5 * fp4_share + noise(43)}  # fmt: skip

    def items(rates):
        return ItemResults("heldout_nll", tuple(TokenNLL(f"task{i % tasks}/x{i:05d}", t + 2, float(r) * t + 1.0, t, float(r) * t)
                                                 for i, (r, t) in enumerate(zip(rates, tokens))))  # fmt: skip

    out = [ev("heldout_nll", q, Method.NONE, items(rates), model) for q, rates in base.items()]
    out += [ev("heldout_nll", "bf16", Method.LORA, items(tuned["bf16"]), model),
            ev("heldout_nll", "nf4_dq", Method.QLORA, items(tuned["nf4_dq"]), model),
            ev("heldout_nll", "fp4", Method.QLORA, items(tuned["fp4"]), model)]
    return [_content(e) for e in out]


def _content(e):
    import dataclasses

    from qlora.eval.result import Metric

    return dataclasses.replace(e, record=dataclasses.replace(e.record, score=dataclasses.replace(e.record.score, metric=Metric.CONTENT_NLL)))


@pytest.mark.parametrize("share, fp4_share, c_verdict, d_verdict", [
    (1.0, 0.6, Verdict.HOLDS, Verdict.HOLDS),          # NF4+DQ keeps all of LoRA's gain, FP4 trails
    (0.5, 0.9, Verdict.DOES_NOT_HOLD, Verdict.DOES_NOT_HOLD),
])  # fmt: skip
def test_claims_c_and_d_compare_gains_over_own_bases(share, fp4_share, c_verdict, d_verdict):
    found = {f.claim: f for f in assess(_gains("m", share, fp4_share), [])}
    c, d = found[Claim.C], found[Claim.D]
    assert c.verdict is c_verdict and d.verdict is d_verdict
    nll = c.parts[0]
    assert nll.comparison.estimate == pytest.approx(share, abs=0.03) and "share of LoRA BF16's gain" in nll.label
    assert nll.comparison.clusters == 8 and "cluster bootstrap over 8 tasks" in nll.comparison.method
    assert nll.needed.endswith("tasks (used 8)") and not c.parts[1].counts  # with template tokens: shown, not deciding
    # (0): every tuned row beats its own untuned base
    tuning = found[Claim.TUNING]
    assert [p.label for p in tuning.parts] == ["LoRA BF16 vs untuned BF16", "QLoRA NF4 + DQ vs untuned NF4 + DQ",
                                                "QLoRA FP4 (E2M1, bnb grid) vs untuned FP4 (E2M1, bnb grid)"]
    assert tuning.verdict is Verdict.HOLDS
    text = findings(_gains("m", share, fp4_share), [], profile="t")
    assert "recovers " in text and "resampled whole" in text


@pytest.mark.parametrize("lora_gain", [0.0, -0.3])
def test_a_share_of_no_gain_is_not_measured(lora_gain):
    """When the reference (LoRA BF16) gains nothing over its base, or gets worse, the share of its gain that
    QLoRA recovers is a ratio of noise: the part says so instead of deciding."""
    found = {f.claim: f for f in assess(_gains("m", 1.0, 0.6, lora_gain=lora_gain), [])}
    share = found[Claim.C].parts[0]
    assert share.verdict is Verdict.INCONCLUSIVE and share.comparison is None
    assert share.detail.startswith("no gain to share: the reference row's own gain over its untuned base is ")
    own = float(share.detail.split(" is ")[1].split(" ")[0])
    assert own == pytest.approx(lora_gain, abs=0.02)
    # the same data with a real gain decides
    assert {f.claim: f for f in assess(_gains("m", 1.0, 0.6), [])}[Claim.C].parts[0].comparison is not None


def test_holm_leaves_a_marginal_part_inconclusive():
    from qlora.report.findings import Part, Test, holm
    from qlora.report.paired import Effect, PairedComparison
    from qlora.eval.result import Metric, Task

    def part(est, half):  # superiority parts with the given interval
        c = PairedComparison(Task.HELDOUT_NLL, Metric.NLL, Effect.DIFFERENCE, est, est - half, est + half, 100, 0.1, None, None, 0.95, "x")
        return Part(f"p{est}", Verdict.HOLDS if est - half > 0 else Verdict.INCONCLUSIVE, c, test=Test.SUPERIORITY)

    strong, marginal = part(1.0, 0.2), part(0.21, 0.2)  # z = 9.8 and 2.06: p ~ 1e-22 and 0.04
    assert 0.03 < marginal.p_value < 0.05
    out = holm([strong, marginal, part(0.21, 0.2)])  # three decided parts: the 0.04s need p <= 0.025, 0.05
    assert out[0].verdict is Verdict.HOLDS and out[1].verdict is Verdict.INCONCLUSIVE and "not after Holm over 3 parts" in out[1].label
    assert holm([strong, marginal])[1].verdict is Verdict.HOLDS  # two parts: 0.04 <= 0.05 / 1 after the first


def test_failed_runs_are_reported_and_left_out():
    import dataclasses

    from qlora.report.failures import split_failed

    from qlora.eval.items import ItemResults, LabelItem

    gold = [0] * 60 + [1] * 40

    def run(preds, seed):
        items = ItemResults("classification", tuple(LabelItem(f"e{i:05d}", g, p) for i, (g, p) in enumerate(zip(gold, preds))))
        e = ev("classification", "nf4_dq", Method.QLORA, items, "enc")
        return dataclasses.replace(e, record=dataclasses.replace(e.record, seed=seed))

    collapsed = run([0] * 100, 1)  # always the majority class: 60% = the baseline
    learned = run([0] * 55 + [1] * 5 + [1] * 30 + [0] * 10, 2)  # 85%
    assert collapsed.record.value == pytest.approx(0.6) and learned.record.value == pytest.approx(0.85)
    kept, checked = split_failed([collapsed, learned])
    assert kept == [learned] and [r.seed for r in checked] == [1, 2] and [r.failed for r in checked] == [True, False]
    assert checked[0].majority == pytest.approx(0.6) and "does not beat the majority class" in checked[0].describe()
    text = findings([], [], profile="t", checked=checked)
    assert "## Failed training runs" in text and "seed 1: accuracy 60.0% does not beat" in text
    assert "checked against the majority class of their test items: 2, 1 failed" in text
    assert "The closest of the others: enc qlora nf4_dq, seed 2: accuracy 85.0% beats the majority class (60.0%)" in text
    passing = findings([], [], profile="t", checked=checked[1:])  # every run beat it: said, not silent
    assert "## Failed training runs" not in passing and "1, 0 failed" in passing


def test_adapter_placement_and_rank_claims():
    """(f) all-linear beats attention-only on the gain over the same untuned base; (g) ranks 8 and 16 recover
    their share of rank 64's gain."""
    import dataclasses

    evals = _gains("m", 1.0, 0.6)
    by_quant = {(e.record.method, e.record.quant.value): e for e in evals}
    nf4 = by_quant[(Method.QLORA, "nf4_dq")]

    def variant(name, scale):  # the NF4+DQ row's items with its gain scaled
        from qlora.eval.items import ItemResults, TokenNLL

        base = {it.id: it for it in by_quant[(Method.NONE, "nf4_dq")].items.items}
        items = tuple(TokenNLL(it.id, it.tokens, base[it.id].nll_sum + scale * (it.nll_sum - base[it.id].nll_sum),
                               it.content_tokens, base[it.id].content_nll_sum + scale * (it.content_nll_sum - base[it.id].content_nll_sum))
                      for it in nf4.items.items)  # fmt: skip
        return dataclasses.replace(nf4, record=dataclasses.replace(nf4.record, variant=name), items=ItemResults("heldout_nll", items))

    found = {f.claim: f for f in assess(evals + [variant("attention", 0.5), variant("r8", 0.98), variant("r16", 0.99)], [])}
    assert found[Claim.F].verdict is Verdict.HOLDS and found[Claim.F].parts[0].comparison.estimate < 0
    assert found[Claim.G].verdict is Verdict.HOLDS
    assert [round(p.comparison.estimate, 2) for p in found[Claim.G].parts] == [0.98, 0.99]
    # the tables' rows stay the lora section's: a variant never fills a cell
    from qlora.report.tables import find

    assert find(evals + [variant("attention", 0.5)], nf4.record.task, Method.QLORA, nf4.record.quant, "m") is nf4


def test_new_formats_and_zero_claims():
    evals = _table2("m", nf4=(0.05, 0.02), fp4=(0.10, 0.02), e3m0=(0.20, 0.02), int4=(0.15, 0.02), dq=(0.0, 0.0005))
    evals.append(ev("perplexity", "int8", Method.NONE, fx.windows(BASE + _noise(0.001, 0.0005, seed=50)), "m"))
    evals.append(ev("perplexity", "fp8_e4m3", Method.NONE, fx.windows(BASE + _noise(0.001, 0.0005, seed=51)), "m"))
    evals.append(ev("perplexity", "nvfp4", Method.NONE, fx.windows(BASE + _noise(0.08, 0.02, seed=52)), "m"))
    evals.append(ev("perplexity", "nf4_dq_e4m4", Method.NONE, fx.windows(BASE + _noise(0.05, 0.02, seed=1) + _noise(0.0, 0.0005, seed=53)), "m"))
    found = {f.claim: f for f in assess(evals, [])}
    k = found[Claim.K]
    assert [p.label for p in k.parts] == ["FP8 (E4M3) vs Int8 (within ±0.5%)", "FP8 (E4M3) vs NF4"] and k.verdict is Verdict.HOLDS
    lp = found[Claim.L].parts
    assert [p.label for p in lp] == ["NF4 (block 64) vs NVFP4 (block 16)", "NF4 + DQ (E4M4) vs NF4 (within ±0.5%)"]
    assert found[Claim.L].verdict is Verdict.HOLDS
    j = found[Claim.J]
    nf4 = [p for p in j.parts if p.counts]
    assert len(nf4) == 3 and all(p.verdict is Verdict.HOLDS and p.detail.startswith("367 of 367") for p in nf4)  # NF4, + DQ, + DQ (E4M4)
    assert j.verdict is Verdict.HOLDS and any(p.label.startswith("Int4") for p in j.parts)


def test_robustness_section_from_the_benchmark_file(tmp_path):
    import json

    from qlora.report.robustness import robustness_section

    assert robustness_section(tmp_path / "none.json") == ""
    part = {"label": "NF4 + DQ vs NF4", "reference": "holds", "draws": ["holds", "does not hold"], "survives": False,
            "mean_over_draws": 1.006, "t_interval_over_draws": [0.988, 1.024]}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps({"label": "re-quantization of GGUF-sourced models", "width": 1.0,
                                                 "models": [{"model": "m", "survival": {"b": {"parts": [part]}}}]}))  # fmt: skip
    text = robustness_section(tmp_path / "r.json")
    assert "## Robustness of (a) and (b): re-quantization of GGUF-sourced models" in text
    assert "| m | (b) | NF4 + DQ vs NF4 | holds | holds, does not hold | 1.0060 [0.9880, 1.0240] | **no** |" in text


def test_shipping_section_from_the_benchmark_file(tmp_path):
    import json

    from qlora.report.shipping import keeps_gain_verdict, shipping_section

    assert shipping_section(tmp_path / "none.json") == ""
    assert [keeps_gain_verdict(*ci) for ci in ((0.95, 1.01), (0.02, 0.03), (0.85, 0.97))] == ["holds", "does not hold", "inconclusive"]
    row = {"key": "gguf_q4_0", "label": "GGUF q4_0", "nll": 2.4, "nll_n": 160, "d_nll": 0.33, "d_nll_ci": [0.23, 0.44],
           "gain_kept": 0.8, "gain_kept_ci": [0.686, 0.871], "d_mmlu": 0.0, "d_mmlu_ci": [-0.075, 0.075], "mmlu_n": 100}  # fmt: skip
    rows = [{"key": "untuned", "nll": 3.7164}, {"key": "adapter", "nll": 2.0761, "nll_n": 160, "mmlu_n": 100}, row]
    (tmp_path / "s.json").write_text(json.dumps({"rows": rows, "train": {"steps": 40, "lora_rank": 64, "lr": 5e-4}}))
    text = shipping_section(tmp_path / "s.json")
    assert "3.7164 -> 2.0761 nats/token" in text and "trained 40 steps" in text
    assert "| GGUF q4_0 | 2.4000 | +0.3300 [+0.2300, +0.4400] (160) | 80.0% [68.6%, 87.1%] | +0.0 pp [-7.5, +7.5] (100) | **does not hold** |" in text
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [row]}))
    with pytest.raises(ValueError, match="expected rows 'adapter' and 'untuned'"):
        shipping_section(tmp_path / "bad.json")
