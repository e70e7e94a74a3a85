"""Deterministic batch order (optionally grouped by length, as the paper) and padding collation.

Examples are dicts of 1-D LongTensors: causal LM {"input_ids", "labels"} (labels -100 where no loss),
classification {"input_ids", "label"} (label a 0-d LongTensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100
_MEGABATCH = 50  # micro-batches per length-sorted group (as transformers' LengthGroupedSampler)


def epoch_order(lengths: Sequence[int], micro_batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The micro-batches of one epoch: a seeded shuffle, then length-sorted megabatches when grouping.

    The last micro-batch may be short. The order depends only on (lengths, sizes, seed, epoch), which
    is what lets a resumed run skip exactly the batches it has seen.
    """
    if not lengths:
        raise ValueError("cannot batch an empty dataset")
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if group_by_length:
        size = micro_batch_size * _MEGABATCH
        perm = [i for k in range(0, len(perm), size) for i in sorted(perm[k : k + size], key=lambda i: -lengths[i])]
    return [perm[k : k + micro_batch_size] for k in range(0, len(perm), micro_batch_size)]


def collate(examples: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pads to the longest example: input_ids, attention_mask, and labels (-100) or label."""
    longest = max(int(e["input_ids"].numel()) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, longest), dtype=torch.long)
    batch: dict[str, torch.Tensor] = {}
    has_labels = "labels" in examples[0]
    labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long) if has_labels else None
    for i, e in enumerate(examples):
        length = e["input_ids"].numel()
        input_ids[i, :length] = e["input_ids"]
        attention_mask[i, :length] = 1
        if labels is not None:
            labels[i, :length] = e["labels"]
    batch["input_ids"], batch["attention_mask"] = input_ids, attention_mask
    if labels is not None:
        batch["labels"] = labels
    else:
        batch["labels"] = torch.stack([torch.as_tensor(e["label"], dtype=torch.long) for e in examples])
    return batch
