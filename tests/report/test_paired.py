"""Paired statistics pinned to textbook values, on fixtures: a clear difference, an identical pair,
a too-small sample."""

import dataclasses
import math

import numpy as np
import pytest

from qlora.eval.result import Metric, Task
from qlora.report.paired import (Direction, Effect, PairedComparison, Verdict, compare, equivalence, mcnemar_p,
                                 newcombe_paired_interval, pair_items, t_interval, superiority)  # fmt: skip
from tests.report import fixtures as fx

Z = 1.959963984540054


def test_t_interval_textbook_values():
    # 1..5: mean 3, s = 1.5811, s / sqrt(5) = 0.70711, t(0.975, df 4) = 2.77645 -> half width 1.96324
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert low == pytest.approx(3.0 - 1.96324, abs=1e-5) and high == pytest.approx(3.0 + 1.96324, abs=1e-5)
    # two values at 90%: t(0.95, df 1) = 6.31375, s / sqrt(2) = 0.5 -> half width 3.15688
    assert t_interval([0.0, 1.0], 0.90)[1:] == pytest.approx((0.5 - 3.15688, 0.5 + 3.15688), abs=1e-5)


def test_t_interval_refuses_one_value_and_bad_confidence():
    with pytest.raises(ValueError, match="at least 2 values, got 1"):
        t_interval([0.3])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.5"):
        t_interval([0.1, 0.2], 1.5)


def test_mcnemar_exact_textbook_values():
    assert mcnemar_p(1, 9) == 0.021484375  # 2 * (1 + 10) / 2**10
    assert mcnemar_p(9, 1) == 0.021484375
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)


def test_newcombe_paired_interval_published_value():
    # Fagerland, Lydersen & Laake, contingencytables (Cavo et al. 2012): -0.0621 (-0.1186 to -0.0046)
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=6e-5)


def test_accuracy_clear_difference():
    row, ref = fx.correct_pairs(both=40, row_only=25, ref_only=5, neither=30)
    c = compare(fx.labels(row), fx.labels(ref))
    assert c.effect is Effect.DIFFERENCE and c.metric is Metric.ACCURACY and c.n == 100
    assert c.estimate == pytest.approx(0.20) and c.discordant == (25, 5)
    assert c.p_value == pytest.approx(0.000324, abs=2e-6)  # binomial(25 of 30, 1/2), two-sided
    assert c.ci_low > 0 and c.direction is Direction.BETTER and superiority(c) is Verdict.HOLDS
    # MDE: (z + z_0.8) * paired SD / sqrt(n), SD of d in {-1, 0, 1}: ((b + c) - n d^2) / (n - 1)
    se = math.sqrt((30 - 100 * 0.04) / 99 / 100)
    assert c.mde == pytest.approx((Z + 0.8416212335729143) * se)
    worse = compare(fx.labels(ref), fx.labels(row))
    assert worse.estimate == pytest.approx(-0.2) and superiority(worse) is Verdict.DOES_NOT_HOLD


def test_mmlu_letter_and_choice_rules():
    row, ref = fx.correct_pairs(10, 0, 0, 10)
    choice_row, choice_ref = fx.correct_pairs(10, 8, 0, 2)
    a, b = fx.mmlu(row, choice_row), fx.mmlu(ref, choice_ref)
    assert compare(a, b).estimate == 0.0  # letters: identical
    c = compare(a, b, metric=Metric.CHOICE_ACCURACY)
    assert c.estimate == pytest.approx(0.4) and c.p_value == pytest.approx(2 / 256)
    with pytest.raises(ValueError, match="choice log-likelihoods"):
        compare(fx.mmlu(row), fx.mmlu(ref), metric=Metric.CHOICE_ACCURACY)
    with pytest.raises(ValueError, match="metric rougeL_f does not fit task mmlu"):
        compare(a, b, metric=Metric.ROUGE_L_F)


