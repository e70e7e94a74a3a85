"""RougeL of greedy generations against references: the Super-NaturalInstructions measure (Table 3).

The metric is Google's maintained `rouge-score` package (RougeL F-measure, Porter stemming as in
Super-NaturalInstructions' evaluation), not a hand-written LCS. With several references an example
scores its best match. Prompts come in already encoded (`qlora.data.tokenization.prompt_ids`), so the
model sees exactly the format it was trained on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from rouge_score import rouge_scorer

from qlora.eval.batches import batched, causal_logits, left_pad, model_device, pad_id
from qlora.eval.result import EvalResult, GroupScore
from qlora.eval.stats import mean_interval


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """RougeL F-measure of `prediction` against its best-matching reference, in [0, 1]."""
    if isinstance(references, str) or not references:
        raise ValueError(f"references must be a non-empty sequence of strings, got {references!r}")
    scorer = _scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


_SCORER = None


def _scorer() -> rouge_scorer.RougeScorer:
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    pad: int, stop_ids: Sequence[int] = ()) -> list[list[int]]:  # fmt: skip
    """Greedy continuations of a batch of prompts (left-padded), each cut at its first stop token.

    Uses the model's own `generate` (with its KV cache) when it has one; otherwise recomputes the full
    forward each step (any module returning `.logits`).
    """
    ids, mask = left_pad(prompts, pad)
    if hasattr(model, "generate"):
        device = model_device(model)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=list(stop_ids) or None)  # fmt: skip
        new = out[:, ids.shape[1] :].cpu()
    else:
        new = torch.empty((ids.shape[0], 0), dtype=torch.long)
        for _ in range(max_new_tokens):
            nxt = causal_logits(model, ids, mask, keep_last=1)[:, -1].argmax(-1).cpu()  # (B,)
            new = torch.cat([new, nxt[:, None]], 1)
            ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
            if stop_ids and all(any(t in stop_ids for t in row) for row in new.tolist()):
                break
    result = []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        result.append(row[:cut])
    return result


def evaluate_rouge(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    references: Sequence[Sequence[str]],
    *,
    groups: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Mean RougeL F-measure of greedy generations.

    Args:
        model: a causal LM (with `generate`, or any module returning `.logits`).
        tokenizer: decodes the generations (special tokens skipped).
        prompts: encoded prompts, e.g. `[prompt_ids(tokenizer, ex.prompt) for ex in examples]`.
        references: one or more reference strings per prompt.
        groups: a group name per prompt (e.g. the Natural Instructions subtask), for the breakdown.
        max_new_tokens: generation budget; generation stops earlier at EOS.
        batch_size: prompts per generate call.
        progress: show a tqdm bar.

    Returns:
        value = mean RougeL F in [0, 1] with a normal-approximation 95% interval; groups by `groups`;
        per_example = each example's RougeL.

    Raises:
        ValueError: empty input, mismatched lengths, max_new_tokens < 1.
    """
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if len(references) != len(prompts) or (groups is not None and len(groups) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references"
                         + ("" if groups is None else f" and {len(groups)} groups"))  # fmt: skip
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    stop = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    model.eval()
    scores: list[float] = []
    for start, batch in batched(prompts, batch_size, progress, "rougeL"):
        outs = greedy_generate(model, batch, max_new_tokens=max_new_tokens, pad=pad_id(tokenizer), stop_ids=stop)
        for i, out in enumerate(outs):
            text = tokenizer.decode(out, skip_special_tokens=True).strip()
            scores.append(rouge_l(text, references[start + i]))

    by_group = {}
    if groups is not None:
        per: dict[str, list[float]] = defaultdict(list)
        for g, s in zip(groups, scores):
            per[g].append(s)
        for g in sorted(per):
            m, lo, hi = mean_interval(per[g])
            by_group[g] = GroupScore(m, len(per[g]), max(0.0, lo), min(1.0, hi))
    mean, lo, hi = mean_interval(scores)
    return EvalResult("rougeL", "rougeL_f", mean, len(scores), max(0.0, lo), min(1.0, hi), by_group, {}, tuple(scores))
