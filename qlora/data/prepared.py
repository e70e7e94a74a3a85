"""The prepared data folder as its readers see it: the file names `prepare_data` writes, and the cutting of
the perplexity text into token windows. Training and evaluation import this, not the loaders, so that a
change to a data source re-runs `prepare_data` and only what its outputs change.
"""

from __future__ import annotations

import torch

CLS_TRAIN, CLS_TEST, CLS_LABELS = "cls_train.safetensors", "cls_test.safetensors", "cls_labels.json"
INSTRUCT_TRAIN, INSTRUCT_TEST, INSTRUCT_HELDOUT = "instruct_train.safetensors", "instruct_test.json", "instruct_heldout.safetensors"
INSTRUCT_HELDOUT_TASKS = "instruct_heldout.json"  # {"tasks": [the task of each held-out example]}
PERPLEXITY_TEXT = "perplexity_text.json"


def perplexity_windows(tokenizer, texts: list[str], window: int, count: int):
    """(count, window) token windows of `texts` joined by blank lines, the same for every data type.

    Raises:
        ValueError: the text is too short (names data.perplexity_windows / perplexity_window_tokens).
    """
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids
    if len(ids) < window * count:
        raise ValueError(f"perplexity text has {len(ids)} tokens, fewer than data.perplexity_windows={count} "
                         f"x data.perplexity_window_tokens={window}")  # fmt: skip
    return torch.tensor(ids[: window * count], dtype=torch.long).view(count, window)
