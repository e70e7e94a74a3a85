"""Quantized base checkpoints in the layout transformers + bitsandbytes use for 4-bit models.

A folder with `config.json` (carrying a `quantization_config`) and `model.safetensors` (never pickle)
in which every quantized linear weight `<module>.weight` is the packed uint8 tensor, followed by its
bitsandbytes state: `<module>.weight.absmax`, `.quant_map`, (`.nested_absmax`, `.nested_quant_map`),
`.quant_state.bitsandbytes__nf4|fp4`; all other tensors as they are. Such a folder loads in
transformers with bitsandbytes installed, and folders saved by that combination load here, without
re-quantizing. What bitsandbytes' layout cannot express -- the data types it lacks (Int4, FP4-E3M0,
Int8, FP8 E4M3/E5M2, AF4, NVFP4, MXFP4) and E4M4 double quantization -- uses the same structure with
`quant_state.qlora__<type>` and `quantization_config.quant_method = "qlora"` (`qlora.quant.bnb_format`);
only this loader reads them, and a file that claims bitsandbytes' layout for them is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

from qlora.atomic import atomic_dir, write_json
from qlora.quant.bnb_format import bnb_expressible, from_bnb_dict, to_bnb_dict
from qlora.quant.dtypes import DataType, DoubleQuant
from qlora.quant.state import QuantizedTensor
from qlora.readers import BadFileError, check_finite, get, read_json, read_safetensors

__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "QuantizedCheckpoint", "check_module_shapes", "load_quantized_checkpoint",
    "quantization_config", "save_quantized_checkpoint",
]  # fmt: skip

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_STATE_MARK = ".weight.quant_state."
_STATE_PARTS = (".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map")
_QC = "quantization_config"
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quantization_config(quantized: Mapping[str, QuantizedTensor], compute_dtype: torch.dtype = torch.bfloat16) -> dict:
    """The `quantization_config` entry of config.json for these quantized modules.

    Raises:
        ValueError: when the modules mix data types or double-quantization settings.
    """
    kinds = {(q.dtype, q.double_quant_format, q.block_size) for q in quantized.values()}
    if len(kinds) != 1:
        raise ValueError(f"a checkpoint holds one data type; got {sorted((d.value, dq.value if dq else False, b) for d, dq, b in kinds)}")
    dtype, dq, block_size = kinds.pop()
    double_quant = dq is not None
    if bnb_expressible(dtype, dq):
        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "load_in_8bit": False,
            "_load_in_4bit": True,
            "_load_in_8bit": False,
            "bnb_4bit_quant_type": dtype.value,
            "bnb_4bit_use_double_quant": double_quant,
            "bnb_4bit_compute_dtype": _compute_dtype_name(compute_dtype),
            "bnb_4bit_quant_storage": "uint8",
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": None,
            "llm_int8_threshold": 6.0,
        }
    out = {"quant_method": "qlora", "data_type": dtype.value, "double_quant": double_quant, "block_size": block_size,
           "compute_dtype": _compute_dtype_name(compute_dtype)}  # fmt: skip
    if dq is not None and dq is not DoubleQuant.DYNAMIC:
        out["double_quant_format"] = dq.value
    return out


def _compute_dtype_name(compute_dtype: torch.dtype) -> str:
    name = str(compute_dtype).removeprefix("torch.")
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of torch.{', torch.'.join(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    return name


def save_quantized_checkpoint(
    out_dir: str | Path,
    config: Mapping,
    quantized: Mapping[str, QuantizedTensor],
    tensors: Mapping[str, torch.Tensor],
    *,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Writes a quantized checkpoint folder atomically (`qlora.atomic.atomic_dir`).

    Args:
        out_dir: the folder to create (replaced if it exists).
        config: the model's config as a dict (`PretrainedConfig.to_dict()`); its quantization_config is set here.
        quantized: module name (e.g. "model.layers.0.mlp.up_proj") -> quantized weight.
        tensors: every other tensor of the state dict, by its key.
        compute_dtype: the matmul dtype a consumer should use (bnb_4bit_compute_dtype), float32/bfloat16/float16.
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
        cfg[_QC] = quantization_config(quantized, compute_dtype)
    else:
        cfg.pop(_QC, None)
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, cfg)
    return out_dir


class QuantizedCheckpoint(NamedTuple):
    """What `load_quantized_checkpoint` returns; unpacks as (config, quantized, tensors).

    Attributes:
        config: config.json as a dict (its quantization_config checked against the tensors).
        quantized: module name -> QuantizedTensor.
        tensors: every other tensor by its key.
    """

    config: dict
    quantized: dict[str, QuantizedTensor]
    tensors: dict[str, torch.Tensor]

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The matmul dtype the checkpoint asks for (bnb_4bit_compute_dtype / compute_dtype), None when unstated."""
        return _compute_dtype(self.config.get(_QC) or {}, Path(CONFIG_FILE))


