"""k-shot MMLU accuracy (paper Table 4), scored as the paper's code does.

Prompt (Hendrycks et al.'s format, used by artidoro/qlora): a header naming the subject, k solved
exemplars of that subject, then the question, each as

    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:[ {letter}\\n\\n]

Prediction = argmax over the next-token logits of the four answer-letter tokens (qlora.py's
`abcd_idx`). A second score ranks the choice texts by their length-normalised log-likelihood
(mean log-probability per token of " {choice}" after "Answer:"), which does not depend on the model
having learned the letter format. Accuracy is over all questions (with a Wilson interval) and per
subject; `extra["subject_mean"]` is the mean over subjects, qlora.py's `mmlu_eval_accuracy`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from qlora.eval.batches import accepts_cache, batched, causal_logits, left_pad, pad_id, shared_prefix_logprobs
from qlora.eval.result import EvalResult, GroupScore
from qlora.eval.sampling import subsample
from qlora.eval.stats import wilson_interval

LETTERS = ("A", "B", "C", "D")


class Question(Protocol):
    """What the evaluator reads of a question (e.g. `qlora.data.mmlu.MMLUQuestion`)."""

    question: str
    choices: Sequence[str]
    answer: int
    subject: str


def format_example(q: Question, include_answer: bool) -> str:
    text = q.question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
    text += "\nAnswer:"
    return text + f" {LETTERS[q.answer]}\n\n" if include_answer else text


def format_prompt(q: Question, shots: Sequence[Question]) -> str:
    """The k-shot prompt for `q`; it ends in "Answer:" and the model's next token is the letter."""
    header = f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    return header + "".join(format_example(s, True) for s in shots) + format_example(q, False)


def answer_token_ids(tokenizer) -> list[int]:
    """The token ids of the four letters as they follow "Answer:" (" A" for byte-level BPE, "▁A" for
    SentencePiece).

    Raises:
        ValueError: a letter is not a single token after "Answer:", or two letters share a token.
    """
    base = tokenizer("Answer:", add_special_tokens=False).input_ids
    ids = []
    for letter in LETTERS:
        full = tokenizer(f"Answer: {letter}", add_special_tokens=False).input_ids
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise ValueError(f"tokenizer splits {'Answer: ' + letter!r} as {full}, not as 'Answer:' + one letter token")
        ids.append(full[-1])
    if len(set(ids)) != 4:
        raise ValueError(f"answer letters map to non-distinct token ids {ids}")
    return ids


def _fit_prompt(tokenizer, q: Question, shots: Sequence[Question], max_length: int) -> tuple[str, list[int], int]:
    """Drops exemplars from the end until the prompt fits (as Hendrycks' evaluation does); if even the
    0-shot prompt is too long, keeps its last `max_length` tokens."""
    shots = list(shots)
    while True:
        prompt = format_prompt(q, shots)
        ids = tokenizer(prompt).input_ids
        if len(ids) <= max_length or not shots:
            return prompt, ids[-max_length:], len(shots)
        shots.pop()


def _continuation(tokenizer, prompt: str, ctx: list[int], text: str) -> list[int]:
    """Ids of `text` after `prompt`, split as the tokenizer would split prompt + text."""
    whole = tokenizer(prompt + text).input_ids
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return whole[len(ctx) :]
    return tokenizer(text, add_special_tokens=False).input_ids


def _choice_continuations(tokenizer, prompts, contexts, max_length: int) -> list[list[list[int]]]:
    """Per question, the token ids of each " {choice}" after its context (at least one token)."""
    return [[_continuation(tokenizer, prompt, ctx, " " + choice)[: max_length - 1] or [pad_id(tokenizer)] for choice in q.choices]
            for (prompt, q), ctx in zip(prompts, contexts)]  # fmt: skip


def _choice_scores(model, tokenizer, prompts, contexts, max_length: int) -> torch.Tensor:
    """(Q, 4) mean log-probability per token of each " {choice}" continuation, each context + choice
    run whole (for models without a KV cache; `shared_prefix_logprobs` gives the same, faster)."""
    seqs, conts = [], []
    for ctx, choices in zip(contexts, _choice_continuations(tokenizer, prompts, contexts, max_length)):
        for cont in choices:
            seqs.append((ctx + cont)[-max_length:])
            conts.append(cont)
    ids, mask = left_pad(seqs, pad_id(tokenizer))
    longest = max(len(c) for c in conts)
    logprobs = torch.log_softmax(causal_logits(model, ids, mask, keep_last=longest + 1), dim=-1)  # (S, L+1, V)
    scores = []
    for i, cont in enumerate(conts):
        n = len(cont)
        # tokens at positions T-n..T-1 are predicted by the logits at T-n-1..T-2
        lp = logprobs[i, -n - 1 : -1].gather(-1, torch.as_tensor(cont).unsqueeze(-1).to(logprobs.device))
        scores.append(lp.mean())
    return torch.stack(scores).view(-1, 4).cpu()


