"""Evaluators on stub models whose right answers are known, and on a tiny random Llama."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from qlora.eval.batches import accepts_cache, causal_logits, left_pad, shared_prefix_logprobs
from qlora.data.tokenization import tokenize_classification
from qlora.eval.classification import evaluate_classification
from qlora.eval.mmlu import MMLUScoring, answer_token_ids, evaluate_mmlu, format_prompt
from qlora.eval.perplexity import corpus_ids, evaluate_perplexity, make_windows
from qlora.eval.result import Metric, Task
from qlora.eval.rouge import evaluate_rouge, generate_greedy, rouge_l
from qlora.eval.sampling import subsample
from tests.tiny_text import tiny_llama, tiny_tokenizer


@dataclasses.dataclass(frozen=True)
class Q:
    question: str
    choices: tuple
    answer: int
    subject: str


@dataclasses.dataclass(frozen=True)
class Ex:
    text: str
    label: int
    text_pair: str | None = None


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


class FavourTokens(torch.nn.Module):
    """Causal-LM stub: at every position the logits favour `token_ids` by +`boost` (others 0)."""

    def __init__(self, vocab: int, token_ids, boost: float = 5.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.vocab, self.token_ids, self.boost = vocab, list(token_ids), boost

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token_ids] = self.boost
        return SimpleNamespace(logits=logits + self.anchor)


def _questions(answers, subject="high_school_biology"):
    choices = ("red", "green", "blue", "pink")
    return [Q(f"What is colour {i}?", choices, a, subject) for i, a in enumerate(answers)]


def _assert_items_close(a, b, tol=1e-4):
    """The same predictions and, within `tol`, the same log-likelihoods."""
    assert a.ids == b.ids
    for x, y in zip(a.items, b.items):
        assert (x.letter_pred, x.choice_pred, x.choice_tokens, x.shots) == (y.letter_pred, y.choice_pred, y.choice_tokens, y.shots)
        assert x.letter_logprobs == pytest.approx(y.letter_logprobs, abs=tol)
        assert x.choice_logprob_sums == pytest.approx(y.choice_logprob_sums, abs=tol)


GOLDEN_PROMPT = (
    "The following are multiple choice questions (with answers) about high school biology.\n\n"
    "What is colour 0?\nA. red\nB. green\nC. blue\nD. pink\nAnswer: A\n\n"
    "What is colour 1?\nA. red\nB. green\nC. blue\nD. pink\nAnswer: D\n\n"
    "What is colour 2?\nA. red\nB. green\nC. blue\nD. pink\nAnswer:"
)


def test_mmlu_prompt_golden():
    q = _questions([0, 3, 2])
    assert format_prompt(q[2], q[:2]) == GOLDEN_PROMPT


def test_answer_token_ids(tok):
    ids = answer_token_ids(tok)
    assert [tok.decode([i]) for i in ids] == [" A", " B", " C", " D"]


def test_mmlu_letter_argmax_is_share_of_c(tok):
    answers = [2, 0, 2, 1, 3, 2, 2, 0, 1, 2]  # five C
    qs = _questions(answers)
    c_id = answer_token_ids(tok)[2]
    model = FavourTokens(len(tok), [c_id])
    r = evaluate_mmlu(model, tok, qs, {"high_school_biology": qs[:2]}, k=2, batch_size=3, progress=False,
                      choice_loglik=False, rotations=False)  # fmt: skip
    assert r.value == pytest.approx(0.5) and r.n == 10
    assert tuple(it.letter_correct for it in r.items.items) == tuple(float(a == 2) for a in answers)
    assert [it.letter_pred for it in r.items.items] == ["C"] * 10 and r.task is Task.MMLU
    assert r.groups["high_school_biology"].value == pytest.approx(0.5)
    assert r.ci_low < 0.5 < r.ci_high and r.extra["mean_shots"] == 2
    # with the choices rotated, a model that answers C whatever it is asked scores chance on every question
    rot = evaluate_mmlu(model, tok, qs, {"high_school_biology": qs[:2]}, k=2, batch_size=3, progress=False, choice_loglik=False)
    assert [it.letter_correct for it in rot.items.items] == [0.25] * 10 and rot.value == pytest.approx(0.25)
    assert [it.raw_letter_pred for it in rot.items.items] == ["C"] * 10 and rot.items.items[0].rotated_letter_logprobs is not None


def test_mmlu_choice_loglik_picks_favoured_text(tok):
    answers = [2, 2, 0, 1, 2, 3]  # "blue" is right three times
    qs = _questions(answers, "anatomy") + _questions([2, 2], "virology")
    blue = tok(" blue", add_special_tokens=False).input_ids
    model = FavourTokens(len(tok), blue, boost=8.0)
    r = evaluate_mmlu(model, tok, qs, None, k=0, batch_size=4, progress=False, scoring=MMLUScoring.LETTER)
    assert r.extra["choice_accuracy"] == pytest.approx(5 / 8)
    # per subject: anatomy 3/6, virology 2/2 -> subject mean 0.75
    assert r.extra["choice_subject_mean"] == pytest.approx(0.75)
    # the letter score sees no favoured letter: all four tie -> 1/4 credit each (never "A wins")
    assert r.value == pytest.approx(1 / 4) and r.metric is Metric.ACCURACY and r.task is Task.MMLU_ZERO_SHOT
    assert [it.choice_pred for it in r.items.items] == ["C"] * 8
    blue_sum = r.items.items[0].choice_logprob_sums[2]
    assert r.items.items[0].choice_tokens[2] == len(blue)
    # each " blue" token has log-probability 8 - log(e^8 * len(blue) + V - len(blue)) under the stub
    per_token = 8.0 - math.log(math.exp(8.0) * len(blue) + len(tok) - len(blue))
    assert blue_sum == pytest.approx(len(blue) * per_token, rel=1e-5)
    z = evaluate_mmlu(model, tok, qs, None, k=0, batch_size=4, progress=False, scoring=MMLUScoring.CHOICE)
    assert z.value == pytest.approx(5 / 8) and z.metric is Metric.CHOICE_ACCURACY and z.items == r.items
    # Table 2's way: the choice rule without rotations; the unrotated letter rule (a letter preference) is not reported
    u = evaluate_mmlu(model, tok, qs, None, k=0, batch_size=4, progress=False, scoring=MMLUScoring.CHOICE, rotations=False)
    assert u.value == z.value and [it.choice_pred for it in u.items.items] == ["C"] * 8
    assert "letter_accuracy" not in u.extra and "letter_subject_mean" not in u.extra and "letter_accuracy" in z.extra
    assert all(it.letter_pred is None and it.letter_logprobs is None and it.letter_correct is None for it in u.items.items)
    kept = evaluate_mmlu(model, tok, qs, None, k=0, batch_size=4, progress=False, rotations=False, letters=True)
    assert [it.letter_logprobs for it in kept.items.items] == [it.letter_logprobs for it in r.items.items]
    with pytest.raises(ValueError, match="letters=False"):
        evaluate_mmlu(model, tok, qs, None, k=0, progress=False, letters=False)  # rotations on: letters needed


def test_mmlu_batching_and_subsample_invariance(tok):
    qs = _questions([0, 1, 2, 3, 0, 1, 2])
    model = tiny_llama(len(tok))
    a = evaluate_mmlu(model, tok, qs, {"high_school_biology": qs[:3]}, k=3, batch_size=1, progress=False)
    b = evaluate_mmlu(model, tok, qs, {"high_school_biology": qs[:3]}, k=3, batch_size=4, progress=False)
    _assert_items_close(a.items, b.items)
    assert a.extra == pytest.approx(b.extra)
    c = evaluate_mmlu(model, tok, qs, {"high_school_biology": qs[:3]}, k=3, limit=4, seed=1, progress=False)
    assert c.n == 4


def test_shared_prefix_cache_matches_whole_sequences(tok):
    """Continuation log-probs from the context's KV cache = scoring each context + continuation whole."""
    model = tiny_llama(len(tok))
    assert accepts_cache(model) and not accepts_cache(FavourTokens(len(tok), [0]))
    contexts = [tok("the cat sat on the mat and then").input_ids, tok("hi").input_ids]
    conts = [[tok(" ran away", add_special_tokens=False).input_ids, tok(" slept", add_special_tokens=False).input_ids],
             [tok(" there friend of mine", add_special_tokens=False).input_ids, tok(" !", add_special_tokens=False).input_ids]]
    last, got = shared_prefix_logprobs(model, *left_pad(contexts, 0), conts)
    for b, ctx in enumerate(contexts):
        alone = causal_logits(model, *left_pad([ctx], 0))[0, -1]
        torch.testing.assert_close(last[b], alone, rtol=1e-4, atol=1e-4)
        for c, cont in enumerate(conts[b]):
            logprobs = torch.log_softmax(causal_logits(model, *left_pad([ctx + cont], 0))[0], dim=-1)
            want = logprobs[len(ctx) - 1 : -1].gather(-1, torch.tensor(cont).unsqueeze(-1)).squeeze(-1)
            assert got[b][c].shape == (len(cont),)
            torch.testing.assert_close(got[b][c], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="same number"):
        shared_prefix_logprobs(model, *left_pad(contexts, 0), [conts[0], conts[1][:1]])


