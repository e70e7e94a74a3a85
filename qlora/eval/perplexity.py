"""Perplexity of a causal LM on fixed windows of held-out tokens (paper Table 2's measure).

exp(mean NLL over all predicted tokens): each window of T tokens predicts T - 1 of them; the token-
weighted mean over windows. The 95% interval comes from the spread of the per-window mean NLL.
"""

from __future__ import annotations

import math

import torch

from qlora.eval.batches import batched, model_device
from qlora.eval.result import EvalResult
from qlora.eval.stats import mean_interval


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, windows: torch.Tensor, *, batch_size: int = 8, progress: bool = True) -> EvalResult:
    """Args:
        windows: (W, T) token ids, T >= 2.

    Returns:
        EvalResult(task="perplexity", value=exp(mean NLL), n=predicted tokens, per_example=window NLLs).
    """
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be (W, T) with W >= 1 and T >= 2, got shape {tuple(windows.shape)}")
    device = model_device(model)
    nlls: list[float] = []
    for _, chunk in batched(windows, batch_size, progress, "perplexity"):
        ids = chunk.long().to(device)
        logits = model(input_ids=ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        nlls += loss.mean(dim=1).tolist()
    mean, low, high = mean_interval(nlls)
    n = windows.shape[0] * (windows.shape[1] - 1)
    return EvalResult("perplexity", "perplexity", math.exp(mean), n, math.exp(low), math.exp(high), per_example=tuple(nlls))