def _compute_dtype(qc: dict, path: Path) -> torch.dtype | None:
    key = "bnb_4bit_compute_dtype" if qc.get("quant_method") == "bitsandbytes" else "compute_dtype"
    name = get(qc, key, path, str, default=None, prefix=f"{_QC}.")
    if name is None:
        return None
    if name not in COMPUTE_DTYPES:
        raise BadFileError(path, f"{_QC}.{key}", f"got {name!r}; expected one of {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def _check_quantization_config(config: dict, quantized: dict[str, QuantizedTensor], path: Path) -> None:
    """The config's quantization_config must describe the quantized tensors the folder holds."""
    if _QC not in config or config[_QC] is None:
        if quantized:
            raise BadFileError(path, _QC, f"missing, but the weights hold {len(quantized)} quantized layers "
                                          f"(e.g. {next(iter(quantized))}); expected the quantization settings")  # fmt: skip
        return
    qc = get(config, _QC, path, dict)
    if not quantized:
        raise BadFileError(path, _QC, "present, but no weight file holds a quantized layer (no '*.weight.quant_state.*' entry)")
    p = f"{_QC}."
    method = get(qc, "quant_method", path, str, prefix=p)
    kinds = {(q.dtype, q.double_quant_format, q.block_size) for q in quantized.values()}
    if len(kinds) != 1:
        raise BadFileError(path, _QC, f"the weights mix data types: {sorted((d.value, dq.value if dq else False, b) for d, dq, b in kinds)}")
    dtype, dq, block_size = kinds.pop()
    double_quant = dq is not None
    if method == "bitsandbytes":
        if not bnb_expressible(dtype, dq):
            raise BadFileError(path, f"{p}quant_method", f"'bitsandbytes', but the weights are {dtype.value}"
                               + (f" with {dq.value} double quantization" if dq else "") + ", which bitsandbytes' layout cannot "
                               "express; expected 'qlora'")  # fmt: skip
        if get(qc, "load_in_8bit", path, bool, default=False, prefix=p) or not get(qc, "load_in_4bit", path, bool, default=True, prefix=p):
            raise BadFileError(path, f"{p}load_in_4bit", "only 4-bit bitsandbytes checkpoints are supported (not load_in_8bit)")
        storage = get(qc, "bnb_4bit_quant_storage", path, str, default="uint8", prefix=p)
        if storage != "uint8":
            raise BadFileError(path, f"{p}bnb_4bit_quant_storage", f"got {storage!r}; only 'uint8' is supported")
        stated = (get(qc, "bnb_4bit_quant_type", path, str, prefix=p), get(qc, "bnb_4bit_use_double_quant", path, bool, prefix=p))
        names = ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant")
    elif method == "qlora":
        stated = (get(qc, "data_type", path, str, prefix=p), get(qc, "double_quant", path, bool, prefix=p),
                  get(qc, "block_size", path, int, prefix=p))  # fmt: skip
        names = ("data_type", "double_quant", "block_size")
        stated_dq = get(qc, "double_quant_format", path, str, default=DoubleQuant.DYNAMIC.value, prefix=p)
        if double_quant and stated_dq != dq.value:
            raise BadFileError(path, f"{p}double_quant_format", f"says {stated_dq!r}, but the weights are stored with {dq.value!r}")
    else:
        raise BadFileError(path, f"{p}quant_method", f"got {method!r}; expected 'bitsandbytes' or 'qlora'")
    actual = (dtype.value, double_quant, block_size)
    for name, said, real in zip(names, stated, actual):
        if said != real:
            raise BadFileError(path, f"{p}{name}", f"says {said!r}, but the weights are stored with {real!r}")
    _compute_dtype(qc, path)


def load_quantized_checkpoint(directory: str | Path) -> QuantizedCheckpoint:
    """Reads a folder written by `save_quantized_checkpoint` or by transformers + bitsandbytes (4-bit).

    Every quantized weight's state is checked against its quant_state (shapes, dtypes, codebook,
    finite non-negative block constants), the config's quantization_config against the weights, and
    every other floating tensor for NaN/Inf. Shapes against the model are checked by
    `check_module_shapes` once the model is built.

    Returns:
        QuantizedCheckpoint(config dict, {module name: QuantizedTensor}, {key: tensor} for everything
        else); its `compute_dtype` is the stored matmul dtype.

    Raises:
        FileNotFoundError: no such folder, no config.json or no *.safetensors file.
        BadFileError (ValueError): naming the file and the key that is wrong.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: checkpoint folder not found")
    config_path = directory / CONFIG_FILE
    config = read_json(config_path, "model config")
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors weight file (expected {WEIGHTS_FILE})")
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for f in files:
        for key, value in read_safetensors(f, "weight file").items():
            if key in state:
                raise BadFileError(f, key, f"also stored in {origin[key].name}; expected each tensor once")
            state[key], origin[key] = value, f
    modules = sorted({k.split(_STATE_MARK)[0] for k in state if _STATE_MARK in k}
                     | {k.rsplit(".weight.", 1)[0] for k in state if k.endswith(_STATE_PARTS)})  # fmt: skip
    quantized: dict[str, QuantizedTensor] = {}
    for module in modules:
        prefix = f"{module}.weight."
        parts = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        f = origin[next(k for k in origin if k.startswith(prefix))]
        if f"{module}.weight" not in state:
            raise BadFileError(f, f"{module}.weight", "missing: the layer has a quantization state but no packed weight")
        try:
            quantized[module] = from_bnb_dict(state.pop(f"{module}.weight"), parts)
        except (ValueError, TypeError) as e:
            raise BadFileError(origin[f"{module}.weight"], f"{module}.weight", str(e)) from None
    for key, value in state.items():
        check_finite(value, origin[key], key)
    _check_quantization_config(config, quantized, config_path)
    return QuantizedCheckpoint(config, quantized, state)


def check_module_shapes(directory: str | Path, quantized: Mapping[str, QuantizedTensor], model: nn.Module) -> None:
    """Raises BadFileError when a quantized weight's shape (its quant_state) disagrees with the model built
    from config.json, before a forward fails with a matmul error.

    Args:
        directory: the checkpoint folder (for the message).
        quantized: module name -> QuantizedTensor, as loaded.
        model: the model built from the folder's config.json, before its layers are replaced.
    """
    path = Path(directory) / WEIGHTS_FILE
    for name, q in quantized.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise BadFileError(path, f"{name}.weight", "the model built from config.json has no such layer") from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise BadFileError(path, f"{name}.weight", f"the model's {name} is a {type(module).__name__} without a weight")
        # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out) and is quantized transposed
        expected = tuple(weight.shape) if isinstance(module, nn.Linear) else tuple(weight.shape)[::-1]
        if tuple(q.shape) != expected:
            raise BadFileError(path, f"{name}.weight", f"quant_state shape {tuple(q.shape)}, but config.json's model has {expected}")
