"""Per-item results: stable ids, the typed container, and its file (atomic write, validating load)."""

import dataclasses
import json
import math

import pytest
import torch

from qlora.eval.items import ItemResults, LabelItem, MMLUItem, RougeItem, TokenNLL, text_id, tokens_id, unique_ids
from qlora.eval.result import Task


def _mmlu(i="anatomy/abc", pred="B", choice=True):
    kw = {"choice_pred": "C", "choice_logprob_sums": (-3.0, -2.5, -1.0, -7.25), "choice_tokens": (2, 1, 1, 3)} if choice else {}
    letters = {"B": (-1.5, -0.5, -2.0, -3.0), "C": (-1.5, -2.0, -0.5, -3.0)}[pred]
    return MMLUItem(i, "anatomy", "C", 5, pred, letters, **kw)


SAMPLES = {
    Task.PERPLEXITY: (TokenNLL("w00000-aa", 255, 812.5), TokenNLL("w00001-bb", 255, 790.125)),
    Task.HELDOUT_NLL: (TokenNLL("x00000-aa", 12, 20.0),),
    Task.MMLU: (_mmlu(), _mmlu("anatomy/def", "C", choice=False)),
    Task.CLASSIFICATION: (LabelItem("e00000-aa", 1, 1), LabelItem("e00001-bb", 0, 2)),
    Task.ROUGE_L: (RougeItem("t1/aa", 0.0), RougeItem("t1/bb", 1.0)),
}


def test_ids():
    a = torch.tensor([5, 6, 7])
    assert tokens_id("w", 3, a) == tokens_id("w", 3, [5, 6, 7]) and tokens_id("w", 3, a).startswith("w00003-")
    assert tokens_id("w", 3, a) != tokens_id("w", 3, [5, 6, 8])
    assert text_id("anatomy", "q", "a", "b") != text_id("anatomy", "qa", "b")  # parts are separated
    assert len(text_id("s", "x").split("/")[1]) == 12
    assert unique_ids(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]


@pytest.mark.parametrize("task", list(SAMPLES))
def test_round_trip_is_exact(tmp_path, task):
    r = ItemResults(task, SAMPLES[task])
    path = r.save(tmp_path / "items.json")
    assert ItemResults.load(path) == r
    text = path.read_text()
    assert text == r.to_text() and len(text.splitlines()) == len(r) + 2  # one item per line
    assert json.loads(text)["format"] == "qlora-items/1"


def test_derived_fields():
    assert _mmlu().letter_correct == 0.0 and _mmlu().choice_correct == 1.0 and _mmlu().raw_letter_pred == "B"
    assert MMLUItem("q", "s", "C", 0, "C", (-2.0, -3.0, -1.0, -4.0)).letter_correct == 1.0
    assert _mmlu(choice=False).choice_correct is None
    assert LabelItem("e", 2, 2).correct and not LabelItem("e", 2, 1).correct


def test_ties_count_one_over_k():
    tie2 = MMLUItem("q", "s", "C", 0, "B", (-3.0, -1.0, -1.0, -4.0))  # B and C tie at the top
    assert tie2.letter_correct == 0.5 and dataclasses.replace(tie2, answer="B").letter_correct == 0.5
    assert dataclasses.replace(tie2, answer="A").letter_correct == 0.0
    assert MMLUItem("q", "s", "D", 0, "A", (-1.0,) * 4).letter_correct == 0.25
    choice = MMLUItem("q", "s", "A", 0, "A", (-1.0,) * 4, choice_pred="A", choice_logprob_sums=(-2.0, -1.0, -3.0, -9.0),
                      choice_tokens=(2, 1, 3, 1))  # per token -1, -1, -1, -9: a three-way tie  # fmt: skip
    assert choice.choice_correct == pytest.approx(1 / 3)


def test_rotations_cancel_a_letter_preference():
    """A model that prefers the letter C whatever the question: every choice gets C once over the four
    rotations, so the scores tie and the credit is chance; content adds to the right choice."""
    c_bias = (-3.0, -3.0, -0.1, -3.0)
    item = MMLUItem("q", "s", "B", 0, "A", c_bias, rotated_letter_logprobs=(c_bias, c_bias, c_bias))
    assert item.letter_scores == pytest.approx((-2.275,) * 4) and item.letter_correct == 0.25 and item.raw_letter_pred == "C"
    # the same preference plus +1 for choice B, wherever B is shown: rotation r shows B at position (1 - r) mod 4
    rot = [list(c_bias) for _ in range(4)]
    for r in range(4):
        rot[r][(1 - r) % 4] += 1.0
    item = MMLUItem("q", "s", "B", 0, "B", tuple(rot[0]), rotated_letter_logprobs=tuple(tuple(x) for x in rot[1:]))
    assert item.letter_correct == 1.0 and item.letter_scores[1] == pytest.approx(-1.275)
    with pytest.raises(ValueError, match="letter_pred 'A' is not the first maximum"):
        MMLUItem("q", "s", "B", 0, "A", tuple(rot[0]), rotated_letter_logprobs=tuple(tuple(x) for x in rot[1:]))
    with pytest.raises(ValueError, match="rotated_letter_logprobs must hold 3 rotations"):
        MMLUItem("q", "s", "B", 0, "C", c_bias, rotated_letter_logprobs=(c_bias,))


