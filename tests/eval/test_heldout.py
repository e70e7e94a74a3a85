"""Held-out instruction NLL: response tokens only, batched with padding, per example."""

import math

import pytest
import torch

from qlora.data.tokenization import tokenize_instructions
from qlora.eval.heldout import evaluate_heldout_nll
from qlora.eval.result import Metric, Task
from tests.eval.test_evaluators import NextTokenOracle
from tests.tiny_text import tiny_llama, tiny_tokenizer


def _example(start: int, length: int, prompt: int, vocab: int = 11):
    ids = (torch.arange(length) + start) % vocab  # each next token is (token + 1) mod vocab
    labels = ids.clone()
    labels[:prompt] = -100
    return {"input_ids": ids, "labels": labels}


def test_known_nll_on_response_tokens_only():
    examples = [_example(0, 9, 4), _example(3, 5, 1), _example(7, 12, 11)]
    r = evaluate_heldout_nll(NextTokenOracle(11, 0.8), examples, batch_size=2, progress=False)
    counts = [5, 4, 1]  # labels != -100 after the first position
    assert [it.tokens for it in r.items.items] == counts
    for it, c in zip(r.items.items, counts):
        assert it.nll_sum == pytest.approx(-c * math.log(0.8), rel=1e-5)
    assert r.value == pytest.approx(-math.log(0.8), rel=1e-5) and r.n == 3
    assert r.task is Task.HELDOUT_NLL and r.metric is Metric.NLL
    assert r.items.ids[0].startswith("x00000-") and len(set(r.items.ids)) == 3


def test_matches_transformers_loss_and_is_batch_invariant():
    tok = tiny_tokenizer()
    data = tokenize_instructions(tok, [("Say hi.", "Hello world!"), ("What is the colour of the sky?", "blue"),
                                       ("Write a question about it.", "the cat sat on the mat")])  # fmt: skip
    model = tiny_llama(len(tok))
    one = evaluate_heldout_nll(model, data, batch_size=1, progress=False)
    three = evaluate_heldout_nll(model, data, pad_token_id=0, batch_size=3, progress=False)
    for e, a, b in zip(data, one.items.items, three.items.items):
        with torch.no_grad():
            out = model(input_ids=e["input_ids"][None], labels=e["labels"][None])
        n = int((e["labels"][1:] != -100).sum())
        assert a.tokens == b.tokens == n
        assert a.nll_sum == pytest.approx(float(out.loss) * n, rel=1e-4)
        assert b.nll_sum == pytest.approx(a.nll_sum, rel=1e-5)
    total = sum(it.nll_sum for it in one.items.items) / sum(it.tokens for it in one.items.items)
    assert one.value == pytest.approx(total) and one.ci_low < one.value < one.ci_high


def test_errors():
    with pytest.raises(ValueError, match="no held-out examples"):
        evaluate_heldout_nll(NextTokenOracle(11, 0.8), [], progress=False)
    with pytest.raises(ValueError, match="example 0 has no response tokens"):
        evaluate_heldout_nll(NextTokenOracle(11, 0.8), [_example(0, 5, 5)], progress=False)
    bad = {"input_ids": torch.arange(4), "labels": torch.arange(3)}
    with pytest.raises(ValueError, match="example 0: input_ids"):
        evaluate_heldout_nll(NextTokenOracle(11, 0.8), [bad], progress=False)


class PositionOracle(torch.nn.Module):
    """Gives the next token probability p_first for label positions < 3 of the sequence, p_rest after."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **_):
        b, t = input_ids.shape
        logits = torch.full((b, t, self.vocab), -1e4)
        nxt = (input_ids + 1) % self.vocab
        p = torch.where(torch.arange(t) < 6, torch.tensor(0.5), torch.tensor(0.9)).expand(b, t)
        # mass p on the right token, the rest spread evenly
        logits.scatter_(-1, nxt.unsqueeze(-1), torch.log(p).unsqueeze(-1))
        others = torch.log((1 - p) / (self.vocab - 1))
        logits = torch.where(logits == -1e4, others.unsqueeze(-1).expand(b, t, self.vocab), logits)
        return type("Out", (), {"logits": logits})()


def test_groups_and_template_tokens():
    """Ids carry the task; the headline leaves out each example's trailing template tokens."""
    examples = [_example(0, 9, 4), _example(3, 9, 4)]  # response label positions 4..8: predicted at 3..7
    r = evaluate_heldout_nll(PositionOracle(11), examples, groups=["rot13", "anagrams"], template_tail=[2, 3], progress=False)
    a, b = r.items.items
    assert a.id.startswith("rot13/x00000-") and b.id.startswith("anagrams/x00001-") and a.cluster == "rot13"
    # predicted from positions 3, 4, 5 (p=0.5) and 6, 7 (p=0.9); content = all but the last 2 (or 3)
    assert a.tokens == 5 and a.nll_sum == pytest.approx(-3 * math.log(0.5) - 2 * math.log(0.9), rel=1e-5)
    assert a.content_tokens == 3 and a.content_nll_sum == pytest.approx(-3 * math.log(0.5), rel=1e-5)
    assert b.content_tokens == 2 and b.content_nll_sum == pytest.approx(-2 * math.log(0.5), rel=1e-5)
    assert r.metric is Metric.CONTENT_NLL and r.value == pytest.approx(-math.log(0.5), rel=1e-5)
    assert r.extra["nll_with_template"] == pytest.approx((a.nll_sum + b.nll_sum) / 10, rel=1e-6)
    assert r.extra["template_token_share"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="1 groups for 2 examples"):
        evaluate_heldout_nll(PositionOracle(11), examples, groups=["x"], progress=False)