def test_mmlu_cached_choice_scores_equal_uncached(tok):
    qs = _questions([0, 1, 2, 3, 0, 1, 2])
    model = tiny_llama(len(tok))
    pool = {"high_school_biology": qs[:3]}
    a = evaluate_mmlu(model, tok, qs, pool, k=3, batch_size=3, progress=False, use_cache=False)
    b = evaluate_mmlu(model, tok, qs, pool, k=3, batch_size=3, progress=False, use_cache=True, share_prefix=False)
    _assert_items_close(a.items, b.items)
    assert a.extra == pytest.approx(b.extra)


def test_mmlu_drops_shots_to_fit(tok):
    qs = _questions([0, 1, 2])
    model = FavourTokens(len(tok), [answer_token_ids(tok)[0]])
    short = len(tok(format_prompt(qs[2], qs[:1])).input_ids)
    r = evaluate_mmlu(model, tok, qs[2:], {"high_school_biology": qs[:2]}, k=2, max_length=short,
                      progress=False, choice_loglik=False)  # fmt: skip
    assert r.extra["mean_shots"] == 1


def test_mmlu_errors(tok):
    qs = _questions([0])
    model = FavourTokens(len(tok), [0])
    with pytest.raises(ValueError, match="fewshot_pool"):
        evaluate_mmlu(model, tok, qs, None, k=5, progress=False)
    with pytest.raises(ValueError, match="anatomy"):
        evaluate_mmlu(model, tok, _questions([0], "anatomy"), {"virology": qs}, k=1, progress=False)
    with pytest.raises(ValueError, match="k must"):
        evaluate_mmlu(model, tok, qs, None, k=-1, progress=False)


