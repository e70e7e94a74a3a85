"""Gains pooled over training seeds: MMLU questions (no task of their own) are resampled by question, since a
question's answers under the seeds are not independent draws."""

import numpy as np

from qlora.eval.items import ItemResults, MMLUItem
from qlora.eval.result import Metric, Task
from qlora.report.gains import gain_difference, gain_items
from qlora.report.paired import _weighted


def _mmlu(ids, right):
    """Choice-rule items: right (choice A, the answer) or wrong (choice B)."""
    scores = {True: (-1.0, -2.0, -3.0, -4.0), False: (-2.0, -1.0, -3.0, -4.0)}
    return ItemResults(Task.MMLU, tuple(MMLUItem(i, "anatomy", "A", 5, None, None, "A" if r else "B", scores[r], (1, 1, 1, 1))
                                        for i, r in zip(ids, right)))  # fmt: skip


def test_mmlu_gains_pooled_over_seeds_resample_whole_questions():
    rng = np.random.default_rng(0)
    n = 200
    ids = [f"anatomy/q{i:03d}" for i in range(n)]
    base_row, base_ref = rng.random(n) < 0.3, rng.random(n) < 0.3
    row, ref = rng.random(n) < 0.4, rng.random(n) < 0.3  # the same answers under every seed: fully correlated
    pooled = lambda right: _mmlu([f"s{s}:{i}" for s in range(3) for i in ids], list(right) * 3)  # noqa: E731
    g = gain_items(pooled(row), _mmlu(ids, base_row), pooled(ref), _mmlu(ids, base_ref), Metric.CHOICE_ACCURACY)
    assert g.unit == "questions" and len(set(g.clusters)) == n and len(g.row) == 3 * n
    c = gain_difference(g, Task.MMLU, Metric.CHOICE_ACCURACY)
    expected = (row.mean() - base_row.mean()) - (ref.mean() - base_ref.mean())
    assert abs(c.estimate - expected) < 1e-12
    assert c.clusters == n and c.cluster_unit == "questions" and f"cluster bootstrap over {n} questions" in c.method
    # treating the 3n seed x question pairs as independent understates the spread by about sqrt(3)
    _, low, high, _, _ = _weighted(g.row - g.ref, g.weight, 0.95, 2000, 0, None)
    assert (c.ci_high - c.ci_low) / (high - low) > 1.4
    # one seed (or items with a task of their own): nothing to pool, no question clusters
    one = gain_items(_mmlu([f"s0:{i}" for i in ids], row), _mmlu(ids, base_row), _mmlu([f"s0:{i}" for i in ids], ref),
                     _mmlu(ids, base_ref), Metric.CHOICE_ACCURACY)  # fmt: skip
    assert one.unit == "tasks" and all(cl is None for cl in one.clusters)
    assert gain_difference(one, Task.MMLU, Metric.CHOICE_ACCURACY).clusters is None


def test_the_findings_table_names_the_question_clusters():
    from qlora.report.findings import Part, Test, _part_row
    from qlora.report.paired import Verdict

    rng = np.random.default_rng(1)
    ids = [f"anatomy/q{i:03d}" for i in range(50)]
    right = lambda p: rng.random(50) < p  # noqa: E731
    pooled = lambda r: _mmlu([f"s{s}:{i}" for s in range(3) for i in ids], list(r) * 3)  # noqa: E731
    g = gain_items(pooled(right(0.5)), _mmlu(ids, right(0.3)), pooled(right(0.4)), _mmlu(ids, right(0.3)), Metric.CHOICE_ACCURACY)
    c = gain_difference(g, Task.MMLU, Metric.CHOICE_ACCURACY)
    row = _part_row(Part("mmlu gain", Verdict.INCONCLUSIVE, c, test=Test.EQUIVALENCE, bound=0.01))
    assert "| 150 questions (50 questions x seeds; resampled by question) |" in row


def test_a_paired_accuracy_comparison_of_rows_pooled_over_seeds_resamples_whole_questions():
    from qlora.report.paired import compare

    rng = np.random.default_rng(2)
    ids = [f"anatomy/q{i:03d}" for i in range(300)]
    row, ref = rng.random(300) < 0.45, rng.random(300) < 0.35
    pooled = lambda right: _mmlu([f"s{s}:{i}" for s in range(3) for i in ids], list(right) * 3)  # noqa: E731
    c = compare(pooled(row), pooled(ref), metric="choice_accuracy")
    assert c.cluster_unit == "questions" and c.clusters == 300 and c.p_value is None
    assert abs(c.estimate - (row.mean() - ref.mean())) < 1e-12
    one = compare(_mmlu(ids, row), _mmlu(ids, ref), metric="choice_accuracy")  # one seed: McNemar, as before
    assert one.clusters is None and one.p_value is not None and abs(one.estimate - c.estimate) < 1e-12
    # three fully correlated seeds carry one seed's information: about the same interval, not sqrt(3) narrower
    assert 0.8 < (c.ci_high - c.ci_low) / (one.ci_high - one.ci_low) < 1.25