def test_identical_pairs():
    rates = fx.normal(64, 3.2, 0.3)
    c = compare(fx.windows(rates), fx.windows(rates))
    assert (c.estimate, c.ci_low, c.ci_high, c.mde) == (1.0, 1.0, 1.0, 1.0)
    assert c.covers_null and c.direction is Direction.NO_DIFFERENCE and equivalence(c, 0.005) is Verdict.HOLDS
    row = [True] * 30 + [False] * 20
    acc = compare(fx.labels(row), fx.labels(row))
    assert acc.estimate == 0.0 and acc.p_value == 1.0 and acc.ci_low < 0 < acc.ci_high
    assert acc.mde > 0  # no discordant pair seen: the spread is unknown, not zero
    assert superiority(acc) is Verdict.INCONCLUSIVE


def test_perplexity_ratio_and_bootstrap_against_closed_form():
    ref = fx.normal(400, 3.0, 0.4, seed=1)
    diff = fx.normal(400, 0.02, 0.05, seed=2)  # per-token NLL differences: ratio exp(0.02)
    c = compare(fx.windows(ref + diff), fx.windows(ref))
    assert c.effect is Effect.RATIO and c.n == 400
    assert c.estimate == pytest.approx(math.exp(0.02), rel=1e-12)
    half = Z * 0.05 / math.sqrt(400)  # equal windows: the mean's normal interval, on the log scale
    assert math.log(c.ci_low) == pytest.approx(0.02 - half, abs=0.1 * half)
    assert math.log(c.ci_high) == pytest.approx(0.02 + half, abs=0.1 * half)
    assert math.log(c.mde) == pytest.approx((Z + 0.8416212335729143) * 0.05 / 20, rel=1e-9)
    assert c.direction is Direction.WORSE and superiority(c) is Verdict.DOES_NOT_HOLD  # higher perplexity
    assert "BCa" in c.method


def test_rouge_mean_difference_against_closed_form_and_seeded():
    ref = np.clip(fx.normal(300, 0.4, 0.1, seed=3), 0, 1)
    d = fx.normal(300, 0.03, 0.08, seed=4)
    row = np.clip(ref + d, 0, 1)
    d = row - ref
    c = compare(fx.rouge(row), fx.rouge(ref), seed=7)
    half = Z * d.std(ddof=1) / math.sqrt(300)
    assert c.estimate == pytest.approx(d.mean())
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.1 * half)
    again = compare(fx.rouge(row), fx.rouge(ref), seed=7)
    other = compare(fx.rouge(row), fx.rouge(ref), seed=8)
    assert again == c and (other.ci_low, other.ci_high) != (c.ci_low, c.ci_high)  # reproducible to the bit


def test_heldout_nll_is_token_weighted():
    tokens = [10, 30, 20, 40]
    ref, row = fx.heldout([2.0, 2.1, 1.9, 2.2], tokens), fx.heldout([1.5, 1.8, 1.6, 1.7], tokens)
    c = compare(row, ref)
    want = sum(t * (a - b) for t, a, b in zip(tokens, [1.5, 1.8, 1.6, 1.7], [2.0, 2.1, 1.9, 2.2])) / 100
    assert c.metric is Metric.NLL and c.estimate == pytest.approx(want)
    assert c.ci_high < 0 and c.direction is Direction.BETTER  # lower NLL is better


def test_too_small_sample():
    with pytest.raises(ValueError, match="at least 2 shared items, got 1"):
        compare(fx.rouge([0.5]), fx.rouge([0.4]))
    c = compare(fx.rouge([0.5, 0.1, 0.6, 0.2]), fx.rouge([0.3, 0.4, 0.2, 0.35]))
    assert c.covers_null and superiority(c) is Verdict.INCONCLUSIVE
    assert c.mde > abs(c.estimate)  # the sample could not have detected an effect of this size
    acc = compare(*(fx.labels(x) for x in fx.correct_pairs(2, 2, 0, 1)))
    assert acc.p_value == 0.5 and acc.covers_null and superiority(acc) is Verdict.INCONCLUSIVE


