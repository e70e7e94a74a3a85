"""Reading files that may lie: every error names the file and the key, and says what was expected.

The read-side counterpart of `qlora.atomic`. Checkpoint, adapter, resume and token files are read
through these helpers so that a truncated file, an edited JSON, a deleted key or a NaN tensor gives
one `BadFileError` (a ValueError) naming the file and the key, or a FileNotFoundError naming the
missing file, instead of a bare JSONDecodeError / KeyError / SafetensorError or a NaN loss later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_REQUIRED = object()


class BadFileError(ValueError):
    """A file whose content is not what its format promises.

    Attributes:
        path: the file.
        key: the entry inside it ("r", "quantization_config.bnb_4bit_quant_type", a tensor name), or None.
    """

    def __init__(self, path: str | Path, key: str | None, problem: str) -> None:
        self.path, self.key = Path(path), key
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


def require_file(path: str | Path, what: str) -> Path:
    """`path` if it is a file; FileNotFoundError naming it and what it should hold otherwise."""
    path = Path(path)
    if not path.is_file():
        where = "the folder does not exist" if not path.parent.is_dir() else "no such file"
        raise FileNotFoundError(f"{path}: {what} not found ({where})")
    return path


def read_json(path: str | Path, what: str = "JSON file", *, allow_nonfinite: bool = False) -> dict:
    """A JSON object read from `path`.

    Args:
        path: the file.
        what: what the file is, for the messages ("adapter config").
        allow_nonfinite: accept NaN / Infinity (Python's json writes them for float('nan')).

    Raises:
        FileNotFoundError: no such file.
        BadFileError: not UTF-8, not JSON, not an object, or (unless allowed) a NaN/Infinity, named by its key.
    """
    path = require_file(path, what)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFileError(path, None, f"{what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadFileError(path, None, f"{what} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise BadFileError(path, None, f"{what} must be a JSON object, got {type(value).__name__}")
    if not allow_nonfinite:
        where = _first_nonfinite(value, "")
        if where is not None:
            raise BadFileError(path, where[0], f"{where[1]} is not a finite number")
    return value


def _first_nonfinite(obj: Any, prefix: str) -> tuple[str, float] | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{prefix}[{key}]" if isinstance(obj, list) else f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def get(obj: Mapping, key: str, path: str | Path, kind: type | tuple[type, ...], *, default: Any = _REQUIRED,
        prefix: str = "", none_ok: bool = False) -> Any:  # fmt: skip
    """`obj[key]` checked to be of `kind` (bool is never an int; an int is a float; floats must be finite).

    Args:
        obj: a parsed JSON object.
        key: the key to read.
        path: the file it came from (for the message).
        kind: the accepted type(s): int, float, str, bool, list, dict.
        default: returned when the key is absent (or null); without it the key is required.
        prefix: the key's parent in the file ("quantization_config."), for the message.
        none_ok: an explicit null is returned as None.

    Raises:
        BadFileError: the key is missing or its value has another type or is not finite.
    """
    name = f"{prefix}{key}"
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if key not in obj or obj[key] is None:
        if key in obj and none_ok:
            return None
        if default is not _REQUIRED:
            return default
        raise BadFileError(path, name, f"missing; expected {_describe(kinds)}")
    value = obj[key]
    ok = any(_is(value, k) for k in kinds)
    if not ok:
        raise BadFileError(path, name, f"expected {_describe(kinds)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadFileError(path, name, f"expected a finite number, got {value!r}")
    return float(value) if float in kinds and int not in kinds and isinstance(value, int) else value


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def read_safetensors(path: str | Path, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file.

    Raises:
        FileNotFoundError: no such file.
        BadFileError: a truncated or corrupt file (safetensors checks the header and the length).
    """
    return read_safetensors_with_metadata(path, what)[0]


def read_safetensors_with_metadata(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, the header's `__metadata__` dict) of a safetensors file; errors as `read_safetensors`."""
    from safetensors import safe_open

    path = require_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}, dict(fh.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise BadFileError(path, None, f"not a readable safetensors file (truncated or corrupt?): {e}") from None


def check_finite(tensor: torch.Tensor, path: str | Path, key: str, *, nonnegative: bool = False) -> None:
    """Raises BadFileError naming `key` when a floating `tensor` holds NaN/Inf (or, optionally, negatives)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    bad = ~torch.isfinite(tensor)
    if nonnegative:
        bad |= tensor < 0
    if bool(bad.any()):
        flat = bad.reshape(-1)
        first = int(flat.nonzero()[0])
        value = tensor.reshape(-1)[first].item()
        expected = "finite and >= 0" if nonnegative else "finite"
        raise BadFileError(path, key, f"{int(flat.sum())} of {tensor.numel()} values are not {expected} "
                                      f"(first at flat index {first}: {value})")  # fmt: skip


def check_tensor(tensor: torch.Tensor, path: str | Path, key: str, *, shape: tuple[int, ...] | None = None,
                 dtypes: tuple[torch.dtype, ...] | None = None) -> None:  # fmt: skip
    """Raises BadFileError naming `key` when `tensor` does not have the expected shape or dtype."""
    if dtypes is not None and tensor.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise BadFileError(path, key, f"dtype {str(tensor.dtype).removeprefix('torch.')}, expected {allowed}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise BadFileError(path, key, f"shape {tuple(tensor.shape)}, expected {tuple(shape)}")
