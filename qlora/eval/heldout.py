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
                         batch_size: int = 8, progress: bool = True) -> EvalResult:  # fmt: skip
    """Summed NLL of each example's response tokens under a causal LM.

    Args:
        model: a causal LM returning `.logits` (B, T, V).
        examples: {"input_ids": (T,), "labels": (T,)} dicts (e.g. a causal TokenizedDataset), labels
            -100 on the prompt; the label at position t is the token predicted from positions < t.
        pad_token_id: the id right padding uses (masked out).
        batch_size: examples per forward pass (sorted by length, so that a batch pads little).

    Returns:
        score: mean NLL per response token (nats) with the ratio-estimator 95% interval, n = examples;
        items: per example (id "x<index>-<hash of its tokens and labels>") its response tokens and
        summed NLL.

    Raises:
        ValueError: no examples, shapes that differ, or an example without response tokens.
    """
    if len(examples) == 0:
        raise ValueError("no held-out examples to evaluate")
    for i, e in enumerate(examples):
        if e["input_ids"].shape != e["labels"].shape or e["input_ids"].dim() != 1:
            raise ValueError(f"example {i}: input_ids {tuple(e['input_ids'].shape)} and labels {tuple(e['labels'].shape)} "
                             "must be equal 1-D shapes")  # fmt: skip
        if int((e["labels"][1:] != IGNORE_INDEX).sum()) == 0:
            raise ValueError(f"example {i} has no response tokens to score (all labels after the first are -100)")
    device = model_device(model)
    order = sorted(range(len(examples)), key=lambda i: -examples[i]["input_ids"].numel())
    sums, counts = [0.0] * len(examples), [0] * len(examples)
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
    names = unique_ids(tokens_id("x", i, torch.cat([e["input_ids"], e["labels"]])) for i, e in enumerate(examples))
    items = ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(n, c, s) for n, c, s in zip(names, counts, sums)))
    mean, low, high = ratio_interval(sums, counts)
    return EvalResult(Score(Task.HELDOUT_NLL, Metric.NLL, mean, len(examples), low, high), items)
