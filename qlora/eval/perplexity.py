"""Perplexity of a causal LM on held-out text: the paper's Table 2 measure of quantization alone.

The text is tokenized once and cut into fixed, non-overlapping windows of `window` tokens (the tail
that does not fill a window is dropped), so every data type is measured on exactly the same tokens.
Each window is scored on its own (no context from the previous one; its first token is not
predicted). Perplexity = exp(token-weighted mean NLL); the 95% interval comes from the spread of the
per-window mean NLLs (normal approximation), mapped through exp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qlora.eval.batches import batched, causal_logits
from qlora.eval.result import EvalResult
from qlora.eval.stats import mean_interval


def corpus_ids(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(N,) long: the texts tokenized without special tokens, joined by EOS (when the tokenizer has one)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    sep = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    ids: list[int] = []
    for i, text in enumerate(texts):
        ids += (sep if i else []) + tokenizer(text, add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def perplexity_of_ids(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    window: int = 256,
    max_windows: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Perplexity over the windows of a 1-D token tensor.

    Args:
        model: a causal LM returning `.logits` (B, T, V).
        ids: (N,) token ids.
        window: tokens per window (>= 2).
        max_windows: score only the first this many windows (None: all).
        batch_size: windows per forward pass.
        progress: show a tqdm bar.

    Returns:
        value = perplexity, n = predicted tokens, groups empty, extra: mean_nll, windows;
        per_example = mean NLL of each window.

    Raises:
        ValueError: window < 2, or fewer than `window` tokens.
    """
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n_windows = ids.numel() // window
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise ValueError(f"{ids.numel()} tokens do not fill one window of {window}")
    windows = ids[: n_windows * window].view(n_windows, window)  # (W, T)

    model.eval()
    window_nll: list[float] = []
    for _, batch in batched(windows, batch_size, progress, "perplexity"):
        logits = causal_logits(model, batch, torch.ones_like(batch))  # (B, T, V)
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten().to(logits.device),
                              reduction="none").view(batch.shape[0], -1)  # fmt: skip
        window_nll += nll.mean(-1).tolist()
    # Every window predicts window - 1 tokens, so the token-weighted mean is the mean over windows.
    mean, lo, hi = mean_interval(window_nll)
    n_tokens = n_windows * (window - 1)
    extra = {"mean_nll": mean, "windows": float(n_windows)}
    return EvalResult("perplexity", "perplexity", math.exp(mean), n_tokens, math.exp(lo), math.exp(hi),
                      {}, extra, tuple(window_nll))  # fmt: skip


def evaluate_perplexity(model: torch.nn.Module, tokenizer, texts: Sequence[str], **kwargs) -> EvalResult:
    """`perplexity_of_ids` on `corpus_ids(tokenizer, texts)`; keyword arguments as there."""
    return perplexity_of_ids(model, corpus_ids(tokenizer, texts), **kwargs)
