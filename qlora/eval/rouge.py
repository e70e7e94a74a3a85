"""RougeL of greedy generations against references (Super-NaturalInstructions' measure, Table 3).

The metric is the maintained `rouge-score` package (RougeL F-measure, Porter stemming), the best over
an example's references; the mean over examples with a normal-approximation 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qlora.data.tokenization import prompt_ids
from qlora.eval.batches import batched, left_pad, model_device, pad_id
from qlora.eval.items import ItemResults, RougeItem, text_id, unique_ids
from qlora.eval.precision import fp32_scoring
from qlora.eval.result import EvalResult, GroupScore, Metric, Score, Task
from qlora.eval.stats import mean_interval


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 8,
                    progress: bool = True) -> list[str]:  # fmt: skip
    """Greedy continuations of `prompts` (chat template applied when the tokenizer has one)."""
    device = model_device(model)
    pad = pad_id(tokenizer)
    outputs: list[str] = []
    for _, chunk in batched(prompts, batch_size, progress, "generate"):
        ids, mask = left_pad([prompt_ids(tokenizer, p) for p in chunk], pad)
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=pad)  # fmt: skip
        outputs += tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
    return [o.strip() for o in outputs]


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """RougeL F-measure of each prediction, the best over its references."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs) for pred, refs in zip(predictions, references)]


@fp32_scoring
def evaluate_rouge(model, tokenizer, prompts: Sequence[str], references: Sequence[Sequence[str]], *, max_new_tokens: int = 48,
                   batch_size: int = 8, groups: Sequence[str] | None = None, progress: bool = True) -> EvalResult:  # fmt: skip
    """Mean RougeL F of greedy generations; `groups` (one name per prompt, e.g. the Natural
    Instructions subtask) gives the per-group breakdown.

    Returns:
        the mean with its normal-approximation interval; items per prompt (id "<group or 'prompt'>/<hash
        of the prompt and its references>", its RougeL F).
    """
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if groups is not None and len(groups) != len(prompts):
        raise ValueError(f"{len(groups)} group names for {len(prompts)} prompts")
    if len(references) != len(prompts):
        raise ValueError(f"{len(references)} reference lists for {len(prompts)} prompts")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    scores = rouge_l(generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     progress=progress), references)  # fmt: skip
    by_group: dict[str, GroupScore] = {}
    for g in sorted(set(groups or ())):
        vals = [s for s, name in zip(scores, groups) if name == g]
        m, lo, hi = mean_interval(vals)
        by_group[g] = GroupScore(m, len(vals), max(0.0, lo), min(1.0, hi))
    mean, low, high = mean_interval(scores)
    ids = unique_ids(text_id(groups[i] if groups else "prompt", p, *references[i]) for i, p in enumerate(prompts))
    items = ItemResults(Task.ROUGE_L, tuple(RougeItem(i, s) for i, s in zip(ids, scores)))
    score = Score(Task.ROUGE_L, Metric.ROUGE_L_F, mean, len(scores), max(0.0, low), min(1.0, high))
    return EvalResult(score, items, groups=by_group)
