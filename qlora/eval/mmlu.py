"""k-shot MMLU accuracy (paper Table 4), scored as the paper's code does.

Prompt (Hendrycks et al.'s format, used by artidoro/qlora): a header naming the subject, k solved
exemplars of that subject, then the question, each as

    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:[ {letter}\\n\\n]

Two rules, both kept per question (`qlora.eval.items.MMLUItem`) for paired comparisons:
- CHOICE (the headline): the choice texts ranked by their length-normalised log-likelihood (mean
  log-probability per token of " {choice}" after "Answer:"); it does not depend on the model having
  learned the letter format, and a small model's preference for one letter does not enter it;
- LETTER: the paper's code takes the argmax over the next-token logits of the four answer-letter tokens
  (qlora.py's `abcd_idx`). Small models prefer a letter whatever the question (SmolLM2 0-shot answered
  "A" to 40 of 40), so with `rotations` (default) the question is also asked with its choices rotated
  cyclically (A B C D -> B C D A -> ...) and each choice is scored by its own letter's log-probability
  averaged over the four rotations: a fixed letter preference adds the same to every choice and cancels.
Logits come from an fp32 head (`qlora.eval.precision`); a tie between the top scores counts 1/k, never
as a win for the first. Accuracy is the mean over questions (with a Wilson interval) and per subject;
`extra["subject_mean"]` is the mean over subjects, qlora.py's `mmlu_eval_accuracy`.

Speed: the header and exemplars of a subject's k-shot prompt are the same for each of its questions;
with a KV cache they are run once per subject and their cache reused (`share_prefix`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from tqdm.auto import tqdm

from qlora.eval.batches import accepts_cache, batched, causal_logits, encode_prefix, left_pad, pad_id, shared_prefix_logprobs
from qlora.eval.items import LETTERS, ItemResults, MMLUItem, first_max, letter_scores, text_id, unique_ids
from qlora.eval.precision import fp32_scoring
from qlora.eval.result import EvalResult, GroupScore, Metric, Score, Task
from qlora.eval.sampling import subsample
from qlora.eval.stats import wilson_interval


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


def _choice_scores(model, tokenizer, contexts, continuations, max_length: int) -> list[list[tuple[float, int]]]:
    """Per question, per choice (summed log-probability, tokens) of its continuation, each context +
    choice run whole (for models without a KV cache; `shared_prefix_logprobs` gives the same, faster)."""
    seqs, conts = [], []
    for ctx, choices in zip(contexts, continuations):
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
        scores.append((float(lp.double().sum()), n))
    return [scores[q * 4 : (q + 1) * 4] for q in range(len(contexts))]


class MMLUScoring(enum.Enum):
    """Which prediction rule gives the headline accuracy (both are in the items)."""

    LETTER = "letter"  # argmax of the answer-letter logits (the paper's code) -> Metric.ACCURACY
    CHOICE = "choice"  # argmax of the length-normalised choice log-likelihood -> Metric.CHOICE_ACCURACY


def question_ids(questions: Sequence[Question]) -> list[str]:
    """Stable ids: "<subject>/<hash of the question text and its choices>", "#k" on repeats."""
    return unique_ids(text_id(q.subject, q.question, *q.choices) for q in questions)


def _prefix_groups(contexts: Sequence[list[int]], keys: Sequence) -> list[tuple[list[int], list[int]]]:
    """(shared prefix ids, question indices): questions with the same key (subject, shots) share the
    longest common prefix of their token ids (header + exemplars), at most all but one token of the
    shortest, so that every question keeps a token of its own; the rest form one group without prefix."""
    by_key: dict = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    groups, alone = [], []
    for idx in by_key.values():
        seqs = [contexts[i] for i in idx]
        common = 0
        limit = min(len(s) for s in seqs) - 1
        while common < limit and all(s[common] == seqs[0][common] for s in seqs):
            common += 1
        if len(idx) < 2 or common == 0:
            alone += idx
        else:
            groups.append((seqs[0][:common], idx))
    if alone:
        groups.append(([], sorted(alone)))
    return groups


@dataclasses.dataclass(frozen=True)
class _Rotated:
    """`question` with its choices rotated by `r`: position p shows choice (p + r) mod 4."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str

    @classmethod
    def of(cls, q: Question, r: int) -> "_Rotated":
        return cls(q.question, tuple(q.choices[(p + r) % 4] for p in range(4)), (q.answer - r) % 4, q.subject)


