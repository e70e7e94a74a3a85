"""Seeded subsampling of evaluation sets (the same seed picks the same examples for every model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def subsample(items: Sequence, limit: int | None, seed: int = 0) -> list:
    """`limit` items drawn without replacement by a seeded permutation, kept in their original order.

    Args:
        items: the full evaluation set.
        limit: how many to keep; None (or >= len(items)) keeps all.
        seed: the permutation's seed.

    Raises:
        ValueError: limit is negative or not an int.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    if limit is None or limit >= len(items):
        return list(items)
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(items), generator=g)[:limit].tolist())
    return [items[i] for i in keep]
