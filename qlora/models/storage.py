"""Bits per parameter as stored: counted from the bytes of a quantized checkpoint's file, not from a formula.

The paper's 4.127 bits/param for NF4 + double quantization (4 + 8/64 + 32/(64 * 256)) is a formula; a claim
about storage should be checked against what a checkpoint actually holds. This reads the tensor headers of
`model.safetensors` in the transformers + bitsandbytes layout (`bnb_checkpoint.py`): for every quantized
weight, the packed codes, the block absmax (8-bit codes under double quantization) and the second-level
absmax — the paper's count — and, separately, the per-tensor state the paper leaves out (the codebook,
the second-level codebook and the packed JSON holding shape, block size and the DQ offset).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

_CORE = (".weight", ".weight.absmax", ".weight.nested_absmax")
_STATE_MARK = ".weight.quant_state."
_SIZES = {"U8": 1, "I8": 1, "BF16": 2, "F16": 2, "F32": 4, "I32": 4, "F64": 8, "I64": 8}


@dataclasses.dataclass(frozen=True)
class StoredBits:
    """What the quantized weights of a checkpoint file take.

    Attributes:
        params: elements of the quantized weights (their original shapes).
        core_bytes: packed codes + block absmax + second-level absmax (what the paper's bits/param counts).
        state_bytes: codebooks and the packed per-tensor state JSON.
    """

    params: int
    core_bytes: int
    state_bytes: int

    @property
    def core_bits_per_param(self) -> float:
        return 8 * self.core_bytes / self.params

    @property
    def total_bits_per_param(self) -> float:
        return 8 * (self.core_bytes + self.state_bytes) / self.params


def _header(path: Path) -> dict:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(size))


def stored_bits(checkpoint: str | Path) -> StoredBits:
    """Counts the quantized weights' bytes in `checkpoint/model.safetensors` (header only, plus each packed
    state JSON for the original shape).

    Raises:
        FileNotFoundError: no model.safetensors.
        ValueError: the file holds no quantized weight.
    """
    from safetensors import safe_open

    path = Path(checkpoint) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    header = {k: v for k, v in _header(path).items() if k != "__metadata__"}

    def nbytes(key: str) -> int:
        entry = header[key]
        return math.prod(entry["shape"]) * _SIZES[entry["dtype"]]

    states = sorted(k for k in header if _STATE_MARK in k)
    if not states:
        raise ValueError(f"{path} holds no quantized weight (no '*{_STATE_MARK}*' entry)")
    params = core = state = 0
    with safe_open(str(path), "pt") as f:
        for key in states:
            module = key.split(_STATE_MARK)[0]
            packed = json.loads(bytes(f.get_tensor(key).tolist()).decode("utf-8"))
            params += math.prod(packed["shape"])
            core += sum(nbytes(module + s) for s in _CORE if module + s in header)
            state += nbytes(key) + sum(nbytes(module + s) for s in (".weight.quant_map", ".weight.nested_quant_map") if module + s in header)
    return StoredBits(params, core, state)