def test_left_padding_matches_unpadded(tok):
    model = tiny_llama(len(tok))
    a, b = tok("the cat sat on the mat").input_ids, tok("hi").input_ids
    batch = causal_logits(model, *left_pad([a, b], 0))
    alone = causal_logits(model, *left_pad([b], 0))
    torch.testing.assert_close(batch[1, -len(b) :], alone[0], rtol=1e-4, atol=1e-5)


class NextTokenOracle(torch.nn.Module):
    """Predicts (token + 1) mod V with probability p (rest uniform)."""

    def __init__(self, vocab: int, p: float):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.vocab, self.p = vocab, p

    def forward(self, input_ids, attention_mask=None):
        probs = torch.full((*input_ids.shape, self.vocab), (1 - self.p) / (self.vocab - 1))
        probs.scatter_(-1, ((input_ids + 1) % self.vocab).unsqueeze(-1), self.p)
        return SimpleNamespace(logits=probs.log())


def test_perplexity_known_nll():
    ids = torch.arange(300) % 11  # each next token is (token + 1) mod 11
    windows = make_windows(ids, 50)
    assert windows.shape == (6, 50) and windows.flatten().tolist() == ids.tolist()
    r = evaluate_perplexity(NextTokenOracle(11, 0.8), windows, batch_size=4, progress=False)
    assert r.value == pytest.approx(1 / 0.8, rel=1e-5) and r.n == 6 * 49
    assert [it.tokens for it in r.items.items] == [49] * 6 and r.task is Task.PERPLEXITY
    assert [it.nll_sum for it in r.items.items] == pytest.approx([-49 * math.log(0.8)] * 6, rel=1e-5)
    assert r.items.ids[2].startswith("w00002-") and len(set(r.items.ids)) == 6  # windows 0 and 1 hold other tokens
    r2 = evaluate_perplexity(NextTokenOracle(11, 0.5), make_windows(ids, 50, max_windows=2), progress=False)
    assert r2.value == pytest.approx(2.0, rel=1e-5) and r2.n == 98


