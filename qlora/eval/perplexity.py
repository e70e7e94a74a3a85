"""Perplexity of a causal LM on fixed windows of held-out tokens (paper Table 2's measure).

exp(mean NLL over all predicted tokens): each window of T tokens predicts T - 1 of them; the token-
weighted mean over windows. The 95% interval comes from the spread of the per-window NLL; the
per-window sums are returned as items, so that two data types can be compared window by window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from qlora.eval.batches import batched, model_device
from qlora.eval.items import ItemResults, TokenNLL, tokens_id, unique_ids
from qlora.eval.precision import fp32_scoring
from qlora.eval.result import EvalResult, Metric, Score, Task
from qlora.eval.stats import ratio_interval


def corpus_ids(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(N,) long: the texts tokenized without special tokens, joined by EOS (when the tokenizer has one)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    sep = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    ids: list[int] = []
    for i, text in enumerate(texts):
        ids += (sep if i else []) + tokenizer(text, add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


def make_windows(ids: torch.Tensor, window: int, max_windows: int | None = None) -> torch.Tensor:
    """(W, window): consecutive non-overlapping windows of a 1-D token tensor; the tail that does not
    fill a window is dropped, so every data type is scored on exactly the same tokens.

    Raises:
        ValueError: window < 2, or fewer than `window` tokens.
    """
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel() // window if max_windows is None else min(ids.numel() // window, max_windows)
    if n < 1:
        raise ValueError(f"{ids.numel()} tokens do not fill one window of {window}")
    return ids[: n * window].view(n, window)


@fp32_scoring
@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 8, progress: bool = True) -> EvalResult:
    """Args:
        windows: (W, T) token ids, T >= 2.

    Returns:
        score: perplexity = exp(token-weighted mean NLL), n = predicted tokens, the interval from the
        ratio estimator over windows; items: per window (id "w<index>-<hash of its tokens>") its T - 1
        predicted tokens and their summed NLL.
    """
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be (W, T) with W >= 1 and T >= 2, got shape {tuple(windows.shape)}")
    device = model_device(model)
    sums: list[float] = []
    for _, chunk in batched(windows, batch_size, progress, "perplexity"):
        ids = chunk.long().to(device)
        logits = model(input_ids=ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        sums += loss.double().sum(dim=1).tolist()
    tokens = windows.shape[1] - 1
    ids = unique_ids(tokens_id("w", i, w) for i, w in enumerate(windows))
    items = ItemResults(Task.PERPLEXITY, tuple(TokenNLL(i, tokens, s) for i, s in zip(ids, sums)))
    mean, low, high = ratio_interval(sums, [tokens] * len(sums))
    score = Score(Task.PERPLEXITY, Metric.PERPLEXITY, math.exp(mean), tokens * len(sums), math.exp(low), math.exp(high))
    return EvalResult(score, items)
