"""NLL of held-out instruction responses: the direct measure of whether fine-tuning worked (issue 12 §3:
the tuned model must beat the untuned one on held-out instruction loss).

The examples are tokenized as for training (`qlora.data.tokenization.encode_instruction`): the loss
counts only the response tokens (labels != -100), as the training loss does. The score is the
token-weighted mean NLL per response token (nats); per example the summed NLL and its token count
are returned, so that two models can be compared example by example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qlora.data.tokenization import IGNORE_INDEX
from qlora.eval.batches import batched, model_device, right_pad
from qlora.eval.items import ItemResults, TokenNLL, tokens_id, unique_ids
from qlora.eval.precision import fp32_scoring
from qlora.eval.result import EvalResult, Metric, Score, Task
from qlora.eval.stats import ratio_interval


@fp32_scoring
@torch.no_grad()
def evaluate_heldout_nll(model: torch.nn.Module, examples: Sequence[dict[str, torch.Tensor]], *, pad_token_id: int = 0,
                         batch_size: int = 8, groups: Sequence[str] | None = None, template_tail: Sequence[int] | None = None,
                         progress: bool = True) -> EvalResult:  # fmt: skip
    """Summed NLL of each example's response tokens under a causal LM.

    Args:
        model: a causal LM returning `.logits` (B, T, V).
        examples: {"input_ids": (T,), "labels": (T,)} dicts (e.g. a causal TokenizedDataset), labels
            -100 on the prompt; the label at position t is the token predicted from positions < t.
        pad_token_id: the id right padding uses (masked out).
        batch_size: examples per forward pass (sorted by length, so that a batch pads little).
        groups: per example, the task it was sampled with: its item id starts with "<task>/" (paired
            statistics then resample whole tasks).
        template_tail: per example, how many of its last response tokens are the template's (end of turn):
            the items also hold the NLL without them (`content_tokens`, `content_nll_sum`).

    Returns:
        score: mean NLL per response token (nats) with the ratio-estimator 95% interval, n = examples —
        with `template_tail`, without the template's tokens (metric CONTENT_NLL; the NLL with them in
        extra); items: per example (id "[<group>/]x<index>-<hash of its tokens and labels>") its response
        tokens and summed NLL, and the same without the template's tokens.

    Raises:
        ValueError: no examples, shapes that differ, or an example without response tokens.
    """
    if len(examples) == 0:
        raise ValueError("no held-out examples to evaluate")
    for name, values in (("groups", groups), ("template_tail", template_tail)):
        if values is not None and len(values) != len(examples):
            raise ValueError(f"{len(values)} {name} for {len(examples)} examples")
    for i, e in enumerate(examples):
        if e["input_ids"].shape != e["labels"].shape or e["input_ids"].dim() != 1:
            raise ValueError(f"example {i}: input_ids {tuple(e['input_ids'].shape)} and labels {tuple(e['labels'].shape)} "
                             "must be equal 1-D shapes")  # fmt: skip
        if int((e["labels"][1:] != IGNORE_INDEX).sum()) == 0:
            raise ValueError(f"example {i} has no response tokens to score (all labels after the first are -100)")
    device = model_device(model)
    order = sorted(range(len(examples)), key=lambda i: -examples[i]["input_ids"].numel())
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    content: list[tuple[int, float] | None] = [None] * len(examples)
    for _, idx in batched(order, batch_size, progress, "held-out NLL"):
        ids, mask = right_pad([examples[i]["input_ids"] for i in idx], pad_token_id)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, i in enumerate(idx):
            labels[row, : examples[i]["labels"].numel()] = examples[i]["labels"]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = labels[:, 1:].to(device)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                                                 reduction="none")  # (B, T-1), 0 where ignored  # fmt: skip
        for row, i in enumerate(idx):
            sums[i] = float(loss[row].double().sum())
            counts[i] = int((target[row] != IGNORE_INDEX).sum())
            if template_tail is not None and 0 < counts[i] - template_tail[i]:
                scored = (target[row] != IGNORE_INDEX).nonzero().flatten()[: counts[i] - template_tail[i]]
                content[i] = (len(scored), float(loss[row, scored].double().sum()))
    prefix = [f"{g}/x" for g in groups] if groups is not None else ["x"] * len(examples)
    names = unique_ids(tokens_id(prefix[i], i, torch.cat([e["input_ids"], e["labels"]])) for i, e in enumerate(examples))
    items = ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(n, c, s, *(content[i] or (None, None)))
                                                for i, (n, c, s) in enumerate(zip(names, counts, sums))))  # fmt: skip
    mean, low, high = ratio_interval(sums, counts)
    if template_tail is None or any(c is None for c in content):
        return EvalResult(Score(Task.HELDOUT_NLL, Metric.NLL, mean, len(examples), low, high), items)
    # the headline leaves out the template's end-of-turn tokens (learned in a few steps, they dominate short answers)
    c_mean, c_low, c_high = ratio_interval([c[1] for c in content], [c[0] for c in content])
    extra = {"nll_with_template": mean, "nll_with_template_ci_low": low, "nll_with_template_ci_high": high,
             "template_token_share": 1 - sum(c[0] for c in content) / sum(counts)}  # fmt: skip
    return EvalResult(Score(Task.HELDOUT_NLL, Metric.CONTENT_NLL, c_mean, len(examples), c_low, c_high), items, extra=extra)