def test_pairing_errors_name_the_counts():
    with pytest.raises(ValueError, match=r"row has 3, reference 4, shared 3 \(e.g. only in row \[\], only in reference \['p/0003'\]\)"):
        compare(fx.rouge([0.1, 0.2, 0.3]), fx.rouge([0.1, 0.2, 0.3, 0.4]))
    assert compare(fx.rouge([0.1, 0.2, 0.3]), fx.rouge([0.1, 0.2, 0.3, 0.4]), strict=False).n == 3
    with pytest.raises(ValueError, match="row has 2, reference 2, shared 0"):
        compare(fx.windows([1.0, 2.0], prefix="a"), fx.windows([1.0, 2.0], prefix="b"), strict=False)
    with pytest.raises(ValueError, match="cannot pair perplexity items with rougeL items"):
        pair_items(fx.windows([1.0, 2.0]), fx.rouge([0.1, 0.2]))
    with pytest.raises(ValueError, match="item 'w00000' measured different things"):
        compare(fx.windows([1.0, 2.0], tokens=255), fx.windows([1.0, 2.0], tokens=127))


def _comparison(low, high, effect=Effect.DIFFERENCE, metric=Metric.ACCURACY):
    return PairedComparison(Task.MMLU, metric, effect, (low + high) / 2, low, high, 100, 0.01, None, None, 0.95, "fixture")


@pytest.mark.parametrize("low,high,verdict", [
    (-0.004, 0.009, Verdict.HOLDS), (0.011, 0.05, Verdict.DOES_NOT_HOLD), (-0.2, -0.02, Verdict.DOES_NOT_HOLD),
    (-0.02, 0.005, Verdict.INCONCLUSIVE), (-0.03, 0.03, Verdict.INCONCLUSIVE),
])  # fmt: skip
def test_equivalence_verdicts(low, high, verdict):
    assert equivalence(_comparison(low, high), 0.01) is verdict


def test_ratio_margins_and_direction():
    c = _comparison(0.996, 1.004, Effect.RATIO, Metric.PERPLEXITY)
    assert c.null == 1.0 and c.margin_bounds(0.005) == (0.995, 1.005) and equivalence(c, 0.005) is Verdict.HOLDS
    assert _comparison(0.90, 0.95, Effect.RATIO, Metric.PERPLEXITY).direction is Direction.BETTER
    with pytest.raises(ValueError, match="margin must be > 0"):
        equivalence(c, 0.0)


def test_clustered_heldout_nll_resamples_whole_tasks():
    """Items of one task move together: the interval over 4 tasks is wider than the item-level one, and the
    estimate (token-weighted) is the same; content NLL pairs the content fields."""
    from qlora.eval.items import ItemResults, TokenNLL
    from qlora.eval.result import Metric, Task
    from qlora.report.paired import compare

    rng = np.random.default_rng(0)
    shift = {"a": -0.6, "b": -0.1, "c": 0.2, "d": -0.3}  # a task-level effect: what item-level resampling hides
    rows, refs, flat_rows, flat_refs = [], [], [], []
    for task, s in shift.items():
        for i in range(25):
            base = float(rng.normal(2.0, 0.2)) * 10
            row = base + (s + float(rng.normal(0, 0.05))) * 10
            rows.append(TokenNLL(f"{task}/x{i:05d}", 10, row, 8, row * 0.8))
            refs.append(TokenNLL(f"{task}/x{i:05d}", 10, base, 8, base * 0.8))
            flat_rows.append(TokenNLL(f"x{task}{i:05d}", 10, row))
            flat_refs.append(TokenNLL(f"x{task}{i:05d}", 10, base))
    clustered = compare(ItemResults(Task.HELDOUT_NLL, rows), ItemResults(Task.HELDOUT_NLL, refs))
    flat = compare(ItemResults(Task.HELDOUT_NLL, flat_rows), ItemResults(Task.HELDOUT_NLL, flat_refs))
    assert clustered.estimate == pytest.approx(flat.estimate) and clustered.n == 100
    assert (clustered.ci_high - clustered.ci_low) > 3 * (flat.ci_high - flat.ci_low)
    assert "cluster bootstrap over 4 tasks" in clustered.method and "cluster" not in flat.method
    content = compare(ItemResults(Task.HELDOUT_NLL, rows), ItemResults(Task.HELDOUT_NLL, refs), metric=Metric.CONTENT_NLL)
    assert content.estimate == pytest.approx(clustered.estimate)  # content sums are 0.8 of the sums over 8 of 10 tokens
    with pytest.raises(ValueError, match="content_nll needs"):
        compare(ItemResults(Task.HELDOUT_NLL, flat_rows), ItemResults(Task.HELDOUT_NLL, flat_refs), metric=Metric.CONTENT_NLL)


