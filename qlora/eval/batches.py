"""Shared plumbing of the evaluators: device, left-padded batches, the forward call, progress."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padded positions are masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long, sequences right-aligned (last token at T-1)."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, longest - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, longest - len(s) :] = 1
    return ids, mask


def _accepts(model: torch.nn.Module, name: str) -> bool:
    # Only named parameters: a catch-all **kwargs may forward an unknown name somewhere it breaks.
    return name in inspect.signature(model.forward).parameters


@torch.no_grad()
def causal_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  keep_last: int | None = None) -> torch.Tensor:  # fmt: skip
    """Float32 logits of a left-padded batch: (B, T, V), or (B, keep_last, V) for the last positions.

    Position ids count real tokens only, so a left-padded sequence gets the same positions (and
    logits) as when it is alone. `keep_last` is passed as `logits_to_keep` where the model takes it
    (transformers' causal LMs), which saves computing the head over the whole prompt.
    """
    device = model_device(model)
    kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if _accepts(model, "position_ids"):
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0).to(device)
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if keep_last is not None and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep_last
    logits = model(**kwargs).logits
    if keep_last is not None:
        logits = logits[:, -keep_last:]
    return logits.float()


def batched(items: Sequence, batch_size: int, progress: bool, desc: str) -> Iterator[tuple[int, Sequence]]:
    """(start index, slice) over `items` in batches, with a tqdm bar when `progress`."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        yield start, items[start : start + batch_size]
