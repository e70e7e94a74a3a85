"""Accuracy of a sequence classifier (the GLUE-style column of Table 3), with a Wilson 95% interval
and the per-example predictions (paired comparisons between methods on the same test set)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qlora.eval.batches import batched, model_device, right_pad
from qlora.eval.items import ItemResults, LabelItem, tokens_id, unique_ids
from qlora.eval.precision import fp32_scoring
from qlora.eval.result import EvalResult, GroupScore, Metric, Score, Task
from qlora.eval.stats import wilson_interval


@fp32_scoring
@torch.no_grad()
def evaluate_classification(model: torch.nn.Module, examples: Sequence[dict[str, torch.Tensor]], *, pad_token_id: int = 0,
                            batch_size: int = 32, labels: Sequence[str] | None = None, progress: bool = True) -> EvalResult:  # fmt: skip
    """Args:
        examples: {"input_ids": (T,), "label": ()} dicts (e.g. a classification TokenizedDataset).
        labels: label names, for the per-class breakdown.

    Returns:
        accuracy with its Wilson interval; groups per class; items per example (id "e<index>-<hash of
        its tokens and label>", gold label, prediction).
    """
    if len(examples) == 0:
        raise ValueError("no examples to evaluate")
    device = model_device(model)
    preds: list[int] = []
    gold: list[int] = []
    ids: list[str] = []
    for start, chunk in batched(examples, batch_size, progress, "classification"):
        input_ids, attention_mask = right_pad([e["input_ids"] for e in chunk], pad_token_id)
        gold_chunk = [int(e["label"]) for e in chunk]
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        preds += logits.argmax(-1).cpu().tolist()
        gold += gold_chunk
        ids += [tokens_id("e", start + j, torch.cat([e["input_ids"].flatten(), e["label"].reshape(1)]))
                for j, e in enumerate(chunk)]  # fmt: skip
    correct = [p == g for p, g in zip(preds, gold)]
    hits = sum(correct)
    low, high = wilson_interval(hits, len(correct))
    groups = {}
    for cls in sorted(set(gold)):
        idx = [i for i, g in enumerate(gold) if g == cls]
        k = sum(correct[i] for i in idx)
        lo, hi = wilson_interval(k, len(idx))
        groups[labels[cls] if labels else str(cls)] = GroupScore(k / len(idx), len(idx), lo, hi)
    items = ItemResults(Task.CLASSIFICATION, tuple(LabelItem(i, g, p) for i, g, p in zip(unique_ids(ids), gold, preds)))
    score = Score(Task.CLASSIFICATION, Metric.ACCURACY, hits / len(correct), len(correct), low, high)
    return EvalResult(score, items, groups=groups)