def test_perplexity_windows_from_text(tok):
    ids = corpus_ids(tok, ["the cat", "sat"])
    assert ids.tolist() == tok("the cat", add_special_tokens=False).input_ids + [tok.eos_token_id] + tok(
        "sat", add_special_tokens=False).input_ids  # fmt: skip
    assert make_windows(torch.arange(107), 10).shape == (10, 10)  # tail of 7 dropped
    with pytest.raises(ValueError, match="window"):
        make_windows(torch.arange(10), 1)
    with pytest.raises(ValueError, match="fill one window"):
        make_windows(torch.arange(10), 11)
    with pytest.raises(TypeError):
        corpus_ids(tok, "one string")
    r = evaluate_perplexity(tiny_llama(len(tok)), make_windows(corpus_ids(tok, ["the cat sat on the mat. " * 20]), 16),
                            progress=False)  # fmt: skip
    assert 1 < r.value < 3 * len(tok)  # a random model is near uniform (400), never below 1


def test_classification_on_hf_model_padding_invariant(tok):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, pad_token_id=0)  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    exs = [Ex("the cat sat on the mat", 0), Ex("a claim is true", 1, "hello world"), Ex("no", 2)]
    data = tokenize_classification(tok, exs)
    r1 = evaluate_classification(model, data, batch_size=1, progress=False)
    r3 = evaluate_classification(model, data, batch_size=3, progress=False)
    assert r1.items == r3.items and r1.n == 3
    assert [it.label for it in r1.items.items] == [0, 1, 2]  # padding does not change predictions


class ScriptedGenerator(torch.nn.Module):
    """`generate` appends `script` (then pads) to every prompt of the batch."""

    def __init__(self, script: list[int], pad: int):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.script, self.pad = script, pad

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        new = torch.tensor(self.script[:max_new_tokens]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], 1)