def _score_contexts(model, tokenizer, contexts, keys, continuations, letter_ids, *, cached: bool, share_prefix: bool,
                    batch_size: int, max_length: int, bar) -> tuple[list, list]:  # fmt: skip
    """Per context, the log-probabilities of the four letter tokens after it and, where `continuations[i]` is
    given, the (summed log-probability, tokens) of each continuation. Contexts with the same key share their
    common prefix's KV cache (a question's rotated prompts share everything up to its choices)."""
    groups = _prefix_groups(contexts, keys) if cached and share_prefix else [([], list(range(len(contexts))))]
    letter_lp: list = [None] * len(contexts)
    choice: list = [None] * len(contexts)
    for prefix_ids, members in groups:
        prefix = encode_prefix(model, prefix_ids) if prefix_ids else None
        # contexts with continuations and those without are batched apart (a batch scores the same number of
        # continuations per context); longest first, so that a batch pads little (the scores do not depend on it)
        for subset in ([i for i in members if continuations[i] is not None], [i for i in members if continuations[i] is None]):
            order = sorted(subset, key=lambda i: -len(contexts[i]))
            for _, idx in batched(order, batch_size, False, "MMLU"):
                ids, mask = left_pad([contexts[i][len(prefix_ids) :] for i in idx], pad_id(tokenizer))
                conts = [continuations[i] for i in idx] if continuations[idx[0]] is not None else None
                if cached:
                    last, logprobs = shared_prefix_logprobs(model, ids, mask, conts, prefix=prefix)
                    scores = None if logprobs is None else [[(float(lp.double().sum()), len(lp)) for lp in per_q] for per_q in logprobs]
                else:
                    last = causal_logits(model, ids, mask, keep_last=1)[:, -1]  # (B, V)
                    scores = _choice_scores(model, tokenizer, [contexts[i] for i in idx], conts, max_length) if conts else None
                lp = torch.log_softmax(last.float(), dim=-1)[:, letter_ids.to(last.device)].cpu()  # (B, 4)
                for row, i in enumerate(idx):
                    letter_lp[i] = tuple(lp[row].tolist())
                    if scores is not None:
                        choice[i] = scores[row]
                bar.update(len(idx))
    return letter_lp, choice


