"""Accuracy of a sequence classifier (the GLUE-style column of Table 3), with a Wilson 95% interval."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qlora.eval.batches import batched, model_device, right_pad
from qlora.eval.result import EvalResult, GroupScore
from qlora.eval.stats import wilson_interval


@torch.no_grad()
def evaluate_classification(model: torch.nn.Module, examples: Sequence[dict[str, torch.Tensor]], *, pad_token_id: int = 0,
                            batch_size: int = 32, labels: Sequence[str] | None = None, progress: bool = True) -> EvalResult:  # fmt: skip
    """Args:
        examples: {"input_ids": (T,), "label": ()} dicts (e.g. a classification TokenizedDataset).
        labels: label names, for the per-class breakdown.
    """
    if len(examples) == 0:
        raise ValueError("no examples to evaluate")
    device = model_device(model)
    correct: list[float] = []
    gold: list[int] = []
    for _, chunk in batched(examples, batch_size, progress, "classification"):
        input_ids, attention_mask = right_pad([e["input_ids"] for e in chunk], pad_token_id)
        gold_chunk = torch.stack([torch.as_tensor(e["label"], dtype=torch.long) for e in chunk])
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        pred = logits.argmax(-1).cpu()
        correct += (pred == gold_chunk).float().tolist()
        gold += gold_chunk.tolist()
    hits = int(sum(correct))
    low, high = wilson_interval(hits, len(correct))
    groups = {}
    for cls in sorted(set(gold)):
        idx = [i for i, g in enumerate(gold) if g == cls]
        k = int(sum(correct[i] for i in idx))
        lo, hi = wilson_interval(k, len(idx))
        groups[labels[cls] if labels else str(cls)] = GroupScore(k / len(idx), len(idx), lo, hi)
    return EvalResult("classification", "accuracy", hits / len(correct), len(correct), low, high, groups=groups,
                      per_example=tuple(correct))  # fmt: skip
