"""Shared plumbing of the evaluators: device, left-padded batches, the forward call, progress."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

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


def _pad(seqs: Sequence[Sequence[int] | torch.Tensor], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            span = slice(longest - len(s), longest) if left else slice(0, len(s))
            ids[i, span] = torch.as_tensor(s, dtype=torch.long)
            mask[i, span] = 1
    return ids, mask


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long, sequences right-aligned (last token at T-1)."""
    return _pad(seqs, pad, left=True)


def right_pad(seqs: Sequence[Sequence[int] | torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long, sequences left-aligned (for encoders)."""
    return _pad(seqs, pad, left=False)


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


def accepts_cache(model: torch.nn.Module) -> bool:
    """Whether `model` takes a KV cache (transformers' causal LMs do; stub models may not)."""
    return all(_accepts(model, name) for name in ("past_key_values", "use_cache", "position_ids", "logits_to_keep"))


@dataclasses.dataclass(frozen=True)
class PrefixCache:
    """The KV cache of a token prefix shared by many contexts (e.g. an MMLU subject's k-shot header and
    exemplars), computed once for a batch of one by `encode_prefix`.

    Attributes:
        past: the model's cache (transformers `Cache`), never modified: users work on a deep copy.
        length: prefix tokens.
    """

    past: Any
    length: int


@torch.no_grad()
def encode_prefix(model: torch.nn.Module, ids: Sequence[int]) -> PrefixCache:
    """Runs `ids` (no padding) once and keeps its KV cache. Requires `accepts_cache(model)`."""
    if len(ids) == 0:
        raise ValueError("the shared prefix must have at least one token")
    device = model_device(model)
    x = torch.as_tensor([list(ids)], dtype=torch.long, device=device)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), position_ids=torch.arange(x.shape[1], device=device)[None],
                use_cache=True, logits_to_keep=1)  # fmt: skip
    return PrefixCache(out.past_key_values, x.shape[1])


@torch.no_grad()
def shared_prefix_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           continuations: Sequence[Sequence[Sequence[int]]] | None = None,
                           prefix: PrefixCache | None = None) -> tuple[torch.Tensor, list[list[torch.Tensor]] | None]:  # fmt: skip
    """Next-token logits after each context and the log-probabilities of its continuations, with the
    context run once: its KV cache is shared by all its continuations, and a `prefix` common to all
    contexts comes from a cache computed once (`encode_prefix`).

    Args:
        input_ids, attention_mask: the contexts (after the prefix, if any), left-padded (B, T) (see
            `left_pad`); each has at least one real token.
        continuations: per context, R token-id lists (the same R for every context), each non-empty;
            None scores no continuation.
        prefix: tokens that precede every context.

    Returns:
        (B, V) float32 logits after each context, and per context R tensors (n,) of float32
        log-probabilities of each continuation's tokens (None without continuations) — what scoring
        prefix + context + continuation whole with `causal_logits` gives, up to float rounding.
        Requires `accepts_cache(model)`.
    """
    b = input_ids.shape[0]
    if continuations is not None:
        repeats = {len(c) for c in continuations}
        if len(continuations) != b or len(repeats) != 1:
            raise ValueError(f"need the same number of continuations for each of the {b} contexts, got "
                             f"{[len(c) for c in continuations]}")  # fmt: skip
        flat = [list(c) for conts in continuations for c in conts]
        if any(len(c) == 0 for c in flat):
            raise ValueError("continuations must be non-empty")
    device = model_device(model)
    mask = attention_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    past = None
    if prefix is not None:
        # Note: the padding of a shorter context sits between the prefix and its tokens: masked out.
        past = copy.deepcopy(prefix.past)
        past.batch_repeat_interleave(b)
        positions = positions + prefix.length
        mask = torch.cat([torch.ones(b, prefix.length, dtype=mask.dtype, device=device), mask], dim=-1)
    out = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions, past_key_values=past,
                use_cache=True, logits_to_keep=1)  # fmt: skip
    last = out.logits[:, -1].float()
    if continuations is None:
        return last.cpu(), None
    (r,) = repeats
    cache = out.past_key_values
    cache.batch_repeat_interleave(r)
    cont_ids, cont_mask = right_pad(flat, 0)
    longest = cont_ids.shape[1]
    ctx_len = mask.sum(-1).repeat_interleave(r)  # real tokens before the continuation: its first position
    cont_positions = ctx_len.unsqueeze(-1) + torch.arange(longest, device=device)
    full_mask = torch.cat([mask.repeat_interleave(r, dim=0), cont_mask.to(device)], dim=-1)
    cont_logits = model(input_ids=cont_ids.to(device), attention_mask=full_mask, position_ids=cont_positions,
                        past_key_values=cache, use_cache=True).logits.float()  # fmt: skip
    first = torch.log_softmax(last, dim=-1).repeat_interleave(r, dim=0)  # predicts each continuation's first token
    rest = torch.log_softmax(cont_logits[:, :-1], dim=-1) if longest > 1 else None
    scores: list[torch.Tensor] = []
    for i, c in enumerate(flat):
        target = torch.as_tensor(c, device=device)
        lp = first[i, target[:1]]
        if len(c) > 1:
            lp = torch.cat([lp, rest[i, : len(c) - 1].gather(-1, target[1:].unsqueeze(-1)).squeeze(-1)])
        scores.append(lp.cpu())
    return last.cpu(), [scores[k * r : (k + 1) * r] for k in range(b)]


def batched(items: Sequence, batch_size: int, progress: bool, desc: str) -> Iterator[tuple[int, Sequence]]:
    """(start index, slice) over `items` in batches, with a tqdm bar when `progress`."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        yield start, items[start : start + batch_size]
