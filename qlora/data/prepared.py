"""The prepared data folder as its readers see it: the file names `prepare_data` writes, and the cutting of
the perplexity text into token windows. Training and evaluation import this, not the loaders, so that a
change to a data source re-runs `prepare_data` and only what its outputs change.
"""

from __future__ import annotations

import torch

CLS_TRAIN, CLS_TEST, CLS_LABELS = "cls_train.safetensors", "cls_test.safetensors", "cls_labels.json"
INSTRUCT_TRAIN, INSTRUCT_TEST, INSTRUCT_HELDOUT = "instruct_train.safetensors", "instruct_test.json", "instruct_heldout.safetensors"
INSTRUCT_VAL = "instruct_val.safetensors"  # validation examples: other held-out tasks than the test's
# beside each: {"tasks": [the task of each example], "template_tail": [its trailing template label tokens]}
INSTRUCT_HELDOUT_TASKS, INSTRUCT_VAL_TASKS = "instruct_heldout.json", "instruct_val.json"
PERPLEXITY_TEXT = "perplexity_text.json"


def read_example_tasks(path) -> tuple[list[str], list[int]]:
    """(task, template tail tokens) of each example of a held-out token file's sidecar JSON."""
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    tasks, tail = data["tasks"], data.get("template_tail", [0] * len(data["tasks"]))
    if len(tasks) != len(tail):
        raise ValueError(f"{path}: {len(tasks)} tasks but {len(tail)} template_tail counts")
    return tasks, tail


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text of its own accord (Gemma's `<bos>`; none for SmolLM2/Qwen2)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a").input_ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def perplexity_windows(tokenizer, texts: list[str], window: int, count: int) -> torch.Tensor:
    """(count, window) token windows of `texts` joined by blank lines, the same for every data type.

    Each window starts with the special tokens the tokenizer puts before a text (a model trained with
    `<bos>` first, such as Gemma, degrades badly without it: 28.4 vs 7.9 perplexity on the same targets),
    followed by the next `window - len(special)` text tokens; the special tokens are context, never
    predicted targets (a window's targets are its positions 1..window-1, all text once the prefix is 1
    token).

    Raises:
        ValueError: the text is too short (names data.perplexity_windows / perplexity_window_tokens).
    """
    special = leading_special_ids(tokenizer)
    step = window - len(special)
    if step < 2:
        raise ValueError(f"data.perplexity_window_tokens={window} leaves fewer than 2 text tokens after {len(special)} special ones")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids
    if len(ids) < step * count:
        raise ValueError(f"perplexity text has {len(ids)} tokens, fewer than data.perplexity_windows={count} "
                         f"x data.perplexity_window_tokens={window}")  # fmt: skip
    text = torch.tensor(ids[: step * count], dtype=torch.long).view(count, step)
    return torch.cat([torch.tensor(special, dtype=torch.long).expand(count, -1), text], dim=1)
