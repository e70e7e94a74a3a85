"""Merged export: the base dequantized to bf16 with the adapters folded in, as a plain transformers folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from qlora.atomic import atomic_dir
from qlora.models.surgery import merge_and_unload

_TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "chat_template")


def export_merged(model: nn.Module, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16, tokenizer_dir: str | Path | None = None) -> Path:
    """Saves a merged copy (every QLoRALinear as deq(W) + s·B·A, rounded once to `dtype`) with save_pretrained.

    `model` is left unchanged (`merge_and_unload` works on a copy). Written atomically (`qlora.atomic`).

    Args:
        model: a prepared transformers model.
        out_dir: the folder to write (replaced if it exists).
        dtype: the dtype of every weight in the folder.
        tokenizer_dir: a folder whose tokenizer files are copied alongside.
    """
    out_dir = Path(out_dir)
    merged = merge_and_unload(model, dtype)  # one dtype throughout
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        if tokenizer_dir is not None:
            for f in Path(tokenizer_dir).iterdir():
                if f.is_file() and f.name.startswith(_TOKENIZER_FILES):
                    shutil.copy2(f, tmp / f.name)
    return out_dir
