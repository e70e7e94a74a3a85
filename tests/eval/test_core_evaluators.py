"""Perplexity, classification and RougeL evaluators on stubs whose right answers are known."""

import math
from types import SimpleNamespace

import pytest
import torch

from qlora.eval.classification import evaluate_classification
from qlora.eval.perplexity import evaluate_perplexity
from qlora.eval.rouge import rouge_l


class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


class FirstTokenClassifier(torch.nn.Module):
    """Predicts class = first token id mod 3."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids[:, 0] % 3, 3).float())


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    r = evaluate_perplexity(Uniform(50), torch.randint(0, 50, (5, 9)), batch_size=2, progress=False)
    assert r.value == pytest.approx(50.0, rel=1e-5) and r.n == 5 * 8
    assert r.ci_low == pytest.approx(50.0, rel=1e-5) and r.ci_high == pytest.approx(50.0, rel=1e-5)
    with pytest.raises(ValueError, match=r"windows must be \(W, T\)"):
        evaluate_perplexity(Uniform(50), torch.zeros(3, 1, dtype=torch.long))


def test_classification_accuracy_and_interval():
    examples = [{"input_ids": torch.tensor([i, 7, 7]), "label": torch.tensor(i % 3 if i < 15 else (i + 1) % 3)} for i in range(20)]
    r = evaluate_classification(FirstTokenClassifier(), examples, batch_size=6, labels=["a", "b", "c"], progress=False)
    assert r.value == 15 / 20 and r.n == 20
    assert r.ci_low < 0.75 < r.ci_high and r.ci_high - r.ci_low == pytest.approx(0.37, abs=0.02)  # Wilson, n=20
    assert sum(g.n for g in r.groups.values()) == 20 and set(r.groups) == {"a", "b", "c"}


def test_rouge_l_golden_values():
    scores = rouge_l(["the cat sat on the mat", "dogs bark", "hello"], [["the cat sat on the mat"], ["cats meow"], ["x", "hello world"]])
    assert scores[0] == 1.0 and scores[1] == 0.0
    assert scores[2] == pytest.approx(2 * 1 * 0.5 / 1.5)  # P=1, R=1/2 against the best reference
    with pytest.raises(ValueError, match="2 predictions for 1 reference lists"):
        rouge_l(["a", "b"], [["a"]])
    assert not math.isnan(scores[2])