def test_marks_and_verdicts_need_the_interval_and_the_test_to_agree():
    """Newcombe's interval can exclude 0 while the exact McNemar test is not significant (e.g. 5 vs 0
    discordant pairs: p = 0.0625): then the difference is not marked and no verdict rests on it."""
    from qlora.eval.result import Metric, Task
    from qlora.report.paired import Direction, Effect, PairedComparison

    c = PairedComparison(Task.MMLU_ZERO_SHOT, Metric.ACCURACY, Effect.DIFFERENCE, 0.125, 0.01, 0.26, 40, 0.1, 0.0625, (5, 0), 0.95, "x")
    assert not c.covers_null and not c.significant and c.direction is Direction.NO_DIFFERENCE
    d = dataclasses.replace(c, p_value=0.01)
    assert d.significant and d.direction is Direction.BETTER


def _nll_items(sums, tokens):
    from qlora.eval.items import ItemResults, TokenNLL

    return ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(f"x{i}", t, s) for i, (s, t) in enumerate(zip(sums, tokens))))


def test_gain_share_values_and_interval():
    from qlora.report.paired import gain_share

    tokens = [10, 20, 30, 40]
    untuned = _nll_items([30.0, 60.0, 90.0, 120.0], tokens)  # 3.0 nats/token
    tuned = _nll_items([20.0, 42.0, 57.0, 81.0], tokens)  # 200/100 = 2.0 nats/token: gain 1.0
    assert gain_share(tuned, tuned, untuned).estimate == 1.0
    assert gain_share(untuned, tuned, untuned).estimate == 0.0
    variant = _nll_items([25.0, 50.0, 74.0, 101.0], tokens)  # 250/100 = 2.5: keeps half
    share = gain_share(variant, tuned, untuned)
    assert share.estimate == pytest.approx(0.5) and share.gain == pytest.approx(1.0) and share.n == 4
    assert share.ci_low <= 0.5 <= share.ci_high and share.ci_high - share.ci_low > 0
    worse = _nll_items([33.0, 66.0, 99.0, 132.0], tokens)  # 3.3: worse than not tuning
    assert gain_share(worse, tuned, untuned).estimate == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="tuned is not better than untuned"):
        gain_share(variant, untuned, tuned)


def test_a_row_pooled_over_seeds_pairs_each_seed_with_an_unpooled_base():
    from qlora.eval.items import ItemResults, TokenNLL
    from qlora.report.paired import broadcast_seeds

    base = ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(f"t/{i}", 10, 30.0 + i) for i in range(4)))
    tuned = ItemResults.concat([ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(f"s{k}:t/{i}", 10, 20.0 + i + k) for i in range(4)))
                                for k in (0, 2)])  # fmt: skip
    row, ref = broadcast_seeds(tuned, base)
    assert row is tuned and ref.ids == tuple(f"s{k}:t/{i}" for k in (0, 2) for i in range(4))
    c = compare(tuned, base)  # seed 0: -10 nats per example, seed 2: -8
    assert c.n == 8 and c.estimate == pytest.approx(-0.9)
    assert compare(base, tuned).estimate == pytest.approx(0.9)
    other = ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(f"u/{i}", 10, 30.0) for i in range(4)))
    with pytest.raises(ValueError, match="item ids do not match"):
        compare(tuned, other)
