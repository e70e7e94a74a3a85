"""Merged export: the base dequantized to bf16 with the adapters folded in, as a plain transformers folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from qlora.models.surgery import merge_model


def export_merged(model: nn.Module, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16, tokenizer_dir: str | Path | None = None) -> Path:
    """Merges every QLoRALinear (deq(W) + s·B·A, rounded once to `dtype`) and saves with save_pretrained.

    The model is modified in place (its quantized layers become plain ones). Written atomically.
    """
    out_dir = Path(out_dir)
    merge_model(model, dtype)
    model.to(dtype)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer_dir is not None:
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
                shutil.copy2(f, tmp / f.name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