def test_rouge_on_scripted_model(tok):
    script = tok("the cat", add_special_tokens=False).input_ids + [tok.eos_token_id]
    model = ScriptedGenerator(script, 0)
    r = evaluate_rouge(model, tok, ["Say hi.", "Say hi."], [["the cat sat"], ["dog", "the cat"]], groups=["a", "b"],
                       max_new_tokens=10, progress=False)  # fmt: skip
    assert [it.score for it in r.items.items] == pytest.approx([0.8, 1.0]) and r.value == pytest.approx(0.9)
    assert r.items.ids[0].startswith("a/") and r.items.ids[1].startswith("b/")  # P 1, R 2/3 -> F 0.8
    assert r.groups["a"].value == pytest.approx(0.8) and r.groups["b"].n == 1
    assert rouge_l(["running"], [["runs"]]) == [1.0]  # Porter stemming
    with pytest.raises(ValueError, match="group names"):
        evaluate_rouge(model, tok, ["x"], [["y"]], groups=["a", "b"], progress=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate_rouge(model, tok, ["x"], [["y"]], max_new_tokens=0, progress=False)


def test_generation_is_batch_invariant(tok):
    model = tiny_llama(len(tok))
    prompts = ["the cat sat on the mat", "hi"]
    one = generate_greedy(model, tok, prompts, max_new_tokens=5, batch_size=1, progress=False)
    two = generate_greedy(model, tok, prompts, max_new_tokens=5, batch_size=2, progress=False)
    assert one == two


def test_subsample_seeded_and_ordered():
    items = list(range(100))
    a, b = subsample(items, 10, seed=3), subsample(items, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert subsample(items, 10, seed=4) != a
    assert subsample(items, None) == items
    with pytest.raises(ValueError, match="limit"):
        subsample(items, -1)


def test_mmlu_shared_prefix_cache_equals_whole_sequences(tok, monkeypatch):
    """The k-shot prefix of a subject run once and its KV cache reused = every prompt run whole (1e-4)."""
    import qlora.eval.mmlu as mmlu

    bio = _questions([0, 1, 2, 3, 0, 1, 2])
    anatomy = [dataclasses.replace(q, subject="anatomy", question=q.question + " of the mat") for q in _questions([3, 2, 1])]
    pool = {"high_school_biology": bio[:3], "anatomy": anatomy[:2]}
    model = tiny_llama(len(tok))
    calls = []
    real = mmlu.encode_prefix
    monkeypatch.setattr(mmlu, "encode_prefix", lambda m, ids: calls.append(len(ids)) or real(m, ids))
    for k in (3, 0):
        calls.clear()
        whole = evaluate_mmlu(model, tok, bio + anatomy, pool, k=k, batch_size=3, progress=False, use_cache=False)
        shared = evaluate_mmlu(model, tok, bio + anatomy, pool, k=k, batch_size=3, progress=False)
        # one prefix per subject (its questions' original and rotated prompts share it), header (+ exemplars) long
        assert len(calls) == 2 and min(calls) > 10
        _assert_items_close(whole.items, shared.items)
        assert whole.value == shared.value and whole.extra == pytest.approx(shared.extra)
    # a prompt that must drop exemplars to fit has a different prefix: it is grouped apart
    groups = mmlu._prefix_groups([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9], [7, 7]], ["s", "s", "s", "t"])
    assert groups == [([1, 2], [0, 1, 2]), ([], [3])]
    assert mmlu._prefix_groups([[1, 2], [1, 2]], ["s", "s"]) == [([1], [0, 1])]  # each keeps a token of its own


def test_mmlu_item_ids_are_stable_and_unique(tok):
    qs = _questions([0, 1]) + _questions([0])  # the third repeats the first
    model = FavourTokens(len(tok), [answer_token_ids(tok)[1]])
    r = evaluate_mmlu(model, tok, qs, None, k=0, progress=False, choice_loglik=False)
    ids = r.items.ids
    assert ids[0].startswith("high_school_biology/") and ids[2] == ids[0] + "#2" and len(set(ids)) == 3
    assert r.items.items[0].choice_pred is None and r.items.items[1].letter_correct
    again = evaluate_mmlu(model, tok, list(reversed(qs[:2])), None, k=0, progress=False, choice_loglik=False)
    assert set(again.items.ids) == set(ids[:2])  # ids depend on the content, not on the order
    with pytest.raises(ValueError, match="CHOICE needs choice_loglik"):
        evaluate_mmlu(model, tok, qs, None, k=0, progress=False, choice_loglik=False, scoring=MMLUScoring.CHOICE)
