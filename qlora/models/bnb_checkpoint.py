"""Quantized base checkpoints in the layout transformers + bitsandbytes use for 4-bit models.

A folder with `config.json` (carrying a `quantization_config`) and `model.safetensors` (never pickle)
in which every quantized linear weight `<module>.weight` is the packed uint8 tensor, followed by its
bitsandbytes state: `<module>.weight.absmax`, `.quant_map`, (`.nested_absmax`, `.nested_quant_map`),
`.quant_state.bitsandbytes__nf4|fp4`; all other tensors as they are. Such a folder loads in
transformers with bitsandbytes installed, and folders saved by that combination load here, without
re-quantizing. The data types bitsandbytes lacks (Int4, FP4-E3M0, Int8) use the same structure with
`quant_state.qlora__<type>` and `quantization_config.quant_method = "qlora"`; only this loader reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qlora.quant.bnb_format import from_bnb_dict, to_bnb_dict
from qlora.quant.dtypes import DataType
from qlora.quant.state import QuantizedTensor

WEIGHTS_FILE = "model.safetensors"
_STATE_MARK = ".weight.quant_state."


def quantization_config(quantized: Mapping[str, QuantizedTensor], compute_dtype: torch.dtype = torch.bfloat16) -> dict:
    """The `quantization_config` entry of config.json for these quantized modules.

    Raises:
        ValueError: when the modules mix data types or double-quantization settings.
    """
    kinds = {(q.dtype, q.double_quant, q.block_size) for q in quantized.values()}
    if len(kinds) != 1:
        raise ValueError(f"a checkpoint holds one data type; got {sorted((d.value, dq, b) for d, dq, b in kinds)}")
    dtype, double_quant, block_size = kinds.pop()
    if dtype in (DataType.NF4, DataType.FP4):
        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "load_in_8bit": False,
            "_load_in_4bit": True,
            "_load_in_8bit": False,
            "bnb_4bit_quant_type": dtype.value,
            "bnb_4bit_use_double_quant": double_quant,
            "bnb_4bit_compute_dtype": str(compute_dtype).removeprefix("torch."),
            "bnb_4bit_quant_storage": "uint8",
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": None,
            "llm_int8_threshold": 6.0,
        }
    return {"quant_method": "qlora", "data_type": dtype.value, "double_quant": double_quant, "block_size": block_size}


def save_quantized_checkpoint(
    out_dir: str | Path,
    config: Mapping,
    quantized: Mapping[str, QuantizedTensor],
    tensors: Mapping[str, torch.Tensor],
    *,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Writes a quantized checkpoint folder atomically (a temporary folder renamed into place).

    Args:
        out_dir: the folder to create (replaced if it exists).
        config: the model's config as a dict (`PretrainedConfig.to_dict()`); its quantization_config is set here.
        quantized: module name (e.g. "model.layers.0.mlp.up_proj") -> quantized weight.
        tensors: every other tensor of the state dict, by its key.
    """
    out_dir = Path(out_dir)
    state: dict[str, torch.Tensor] = {}
    for module, q in quantized.items():
        if q.dtype is DataType.BF16:
            raise ValueError(f"{module}: bf16 weights are stored as ordinary tensors, not as quantized ones")
        state[f"{module}.weight"] = q.data
        for key, value in to_bnb_dict(q).items():
            state[f"{module}.weight.{key}"] = value
    for key, value in tensors.items():
        if key in state:
            raise ValueError(f"tensor {key!r} collides with a quantized weight's entry")
        state[key] = value
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    cfg = dict(config)
    if quantized:
        cfg["quantization_config"] = quantization_config(quantized, compute_dtype)
    else:
        cfg.pop("quantization_config", None)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_quantized_checkpoint(directory: str | Path) -> tuple[dict, dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    """Reads a folder written by `save_quantized_checkpoint` or by transformers + bitsandbytes (4-bit).

    Returns:
        (config dict, {module name: QuantizedTensor}, {key: tensor} for everything else).
    """
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    modules = sorted({k.split(_STATE_MARK)[0] for k in state if _STATE_MARK in k})
    quantized: dict[str, QuantizedTensor] = {}
    for module in modules:
        prefix = f"{module}.weight."
        parts = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        if f"{module}.weight" not in state:
            raise ValueError(f"{directory}: {module} has a quantization state but no packed weight")
        try:
            quantized[module] = from_bnb_dict(state.pop(f"{module}.weight"), parts)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{directory}: quantized weight {module}.weight: {e}") from None
    return config, quantized, state


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or corrupt file raises ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
