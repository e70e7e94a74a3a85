"""Conversion between `QuantizedTensor` and bitsandbytes' serialized quantization state.

bitsandbytes saves a 4-bit weight as the packed uint8 tensor plus `QuantState.as_dict(packed=True)`:
tensors `absmax`, `quant_map`, (`nested_absmax`, `nested_quant_map` with double quantization) and
`quant_state.bitsandbytes__nf4|fp4`, a uint8 tensor holding the UTF-8 JSON of the rest (quant_type,
blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset) in that key order. This is
what transformers writes into `model.safetensors` for `load_in_4bit` models, so converting both ways
lets checkpoints move between tools. What bitsandbytes' layout cannot express uses the same structure
with the key `quant_state.qlora__<type>` (bitsandbytes cannot load those): the data types it lacks (Int4,
FP4-E3M0, Int8, FP8 E4M3/E5M2, AF4, NVFP4, MXFP4) and NF4/FP4 with E4M4 double quantization. In that
JSON, `nested_format` names a double quantization other than the paper's ("e4m4"; the map is stored as
`nested_quant_map`, the offset is 0), and NVFP4 / MXFP4 store their 8-bit block scales as `absmax`
(uint8, one per block) with `scale_format` ("e4m3" / "e8m0") and, for E4M3, the per-tensor float32
`tensor_scale`.
"""

from __future__ import annotations

import json
import math

import torch

from qlora.quant import minifloat
from qlora.quant.dtypes import DataType, DoubleQuant, ScaleFormat, codebook
from qlora.quant.state import CodedScales, NestedAbsmax, QuantizedTensor

_BNB_TYPES = {DataType.NF4: "nf4", DataType.FP4: "fp4"}
_STATE_PREFIX = "quant_state."


def bnb_expressible(dtype: DataType, double_quant: DoubleQuant | None) -> bool:
    """Whether bitsandbytes' 4-bit layout can hold this storage: NF4 / FP4, plain or with the paper's DQ."""
    return dtype in _BNB_TYPES and double_quant in (None, DoubleQuant.DYNAMIC)


def _state_key(dtype: DataType, double_quant: DoubleQuant | None = None) -> str:
    if bnb_expressible(dtype, double_quant):
        return f"{_STATE_PREFIX}bitsandbytes__{_BNB_TYPES[dtype]}"
    return f"{_STATE_PREFIX}qlora__{dtype.value}"


def _same_map(stored: torch.Tensor, expected: torch.Tensor) -> bool:
    """Exactly equal float maps, NaN entries (FP8's NaN codes) included."""
    if not stored.is_floating_point() or stored.shape != expected.shape:
        return False
    stored = stored.float()
    return bool(((stored == expected) | (torch.isnan(stored) & torch.isnan(expected))).all())


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
    if qt.scales is not None:
        out["absmax"] = qt.scales.codes
        meta["scale_format"] = qt.scales.format.value
        if qt.scales.tensor_scale is not None:
            meta["tensor_scale"] = qt.scales.tensor_scale.item()
    elif qt.nested is None:
        out["absmax"] = qt.absmax
    else:
        out["absmax"] = qt.nested.codes
    out["quant_map"] = codebook(qt.dtype, qt.device).clone()  # never share storage: safetensors refuses aliases
    if qt.nested is not None:
        out["nested_absmax"] = qt.nested.absmax
        out["nested_quant_map"] = qt.nested.code.clone()
        meta.update(nested_blocksize=qt.nested.block_size, nested_dtype="float32", nested_offset=qt.nested.offset.item())
        if qt.nested.format is not DoubleQuant.DYNAMIC:
            meta["nested_format"] = qt.nested.format.value
    out[_state_key(qt.dtype, qt.double_quant_format)] = torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)
    return out


_ORIG_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_PLAIN_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_NESTED_KEYS = ("nested_absmax", "nested_quant_map")


def _meta_field(meta: dict, state_key: str, key: str, kind: type, check=None, expected: str = "") -> object:
    """meta[key] if it is a `kind` (bool is no number; numbers finite) passing `check`; else ValueError naming it."""
    value = meta.get(key)
    if kind in (int, float):
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok or (check is not None and not check(value)):
        what = "missing" if key not in meta else f"got {value!r}"
        raise ValueError(f"{state_key}: {key!r} {what}; expected {expected or kind.__name__}")
    return value


def _parse_meta(key: str, packed: torch.Tensor) -> dict:
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"{key}: expected a 1-D uint8 tensor of UTF-8 JSON, got {packed.dtype} {tuple(packed.shape)}")
    try:
        meta = json.loads(bytes(packed.cpu().tolist()).decode("utf-8"))  # NaN/Infinity parse: refused below
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{key}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{key}: expected a JSON object, got {type(meta).__name__}")
    return meta


