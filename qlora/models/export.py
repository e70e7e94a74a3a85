"""Merged export: the base dequantized with the adapters folded in, as a plain transformers folder (bf16),
or re-quantized to a 4-bit data type (`MergeTarget.NF4`: what users mean by "merge into the 4-bit base").

Re-quantizing costs quality: a LoRA update s·B·A is mostly far below one quantization step of the base
(an NF4 step is ~1/8 of a block's absmax), so rounding deq(W) + s·B·A to the 4-bit grid again keeps only
the part of the update that moves a weight across a decision boundary, and adds fresh rounding error of
its own. `benchmarks/shipping_costs.py` measures what that costs (reports/shipping_costs.md).
"""

from __future__ import annotations

import dataclasses
import enum
import shutil
from pathlib import Path

import torch
from torch import nn

from qlora.atomic import atomic_dir
from qlora.config import QuantConfig
from qlora.models.surgery import merge_and_unload

_TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "chat_template")


class MergeTarget(enum.Enum):
    """What a merge writes."""

    BF16 = "bf16"  # deq(W) + s·B·A rounded once to bf16: a plain transformers folder
    NF4 = "nf4"  # then re-quantized to NF4 (+ double quantization): a 4-bit checkpoint folder, quality lost


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
            copy_tokenizer_files(tokenizer_dir, tmp)
    return out_dir


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copies the tokenizer files of the model folder `src` into `dst`."""
    for f in Path(src).iterdir():
        if f.is_file() and f.name.startswith(_TOKENIZER_FILES):
            shutil.copy2(f, Path(dst) / f.name)


def requantize_merged(model: nn.Module, quant: QuantConfig) -> nn.Module:
    """A NEW model whose linear layers hold quantize(deq(W) + s·B·A) in `quant`'s data type, without adapters.

    The merge is computed in fp32 (`merge_and_unload`) and quantized once; `model` is left unchanged.

    Raises:
        ValueError: `quant` is not a quantized data type (BF16: use `merge_and_unload`).
    """
    from qlora.models.surgery import prepare_model

    if not quant.dtype.is_quantized:
        raise ValueError(f"quant.dtype={quant.dtype.value}: re-quantizing needs a 4- or 8-bit data type; merge_and_unload gives 16 bits")
    merged = merge_and_unload(model, torch.float32)
    prepare_model(merged, quant)
    return merged.eval()


def export_merged_quantized(model: nn.Module, out_dir: str | Path, quant: QuantConfig, *, tokenizer=None) -> Path:
    """Writes `requantize_merged(model, quant)` as a 4-bit checkpoint folder (`qlora.save_pretrained`,
    bitsandbytes layout) with the tokenizer, atomically."""
    from qlora.models.saving import Save, save_pretrained

    return save_pretrained(requantize_merged(model, quant), out_dir, what=Save.QUANTIZED_MODEL, tokenizer=tokenizer)


def nf4_target(quant: QuantConfig) -> QuantConfig:
    """The NF4 + double-quantization config a `MergeTarget.NF4` merge writes, with `quant`'s block size and
    compute dtype (the adapter's base)."""
    from qlora.quant.dtypes import DataType

    return dataclasses.replace(quant, dtype=DataType.NF4, double_quant=True)