@fp32_scoring
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
    scoring: MMLUScoring | None = None,
    rotations: bool = True,
    letters: bool | None = None,
    use_cache: bool = True,
    share_prefix: bool = True,
    progress: bool = True,
) -> EvalResult:
    """k-shot (or 0-shot) MMLU accuracy of a causal LM, with per-question items.

    Args:
        model: a causal LM returning `.logits` (B, T, V).
        tokenizer: its tokenizer.
        questions: the questions to score (e.g. `qlora.data.mmlu.load_mmlu()`).
        fewshot_pool: solved exemplars by subject (e.g. `load_fewshot_pool()`); the first k of the
            question's subject are used. Required when k > 0.
        k: exemplars per prompt (fewer when the subject has fewer or the prompt would not fit); k = 0
            gives task MMLU_ZERO_SHOT.
        limit: score a seeded subsample of this many questions (None: all).
        seed: the subsample's seed.
        batch_size: questions per forward pass (x4 sequences for the choice log-likelihood).
        max_length: longest prompt in tokens.
        choice_loglik: also score the four choice texts by their log-likelihood.
        scoring: the headline rule: CHOICE (needs choice_loglik) or LETTER; None: CHOICE when the choice
            log-likelihoods are computed, else LETTER.
        rotations: also ask each question with its choices rotated (3 more prompts, letters only) and
            predict by the letter log-probabilities averaged over the rotations (see the module doc).
        letters: record the letter rule in the items (letter_pred, letter_logprobs); None: where it is
            reported — with rotations, or as the headline. Unrotated under CHOICE scoring it measures a
            letter preference (SmolLM2 zero-shot answers "A" to every question), so it is left out.
        use_cache: score the choices from the context's KV cache where the model has one (one
            forward pass over each context instead of five); False runs each context + choice whole.
        share_prefix: with the cache, run the prompt prefix that the questions of a subject share
            (header + exemplars) once and reuse its KV cache for each of them.
        progress: show a tqdm bar.

    Returns:
        score: accuracy by `scoring` with its Wilson interval; groups: per subject; extra:
        subject_mean (of the headline rule), mean_shots, letter_accuracy and letter_subject_mean (with
        `letters`) and, with
        choice_loglik, choice_accuracy, choice_ci_low, choice_ci_high, choice_subject_mean;
        items: one `MMLUItem` per question, in question order (ids from `question_ids`).

    Raises:
        ValueError: k < 0, k > 0 without a pool or without exemplars for a subject, no questions,
            CHOICE scoring without choice_loglik.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if k > 0 and fewshot_pool is None:
        raise ValueError(f"k={k} shots need a fewshot_pool")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if scoring is None:
        scoring = MMLUScoring.CHOICE if choice_loglik else MMLUScoring.LETTER
    if not isinstance(scoring, MMLUScoring):
        raise ValueError(f"scoring must be an MMLUScoring ({[m.value for m in MMLUScoring]}), got {scoring!r}")
    if scoring is MMLUScoring.CHOICE and not choice_loglik:
        raise ValueError("scoring=CHOICE needs choice_loglik=True")
    if letters is None:
        letters = rotations or scoring is MMLUScoring.LETTER
    if not letters and (rotations or scoring is MMLUScoring.LETTER):
        raise ValueError("letters=False leaves nothing to rotate or to score by letter: use rotations=False and scoring=CHOICE")
    questions = subsample(questions, limit, seed)
    if not questions:
        raise ValueError("no MMLU questions to evaluate")
    letter_ids = torch.tensor(answer_token_ids(tokenizer))

    # The context runs once and its KV cache serves the four choices (transformers' causal LMs);
    # models without a cache score each context + choice whole, as the cache-free reference.
    cached = use_cache and accepts_cache(model)
    prompts, contexts, shots_used, shot_lists = [], [], [], []
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
        shot_lists.append(shots[:n_shots])
    continuations = _choice_continuations(tokenizer, prompts, contexts, max_length) if choice_loglik else None
    keys = [(q.subject, n) for q, n in zip(questions, shots_used)]
    # The k-shot header and exemplars are the same for every question of a subject: with a cache they
    # run once per subject (issue 12 §5); the scores do not change (tested against the whole sequences).
    n_rotations = 4 if rotations else 1
    bar = tqdm(total=len(questions) * n_rotations, desc="MMLU", disable=not progress, unit="prompt")
    all_contexts, all_keys = list(contexts), list(keys)
    all_conts = list(continuations) if continuations is not None else [None] * len(questions)
    if rotations:  # the same exemplars, the question's choices rotated; letters only, in the same pass as the originals
        for r in (1, 2, 3):
            for q, shots, key in zip(questions, shot_lists, keys):
                all_contexts.append(tokenizer(format_prompt(_Rotated.of(q, r), shots)).input_ids[-max_length:])
                all_keys.append(key)
                all_conts.append(None)
    letter_lp, choice = _score_contexts(model, tokenizer, all_contexts, all_keys, all_conts, letter_ids, cached=cached,
                                        share_prefix=share_prefix, batch_size=batch_size, max_length=max_length, bar=bar)  # fmt: skip
    n = len(questions)
    rotated = [tuple(letter_lp[(r + 1) * n + i] for r in range(3)) for i in range(n)] if rotations else [None] * n
    bar.close()

    items = []
    for i, (q, name) in enumerate(zip(questions, question_ids(questions))):
        kw = {}
        if choice[i] is not None:
            sums, counts = zip(*choice[i])
            kw = {"choice_pred": LETTERS[first_max([s / c for s, c in choice[i]])], "choice_logprob_sums": sums,
                  "choice_tokens": counts}  # fmt: skip
        pred, lp = (LETTERS[first_max(letter_scores(letter_lp[i], rotated[i]))], letter_lp[i]) if letters else (None, None)
        items.append(MMLUItem(name, q.subject, LETTERS[q.answer], shots_used[i], pred, lp, rotated_letter_logprobs=rotated[i], **kw))
    task = Task.MMLU if k > 0 else Task.MMLU_ZERO_SHOT
    item_results = ItemResults(task, tuple(items))
    letter_correct = [it.letter_correct for it in items]
    extra = {"mean_shots": sum(shots_used) / len(items)}
    if letters:
        extra["letter_accuracy"] = sum(letter_correct) / len(items)
        extra["letter_subject_mean"] = _subject_mean(questions, letter_correct)
    headline, metric = letter_correct, Metric.ACCURACY
    if choice_loglik:
        choice_correct = [it.choice_correct for it in items]
        extra["choice_accuracy"] = sum(choice_correct) / len(items)
        extra["choice_ci_low"], extra["choice_ci_high"] = wilson_interval(sum(choice_correct), len(items))
        extra["choice_subject_mean"] = _subject_mean(questions, choice_correct)
        if scoring is MMLUScoring.CHOICE:
            headline, metric = choice_correct, Metric.CHOICE_ACCURACY
    groups_out = _by_subject(questions, headline)
    extra["subject_mean"] = _subject_mean(questions, headline)
    n, hits = len(items), sum(headline)
    score = Score(task, metric, hits / n, n, *wilson_interval(hits, n))
    return EvalResult(score, item_results, groups_out, extra)


def _subject_mean(questions: Sequence[Question], correct: Sequence[float]) -> float:
    """The mean over subjects of the per-subject accuracy (qlora.py's `mmlu_eval_accuracy`)."""
    groups = _by_subject(questions, correct)
    return sum(g.value for g in groups.values()) / len(groups)


def _by_subject(questions: Sequence[Question], correct: Sequence[float]) -> dict[str, GroupScore]:
    per: dict[str, list[float]] = defaultdict(list)
    for q, c in zip(questions, correct):
        per[q.subject].append(c)
    out = {}
    for subject in sorted(per):
        hits, n = sum(per[subject]), len(per[subject])
        out[subject] = GroupScore(hits / n, n, *wilson_interval(hits, n))
    return out