@pytest.mark.parametrize("make,match", [
    (lambda: TokenNLL("w", 0, 1.0), "tokens must be an int >= 1"),
    (lambda: TokenNLL("w", 3, math.nan), "nll_sum must be a finite number"),
    (lambda: TokenNLL("", 3, 1.0), "id must be a non-empty string"),
    (lambda: RougeItem("p", 1.5), r"score must be a finite number in \[0.0, 1.0\]"),
    (lambda: MMLUItem("q", "s", "E", 0, "A", (0.0,) * 4), "answer must be one of"),
    (lambda: MMLUItem("q", "s", "A", 0, "A", (0.0,) * 3), "letter_logprobs must hold 4 values"),
    (lambda: MMLUItem("q", "s", "A", 0, "A", (0.0,) * 4, choice_pred="A"), "must all be set or all be None"),
    (lambda: MMLUItem("q", "s", "A", 0, "B", (0.0, -1.0, -2.0, -3.0)), "letter_pred 'B' is not the first maximum"),
    (lambda: MMLUItem("q", "s", "A", 0, None, (0.0,) * 4), "both be set or both be None"),
    (lambda: MMLUItem("q", "s", "A", 0, None, None), "needs the letter rule or the choice rule"),
    (lambda: MMLUItem("q", "s", "A", 0, None, None, "A", (-1.0, -2.0, -3.0, -4.0), (1, 1, 1, 1), ((0.0,) * 4,) * 3),
     "rotated_letter_logprobs without letter_logprobs"),
    (lambda: ItemResults(Task.MMLU, (TokenNLL("w", 1, 1.0),)), "must be a MMLUItem"),
    (lambda: ItemResults(Task.ROUGE_L, ()), "no items"),
    (lambda: ItemResults(Task.ROUGE_L, (RougeItem("p", 0.5), RougeItem("p", 0.25))), "1 item id.* more than once, e.g. 'p'"),
    (lambda: ItemResults("bogus", (RougeItem("p", 0.5),)), r"task must be one of \['perplexity'"),
])  # fmt: skip
def test_invalid_items_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _tamper(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["items"][1].update(nll_sum=None), r"items\[1\] \(id 'w00001-bb'\): nll_sum must be a finite number"),
    (lambda d: d["items"][0].pop("tokens"), r"items\[0\] must have exactly the keys \['id', 'tokens', 'nll_sum'\]"),
    (lambda d: d["items"][0].update(extra=1), r"items\[0\] must have exactly the keys"),
    (lambda d: d["items"][1].update(id="w00000-aa"), "key 'items': 1 item id.* more than once, e.g. 'w00000-aa'"),
    (lambda d: d.update(task="mmlu"), r"items\[0\] must have exactly the keys \['id', 'subject'"),
    (lambda d: d.update(task="ppl"), "key 'task': task must be one of"),
    (lambda d: d.update(format="other/1"), "key 'format' must be 'qlora-items/1', got 'other/1'"),
    (lambda d: d.update(items={}), "key 'items' must be a list"),
    (lambda d: d.update(owner="me"), r"unknown key\(s\) \['owner'\]"),
])  # fmt: skip
def test_tampered_files_are_refused_naming_file_and_key(tmp_path, edit, match):
    path = ItemResults(Task.PERPLEXITY, SAMPLES[Task.PERPLEXITY]).save(tmp_path / "ppl_items.json")
    _tamper(path, edit)
    with pytest.raises(ValueError, match=match) as e:
        ItemResults.load(path)
    assert str(path) in str(e.value)


def test_non_finite_and_broken_json_are_refused(tmp_path):
    path = ItemResults(Task.PERPLEXITY, SAMPLES[Task.PERPLEXITY]).save(tmp_path / "items.json")
    path.write_text(path.read_text().replace("790.125", "NaN"))
    with pytest.raises(ValueError, match=f"{path}: NaN is not a finite number"):
        ItemResults.load(path)
    path.write_text(path.read_text().replace("NaN", "Infinity"))
    with pytest.raises(ValueError, match="Infinity is not a finite number"):
        ItemResults.load(path)
    path.write_text(path.read_text().replace("Infinity", "1.0")[:-10])
    with pytest.raises(ValueError, match="not valid JSON"):
        ItemResults.load(path)


def test_a_choice_only_item_has_no_letter_rule(tmp_path):
    """Table 2's zero-shot items record the choice rule only: no letter prediction to read, none to compare."""
    from qlora.report.paired import compare

    item = MMLUItem("q", "s", "B", 0, None, None, "B", (-2.0, -1.0, -3.0, -9.0), (1, 1, 1, 1))
    assert item.choice_correct == 1.0 and item.letter_correct is None and item.letter_scores is None and item.raw_letter_pred is None
    results = ItemResults(Task.MMLU_ZERO_SHOT, (item, dataclasses.replace(item, id="r")))
    results.save(tmp_path / "i.json")
    assert ItemResults.load(tmp_path / "i.json") == results  # round trip with null letter fields
    with pytest.raises(ValueError, match="letter accuracy needs the letter rule"):
        compare(results, results, metric="accuracy")
    from qlora.eval.result import Metric
    from qlora.report.gains import gain_items

    # the gains (claims c, d) refuse it by the same rule, naming the item; the choice rule is read
    with pytest.raises(ValueError, match="letter accuracy needs the letter rule in every MMLU item \\(q:"):
        gain_items(results, results, results, results, Metric.ACCURACY)
    assert gain_items(results, results, results, results, Metric.CHOICE_ACCURACY) is not None
