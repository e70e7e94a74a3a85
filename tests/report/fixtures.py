"""Per-item fixtures whose paired statistics are known."""

from __future__ import annotations

import numpy as np

from qlora.eval.items import ItemResults, LabelItem, MMLUItem, RougeItem, TokenNLL
from qlora.eval.result import Task


def windows(rates, tokens=255, prefix="w") -> ItemResults:
    """Perplexity windows with the given mean NLL per token."""
    return ItemResults(Task.PERPLEXITY, tuple(TokenNLL(f"{prefix}{i:05d}", tokens, float(r) * tokens) for i, r in enumerate(rates)))


def heldout(rates, tokens) -> ItemResults:
    return ItemResults(Task.HELDOUT_NLL, tuple(TokenNLL(f"x{i:05d}", t, float(r) * t) for i, (r, t) in enumerate(zip(rates, tokens))))


def rouge(scores) -> ItemResults:
    return ItemResults(Task.ROUGE_L, tuple(RougeItem(f"p/{i:04d}", float(s)) for i, s in enumerate(scores)))


def labels(correct) -> ItemResults:
    return ItemResults(Task.CLASSIFICATION, tuple(LabelItem(f"e{i:05d}", 1, 1 if c else 0) for i, c in enumerate(correct)))


def mmlu(letter_correct, choice_correct=None, task=Task.MMLU) -> ItemResults:
    items = []
    for i, ok in enumerate(letter_correct):
        kw = {}
        if choice_correct is not None:
            kw = {"choice_pred": "A" if choice_correct[i] else "B",
                  "choice_logprob_sums": (-1.0, -2.0, -3.0, -4.0) if choice_correct[i] else (-2.0, -1.0, -3.0, -4.0),
                  "choice_tokens": (1, 1, 1, 1)}  # fmt: skip
        letters = (-1.0, -2.0, -3.0, -4.0) if ok else (-4.0, -3.0, -2.0, -1.0)
        items.append(MMLUItem(f"s/{i:05d}", "s", "A", 5, "A" if ok else "D", letters, **kw))
    return ItemResults(task, tuple(items))


def correct_pairs(both: int, row_only: int, ref_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Row and reference correctness with the given 2x2 table."""
    row = [True] * both + [True] * row_only + [False] * ref_only + [False] * neither
    ref = [True] * both + [False] * row_only + [True] * ref_only + [False] * neither
    return row, ref


def normal(n: int, mean: float, sd: float, seed: int = 0) -> np.ndarray:
    """n values with exactly this sample mean and SD (ddof=1)."""
    x = np.random.default_rng(seed).standard_normal(n)
    return mean + sd * (x - x.mean()) / x.std(ddof=1)