def from_bnb_dict(data: torch.Tensor, state: dict[str, torch.Tensor]) -> QuantizedTensor:
    """Builds a QuantizedTensor from a packed weight and its serialized state, checking every entry.

    Args:
        data: the packed weight as saved (uint8 ((n + 1) // 2, 1) for 4-bit, int8 (n,) for Int8).
        state: keys as written by `to_bnb_dict` / bitsandbytes; a common prefix such as
            "model.layers.0.mlp.up_proj.weight." is ignored.

    Raises:
        ValueError: naming the entry (e.g. "absmax", "quant_state.bitsandbytes__nf4: 'dtype'"): missing,
            unexpected or conflicting keys, an unknown quant_type or dtype, a codebook that differs from
            the data type's (we never guess a format from data), shapes or dtypes that disagree with the
            quant_state, NaN/Inf or negative block constants.
    """
    stripped = {}
    for key, value in state.items():
        short = key[key.index(_STATE_PREFIX):] if _STATE_PREFIX in key else key.rsplit(".", 1)[-1]
        stripped[short] = value
    state_keys = [k for k in stripped if k.startswith(_STATE_PREFIX)]
    if len(state_keys) != 1:
        raise ValueError(f"expected exactly one '{_STATE_PREFIX}*' entry, found {state_keys or 'none'}")
    state_key = state_keys[0]
    unexpected = sorted(set(stripped) - set(_PLAIN_KEYS) - {state_key})
    if unexpected:
        raise ValueError(f"unexpected entries {unexpected}; a quantized weight has {list(_PLAIN_KEYS)} and one {_STATE_PREFIX}*")
    meta = _parse_meta(state_key, stripped[state_key])
    by_name = {v: k for k, v in _BNB_TYPES.items()}
    quant_type = meta.get("quant_type")
    allowed = sorted(by_name) + [d.value for d in DataType if d.is_quantized and d not in _BNB_TYPES]
    if not isinstance(quant_type, str) or (quant_type not in by_name and quant_type not in allowed):
        raise ValueError(f"{state_key}: 'quant_type' {quant_type!r}; expected one of {allowed}")
    dtype = by_name.get(quant_type) or DataType.parse(quant_type)
    nested_format = None
    if "nested_format" in meta:
        nested_format = DoubleQuant.parse(_meta_field(meta, state_key, "nested_format", str, lambda v: v in {d.value for d in DoubleQuant},
                                                      f"one of {[d.value for d in DoubleQuant]}"))  # fmt: skip
    expected_key = _state_key(dtype, nested_format or DoubleQuant.DYNAMIC)
    if state_key != expected_key:
        why = ""
        if state_key.startswith(f"{_STATE_PREFIX}bitsandbytes__"):
            why = f": bitsandbytes' layout cannot express {quant_type}" + (f" with {nested_format.value} double quantization" if nested_format else "")
        raise ValueError(f"state key {state_key!r} does not match quant_type {quant_type!r} (expected {expected_key!r}){why}")
    for required in ("absmax", "quant_map"):
        if required not in stripped:
            raise ValueError(f"serialized state lacks {required!r} (keys: {sorted(stripped)})")
    quant_map = stripped["quant_map"]
    expected_map = codebook(dtype, quant_map.device)
    if not _same_map(quant_map, expected_map):
        raise ValueError(f"quant_map does not match the {dtype.value} codebook ({expected_map.numel()} float values): got "
                         f"{quant_map.dtype} {tuple(quant_map.shape)} {quant_map.reshape(-1)[:16].tolist()}")  # fmt: skip

    shape = _meta_field(meta, state_key, "shape", list, lambda v: all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v),
                        "a list of positive integers")  # fmt: skip
    dtype_name = _meta_field(meta, state_key, "dtype", str, lambda v: v in _ORIG_DTYPES, f"one of {sorted(_ORIG_DTYPES)}")
    allowed_blocks = dtype.block_sizes
    block_size = _meta_field(meta, state_key, "blocksize", int, lambda v: v in allowed_blocks,
                             f"{allowed_blocks[0]} (fixed by {dtype.value})" if len(allowed_blocks) == 1 else
                             f"a power of two from {allowed_blocks[0]} to {allowed_blocks[-1]}")  # fmt: skip
    expected_data = torch.uint8 if dtype.is_4bit else torch.int8
    if data.dtype != expected_data:
        raise ValueError(f"packed weight is {data.dtype}, expected {expected_data} for {dtype.value}")
    numel = math.prod(shape)
    expected_shape = ((numel + 1) // 2, 1) if dtype.is_4bit else (numel,)
    if data.numel() != math.prod(expected_shape):
        raise ValueError(f"{dtype.value} data for shape {tuple(shape)} must be {expected_data} of shape {expected_shape} "
                         f"(the quant_state's shape), got {tuple(data.shape)}")  # fmt: skip
    data = data.reshape(expected_shape)
    n_blocks = math.ceil(numel / block_size)

    nested_present = [k for k in _NESTED_KEYS if k in stripped]
    absmax = stripped["absmax"]
    if dtype.scale_format is not ScaleFormat.FP32:
        return _coded_from_dict(data, dtype, meta, state_key, stripped, shape, dtype_name, block_size, n_blocks, nested_present)
    if "scale_format" in meta or "tensor_scale" in meta:
        raise ValueError(f"{state_key}: 'scale_format' / 'tensor_scale' belong to NVFP4 / MXFP4, not {dtype.value}")
    if nested_present and len(nested_present) != len(_NESTED_KEYS):
        raise ValueError(f"double-quantized state needs both {list(_NESTED_KEYS)}, found only {nested_present}")
    if nested_present:
        nested_block = _meta_field(meta, state_key, "nested_blocksize", int, lambda v: v > 0, "a positive integer")
        offset = _meta_field(meta, state_key, "nested_offset", float, expected="a finite number")
        _meta_field(meta, state_key, "nested_dtype", str, lambda v: v == "float32", "'float32'")
        if absmax.dtype != torch.uint8 or absmax.numel() != n_blocks:
            raise ValueError(f"absmax: expected {n_blocks} uint8 codes (double quantization, shape {shape}, blocksize "
                             f"{block_size}), got {absmax.dtype} {tuple(absmax.shape)}")  # fmt: skip
        for key, n in (("nested_absmax", math.ceil(n_blocks / nested_block)), ("nested_quant_map", 256)):
            t = stripped[key]
            if t.dtype != torch.float32 or t.numel() != n:
                raise ValueError(f"{key}: expected {n} float32 values, got {t.dtype} {tuple(t.shape)}")
        if nested_format is DoubleQuant.E4M4:
            e4m4 = minifloat.values(minifloat.E4M4).to(data.device)
            if not _same_map(stripped["nested_quant_map"].reshape(-1), e4m4) or offset != 0:
                raise ValueError(f"{state_key}: nested_format 'e4m4' needs the E4M4 values as nested_quant_map and offset 0")
        nested = NestedAbsmax(
            codes=absmax.reshape(-1),
            absmax=stripped["nested_absmax"].reshape(-1),
            offset=torch.tensor(float(offset), dtype=torch.float32, device=data.device),
            code=stripped["nested_quant_map"].reshape(-1),
            block_size=nested_block,
            format=nested_format or DoubleQuant.DYNAMIC,
        )
        qt = QuantizedTensor(data, dtype, torch.Size(shape), _ORIG_DTYPES[dtype_name], block_size, nested=nested)
    else:
        if "nested_offset" in meta or "nested_blocksize" in meta or nested_format is not None:
            raise ValueError(f"{state_key} describes double quantization (nested_offset, nested_blocksize) but "
                             f"{list(_NESTED_KEYS)} are missing")  # fmt: skip
        if not absmax.is_floating_point() or absmax.numel() != n_blocks:
            raise ValueError(f"absmax: expected {n_blocks} float values (shape {shape}, blocksize {block_size}), "
                             f"got {absmax.dtype} {tuple(absmax.shape)}")  # fmt: skip
        qt = QuantizedTensor(data, dtype, torch.Size(shape), _ORIG_DTYPES[dtype_name], block_size,
                             absmax=absmax.reshape(-1).to(torch.float32))  # fmt: skip
    qt.check_values()
    return qt


def _coded_from_dict(data, dtype, meta, state_key, stripped, shape, dtype_name, block_size, n_blocks, nested_present) -> QuantizedTensor:
    """NVFP4 / MXFP4: `absmax` holds one uint8 scale code per block (`scale_format`, `tensor_scale`)."""
    fmt = dtype.scale_format
    if nested_present or any(k in meta for k in ("nested_offset", "nested_blocksize", "nested_format")):
        raise ValueError(f"{state_key}: {dtype.value} stores 8-bit block scales; double quantization does not apply")
    _meta_field(meta, state_key, "scale_format", str, lambda v: v == fmt.value, repr(fmt.value))
    absmax = stripped["absmax"]
    if absmax.dtype != torch.uint8 or absmax.numel() != n_blocks:
        raise ValueError(f"absmax: expected {n_blocks} uint8 {fmt.value} scale codes (shape {shape}, blocksize {block_size}), "
                         f"got {absmax.dtype} {tuple(absmax.shape)}")  # fmt: skip
    tensor_scale = None
    if fmt is ScaleFormat.E4M3:
        value = _meta_field(meta, state_key, "tensor_scale", float, lambda v: v >= 0, "a finite number >= 0")
        tensor_scale = torch.tensor(float(value), dtype=torch.float32, device=data.device)
    elif "tensor_scale" in meta:
        raise ValueError(f"{state_key}: 'tensor_scale' belongs to E4M3 scales (NVFP4), not {fmt.value}")
    scales = CodedScales(absmax.reshape(-1), fmt, tensor_scale)
    qt = QuantizedTensor(data, dtype, torch.Size(shape), _ORIG_DTYPES[dtype_name], block_size, scales=scales)
    qt.check_values()
    return qt