def evaluate_mmlu(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[Question],
    fewshot_pool: Mapping[str, Sequence[Question]] | None = None,
    *,
    k: int = 5,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    max_length: int = 2048,
    choice_loglik: bool = True,
    use_cache: bool = True,
    progress: bool = True,
) -> EvalResult:
    """k-shot MMLU accuracy of a causal LM.

    Args:
        model: a causal LM returning `.logits` (B, T, V).
        tokenizer: its tokenizer.
        questions: the questions to score (e.g. `qlora.data.mmlu.load_mmlu()`).
        fewshot_pool: solved exemplars by subject (e.g. `load_fewshot_pool()`); the first k of the
            question's subject are used. Required when k > 0.
        k: exemplars per prompt (fewer when the subject has fewer or the prompt would not fit).
        limit: score a seeded subsample of this many questions (None: all).
        seed: the subsample's seed.
        batch_size: questions per forward pass (x4 sequences for the choice log-likelihood).
        max_length: longest prompt in tokens.
        choice_loglik: also compute the length-normalised choice log-likelihood accuracy.
        use_cache: score the choices from the context's KV cache where the model has one (one
            forward pass over each context instead of five); False runs each context + choice whole.
        progress: show a tqdm bar.

    Returns:
        accuracy of the letter prediction; groups per subject; extra: subject_mean, mean_shots and,
        with choice_loglik, choice_loglik_accuracy, its ci_low/ci_high and choice_loglik_subject_mean.

    Raises:
        ValueError: k < 0, k > 0 without a pool or without exemplars for a subject, no questions.
    """
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if k > 0 and fewshot_pool is None:
        raise ValueError(f"k={k} shots need a fewshot_pool")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    questions = subsample(questions, limit, seed)
    if not questions:
        raise ValueError("no MMLU questions to evaluate")
    letter_ids = torch.tensor(answer_token_ids(tokenizer))

    # The context runs once and its KV cache serves the four choices (transformers' causal LMs);
    # models without a cache score each context + choice whole, as the cache-free reference.
    cached = use_cache and accepts_cache(model)
    prompts, contexts, shots_used = [], [], []
    for q in questions:
        shots = []
        if k > 0:
            if q.subject not in fewshot_pool or not fewshot_pool[q.subject]:
                raise ValueError(f"fewshot_pool has no exemplars for subject {q.subject!r}")
            shots = list(fewshot_pool[q.subject])[:k]
        prompt, ids, n_shots = _fit_prompt(tokenizer, q, shots, max_length)
        prompts.append((prompt, q))
        contexts.append(ids)
        shots_used.append(n_shots)
    # Longest prompts first, so that a batch pads little (5-shot prompts range from ~300 to 2048 tokens);
    # the scores are per question and do not depend on the batch (tested).
    order = sorted(range(len(questions)), key=lambda i: -len(contexts[i]))
    letter_correct, loglik_correct = [0.0] * len(questions), [0.0] * len(questions)
    for _, idx in batched(order, batch_size, progress, "MMLU"):
        batch = [questions[i] for i in idx]
        batch_prompts, batch_contexts = [prompts[i] for i in idx], [contexts[i] for i in idx]
        ids, mask = left_pad(batch_contexts, pad_id(tokenizer))
        choice_scores = None
        if choice_loglik and cached:
            conts = _choice_continuations(tokenizer, batch_prompts, batch_contexts, max_length)
            last, logprobs = shared_prefix_logprobs(model, ids, mask, conts)
            choice_scores = torch.stack([torch.stack([lp.mean() for lp in per_q]) for per_q in logprobs])
        else:
            last = causal_logits(model, ids, mask, keep_last=1)[:, -1]  # (B, V)
            if choice_loglik:
                choice_scores = _choice_scores(model, tokenizer, batch_prompts, batch_contexts, max_length)
        pred = last[:, letter_ids.to(last.device)].argmax(-1).cpu()
        for i, p, q in zip(idx, pred, batch):
            letter_correct[i] = float(int(p) == q.answer)
        if choice_scores is not None:
            for i, p, q in zip(idx, choice_scores.argmax(-1), batch):
                loglik_correct[i] = float(int(p) == q.answer)

    groups = _by_subject(questions, letter_correct)
    n, hits = len(questions), int(sum(letter_correct))
    lo, hi = wilson_interval(hits, n)
    extra = {"subject_mean": sum(g.value for g in groups.values()) / len(groups),
             "mean_shots": sum(shots_used) / n}  # fmt: skip
    if choice_loglik:
        ll_hits = int(sum(loglik_correct))
        extra["choice_loglik_accuracy"] = ll_hits / n
        extra["choice_loglik_ci_low"], extra["choice_loglik_ci_high"] = wilson_interval(ll_hits, n)
        ll_groups = _by_subject(questions, loglik_correct)
        extra["choice_loglik_subject_mean"] = sum(g.value for g in ll_groups.values()) / len(ll_groups)
    return EvalResult("mmlu", "accuracy", hits / n, n, lo, hi, groups, extra, tuple(letter_correct))


def _by_subject(questions: Sequence[Question], correct: Sequence[float]) -> dict[str, GroupScore]:
    per: dict[str, list[float]] = defaultdict(list)
    for q, c in zip(questions, correct):
        per[q.subject].append(c)
    out = {}
    for subject in sorted(per):
        hits, n = int(sum(per[subject])), len(per[subject])
        out[subject] = GroupScore(hits / n, n, *wilson_interval(hits, n))
    return out
