"""Conversion between `QuantizedTensor` and bitsandbytes' serialized quantization state.

bitsandbytes saves a 4-bit weight as the packed uint8 tensor plus `QuantState.as_dict(packed=True)`:
tensors `absmax`, `quant_map`, (`nested_absmax`, `nested_quant_map` with double quantization) and
`quant_state.bitsandbytes__nf4|fp4`, a uint8 tensor holding the UTF-8 JSON of the rest (quant_type,
blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset) in that key order. This is
what transformers writes into `model.safetensors` for `load_in_4bit` models, so converting both ways
lets checkpoints move between tools. The data types bitsandbytes lacks (Int4, FP4-E3M0, Int8) use the
same structure with the key `quant_state.qlora__<type>`; bitsandbytes cannot load those.
"""

from __future__ import annotations

import json

import torch

from qlora.quant.dtypes import DataType, codebook
from qlora.quant.state import NestedAbsmax, QuantizedTensor

_BNB_TYPES = {DataType.NF4: "nf4", DataType.FP4: "fp4"}
_STATE_PREFIX = "quant_state."


def _state_key(dtype: DataType) -> str:
    if dtype in _BNB_TYPES:
        return f"{_STATE_PREFIX}bitsandbytes__{_BNB_TYPES[dtype]}"
    return f"{_STATE_PREFIX}qlora__{dtype.value}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_bnb_dict(qt: QuantizedTensor) -> dict[str, torch.Tensor]:
    """The state of `qt` as bitsandbytes' `QuantState.as_dict(packed=True)` (the weight itself excluded).

    Raises:
        ValueError: for BF16, which has no quantization state.
    """
    if not qt.dtype.is_quantized:
        raise ValueError("bf16 tensors have no quantization state to serialize")
    meta: dict = {
        "quant_type": _BNB_TYPES.get(qt.dtype, qt.dtype.value),
        "blocksize": qt.block_size,
        "dtype": _dtype_name(qt.orig_dtype),
        "shape": list(qt.shape),
    }
    out: dict[str, torch.Tensor] = {}
    if qt.nested is None:
        out["absmax"] = qt.absmax
    else:
        out["absmax"] = qt.nested.codes
    out["quant_map"] = codebook(qt.dtype, qt.device).clone()  # never share storage: safetensors refuses aliases
    if qt.nested is not None:
        out["nested_absmax"] = qt.nested.absmax
        out["nested_quant_map"] = qt.nested.code.clone()
        meta.update(nested_blocksize=qt.nested.block_size, nested_dtype="float32", nested_offset=qt.nested.offset.item())
    out[_state_key(qt.dtype)] = torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)
    return out


def from_bnb_dict(data: torch.Tensor, state: dict[str, torch.Tensor]) -> QuantizedTensor:
    """Builds a QuantizedTensor from a packed weight and its serialized state.

    Args:
        data: the packed weight as saved (uint8 ((n + 1) // 2, 1) for 4-bit, int8 (n,) for Int8).
        state: keys as written by `to_bnb_dict` / bitsandbytes; a common prefix such as
            "model.layers.0.mlp.up_proj.weight." is ignored.

    Raises:
        ValueError: missing or conflicting keys, an unknown quant_type, or a codebook that differs from
            the data type's (we never guess a format from data).
    """
    stripped = {}
    for key, value in state.items():
        short = key[key.index(_STATE_PREFIX):] if _STATE_PREFIX in key else key.rsplit(".", 1)[-1]
        stripped[short] = value
    state_keys = [k for k in stripped if k.startswith(_STATE_PREFIX)]
    if len(state_keys) != 1:
        raise ValueError(f"expected exactly one '{_STATE_PREFIX}*' entry, found {state_keys or 'none'}")
    meta = json.loads(bytes(stripped[state_keys[0]].cpu().tolist()).decode("utf-8"))
    by_name = {v: k for k, v in _BNB_TYPES.items()}
    quant_type = meta.get("quant_type")
    dtype = by_name.get(quant_type) or DataType.parse(quant_type)
    if state_keys[0] != _state_key(dtype):
        raise ValueError(f"state key {state_keys[0]!r} does not match quant_type {quant_type!r}")
    for required in ("absmax", "quant_map"):
        if required not in stripped:
            raise ValueError(f"serialized state lacks {required!r} (keys: {sorted(stripped)})")
    expected_map = codebook(dtype, stripped["quant_map"].device)
    if not torch.equal(stripped["quant_map"].to(torch.float32), expected_map):
        raise ValueError(f"quant_map does not match the {dtype.value} codebook: {stripped['quant_map'].tolist()}")
    shape = torch.Size(meta["shape"])
    orig_dtype = getattr(torch, meta["dtype"])
    block_size = int(meta["blocksize"])
    if data.dtype == torch.uint8 and dtype.is_4bit:
        data = data.reshape(-1, 1)
    if "nested_absmax" in stripped:
        nested = NestedAbsmax(
            codes=stripped["absmax"].reshape(-1),
            absmax=stripped["nested_absmax"].to(torch.float32),
            offset=torch.tensor(float(meta["nested_offset"]), dtype=torch.float32, device=data.device),
            code=stripped["nested_quant_map"].to(torch.float32),
            block_size=int(meta["nested_blocksize"]),
        )
        return QuantizedTensor(data, dtype, shape, orig_dtype, block_size, nested=nested)
    return QuantizedTensor(data, dtype, shape, orig_dtype, block_size, absmax=stripped["absmax"].to(torch.float32))
