"""Accuracy of a sequence classifier on labelled examples (paper Table 3's GLUE column).

Our stand-ins for GLUE are the embedded BIG-bench NLI and sentiment tasks (`qlora.data.bigbench`);
real GLUE tasks from `datasets` work the same once mapped to (text, text_pair, label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from qlora.eval.batches import batched, model_device
from qlora.eval.result import EvalResult, GroupScore
from qlora.eval.sampling import subsample
from qlora.eval.stats import wilson_interval


class Labelled(Protocol):
    """What the evaluator reads of an example (e.g. `qlora.data.bigbench.ClassificationExample`);
    `text_pair` is optional."""

    text: str
    label: int


@torch.no_grad()
def evaluate_classification(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Labelled],
    *,
    label_names: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 256,
    progress: bool = True,
) -> EvalResult:
    """Accuracy of argmax(logits) against the labels.

    Args:
        model: a sequence classifier returning `.logits` (B, num_labels).
        tokenizer: its tokenizer (pairs are encoded as the tokenizer joins them, e.g. [SEP]).
        examples: objects with `text`, `label` and optionally `text_pair`.
        label_names: names of the label ids, used as group keys (default: "0", "1", ...).
        limit / seed: score a seeded subsample.
        batch_size: examples per forward pass.
        max_length: truncation length in tokens.
        progress: show a tqdm bar.

    Returns:
        accuracy; groups per true label (each group's value is that class's recall);
        extra: "macro_recall" (mean over classes present).

    Raises:
        ValueError: no examples, or a label outside the model's outputs or `label_names`.
    """
    examples = subsample(examples, limit, seed)
    if not examples:
        raise ValueError("no examples to evaluate")
    device = model_device(model)
    model.eval()
    correct: list[float] = []
    for _, batch in batched(examples, batch_size, progress, "classification"):
        pairs = [getattr(e, "text_pair", None) for e in batch]
        texts = [e.text for e in batch]
        enc = tokenizer(texts, pairs if any(p is not None for p in pairs) else None, padding=True,
                        truncation=True, max_length=max_length, return_tensors="pt")  # fmt: skip
        logits = model(**{k: v.to(device) for k, v in enc.items()}).logits  # (B, C)
        for e, pred in zip(batch, logits.argmax(-1).tolist()):
            if not 0 <= e.label < logits.shape[-1]:
                raise ValueError(f"label {e.label!r} is outside the model's {logits.shape[-1]} outputs")
            correct.append(float(pred == e.label))

    names = list(label_names) if label_names is not None else None
    per: dict[int, list[float]] = {}
    for e, c in zip(examples, correct):
        per.setdefault(e.label, []).append(c)
    groups = {}
    for label in sorted(per):
        if names is not None and label >= len(names):
            raise ValueError(f"label {label} has no name in label_names={names!r}")
        hits, n = int(sum(per[label])), len(per[label])
        groups[names[label] if names else str(label)] = GroupScore(hits / n, n, *wilson_interval(hits, n))
    hits, n = int(sum(correct)), len(correct)
    extra = {"macro_recall": sum(g.value for g in groups.values()) / len(groups)}
    return EvalResult("classification", "accuracy", hits / n, n, *wilson_interval(hits, n), groups, extra, tuple(correct))
