"""The report's MMLU checks flag a row that answers one letter, or whose top scores tie, and only then."""

import dataclasses

import pytest

from qlora.config import Method
from qlora.eval.items import ItemResults, MMLUItem
from qlora.eval.result import Metric, Score, Task
from qlora.report.mmlu_checks import MAX_LETTER_SHARE, Rule, mmlu_checks, render_checks
from qlora.report.records import EvalRecord, Evaluation

LETTERS = "ABCD"


def _item(i, choice, letters, rotated=None):
    choice_pred = LETTERS[max(range(4), key=lambda j: (choice[j], -j))]
    scores = letters if rotated is None else None
    if rotated is not None:  # the letter rule averages the four rotations (qlora.eval.items.letter_scores)
        rots = (letters, *rotated)
        scores = [sum(rots[r][(j - r) % 4] for r in range(4)) / 4 for j in range(4)]
    letter_pred = LETTERS[max(range(4), key=lambda j: (scores[j], -j))]
    return MMLUItem(f"q{i}", "anatomy", "A", 0, letter_pred, tuple(letters), choice_pred, tuple(choice), (1, 1, 1, 1),
                    rotated_letter_logprobs=rotated)  # fmt: skip


def _eval(items, task=Task.MMLU_ZERO_SHOT):
    record = EvalRecord("m", "nf4", Method.NONE, "MMLU", Score(task, Metric.CHOICE_ACCURACY, 0.25, len(items), 0.1, 0.4))
    return Evaluation(record, ItemResults(task, tuple(items)))


def test_a_spread_out_row_without_ties_passes():
    items = [_item(i, [-1.0 - (j == i % 4) * -0.5 + 0.01 * j for j in range(4)], [-1.0, -1.1, -1.2, -1.3]) for i in range(8)]
    (check,) = mmlu_checks([_eval(items)])  # unrotated letters are not a reported rule
    assert check.rule == Rule.CHOICE and check.n == 8 and check.letter_share == pytest.approx(0.25) and check.ties == 0
    assert not check.flagged and "None of the 1 is flagged" in render_checks([check])


def test_one_letter_or_a_tie_is_flagged():
    always_c = [_item(i, [-2.0, -2.0 + 0.001 * i, -1.0, -2.5], [-1.0, -1.1, -1.2, -1.3]) for i in range(10)]
    (check,) = mmlu_checks([_eval(always_c)])
    assert check.letter == "C" and check.letter_share == 1.0 > MAX_LETTER_SHARE and check.flagged
    tied = [_item(0, [-1.0, -1.0, -2.0, -3.0], [0.0] * 4), _item(1, [-3.0, -1.0, -2.0, -3.5], [0.0] * 4),
            _item(2, [-3.0, -2.0, -1.0, -3.5], [0.0] * 4), _item(3, [-3.0, -2.0, -3.5, -1.0], [0.0] * 4)]  # fmt: skip
    (check,) = mmlu_checks([_eval(tied)])
    assert check.ties == 1 and check.letter_share == 0.25 and check.flagged
    text = render_checks([check])
    assert "**1 of 1 flagged.**" in text and "| **yes** |" in text and "| choice log-likelihood | 4 | A (25.0%) | 1 |" in text


def test_rotated_letters_are_checked_and_cancel_a_letter_preference():
    prefers_a = [0.0, -5.0, -5.0, -5.0]  # the letter A whatever it names
    rotated = ([0.0, -5.0, -5.0, -5.0],) * 3
    items = [_item(i, [-1.0 - 0.1 * ((j - i) % 4) for j in range(4)], prefers_a, rotated) for i in range(4)]
    checks = {c.rule: c for c in mmlu_checks([_eval(items, Task.MMLU)])}
    assert set(checks) == {Rule.CHOICE, Rule.LETTER}
    # averaged over rotations every choice gets the same letter score: a 4-way tie on every question
    assert checks[Rule.LETTER].ties == 4 and checks[Rule.LETTER].flagged
    assert checks[Rule.CHOICE].ties == 0 and not checks[Rule.CHOICE].flagged
    assert mmlu_checks([]) == [] and render_checks([]) == ""


def test_a_tie_between_identical_choice_texts_is_the_datas_and_not_flagged():
    from qlora.data.mmlu import MMLUQuestion
    from qlora.eval.mmlu import question_ids
    from qlora.report.mmlu_checks import identical_choices

    dup = MMLUQuestion("Such tactics are", ("open", "manipulative", "fair", "manipulative"), 1, "public_relations")
    plain = MMLUQuestion("Pick one", ("a", "b", "c", "d"), 0, "anatomy")
    same = identical_choices([dup, plain])
    dup_id, plain_id = question_ids([dup, plain])
    assert same == {dup_id: (frozenset({1, 3}),)}
    # B and D (the same text) tie at the top: the data's tie; the plain question's A/B tie is a real one
    items = [dataclasses.replace(_item(0, [-2.0, -1.0, -3.0, -1.0], [0.0] * 4), id=dup_id),
             dataclasses.replace(_item(1, [-1.0, -1.0, -3.0, -4.0], [0.0] * 4), id=plain_id)]  # fmt: skip
    (check,) = mmlu_checks([_eval(items)], same)
    assert (check.ties, check.data_ties) == (1, 1) and check.flagged
    untied = [items[0], dataclasses.replace(_item(1, [-1.0, -2.0, -3.0, -4.0], [0.0] * 4), id=plain_id)]
    (check,) = mmlu_checks([_eval(untied)], same)
    assert (check.ties, check.data_ties, check.letter_share) == (0, 1, 0.5) and not check.flagged
    assert "| 0 | 1 | no |" in render_checks([check])
    pooled = [dataclasses.replace(it, id=f"s{seed}:{it.id}") for seed in (0, 1) for it in untied]  # rows trained per seed
    (check,) = mmlu_checks([_eval(pooled)], same)
    assert (check.ties, check.data_ties) == (0, 2) and not check.flagged
    (check,) = mmlu_checks([_eval(untied)])  # without the questions every tie counts
    assert (check.ties, check.data_ties) == (1, 0) and check.flagged
