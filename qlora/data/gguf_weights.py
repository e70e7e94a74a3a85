"""The linear weights of a GGUF causal LM, read tensor by tensor with the `gguf` package (no model loaded).

Loading a GGUF model through transformers de-quantizes and builds the whole model (~30-90 s and several
GB for the embedded models, more for Qwen2.5-Coder-1.5B). Weight statistics need one matrix at a time:
`GGUFReader` maps the file and `gguf.quants.dequantize` turns one tensor's blocks into float32.

The linear weights are the 2-D tensors of the transformer blocks (`blk.<i>.<kind>.weight`: attn_q,
attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down), the layers QLoRA quantizes; the token
embedding and the output head are left out (QLoRA keeps them in 16 bits).

Note (source precision): the embedded GGUF files are 4-6-bit at the source (Q4_1, Q4_K, Q5_0, Q6_K,
Q8_0 by tensor): what this reads is their de-quantization, with the source format of each tensor kept
beside it (`LinearWeight.source_type`).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_BLOCK_WEIGHT = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<kind>[a-z_0-9]+)\.weight$")


@dataclasses.dataclass(frozen=True)
class LinearWeight:
    """One linear weight of a transformer block.

    Attributes:
        name: the GGUF tensor name (`blk.3.ffn_down.weight`).
        layer: the block index; kind: the projection (`ffn_down`).
        source_type: the tensor's storage format in the file (`Q4_K`, `Q6_K`, `F32`, ...).
        values: float32, (out_features, in_features).
    """

    name: str
    layer: int
    kind: str
    source_type: str
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF model file holds.

    Attributes:
        architecture / name: from the file's metadata (`general.architecture`, `general.name`).
        parameters: elements of every tensor in the file (an untied output head counts).
        linear_parameters: elements of the blocks' linear weights (what QLoRA quantizes).
        linear_weights: how many such matrices.
        source_types: linear weights per storage format, e.g. {"Q4_K": 169, "Q6_K": 27}.
    """

    architecture: str
    name: str
    parameters: int
    linear_parameters: int
    linear_weights: int
    source_types: dict[str, int]


def _reader(path: str | Path):
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return GGUFReader(str(path))


def _field(reader, key: str) -> str:
    field = reader.fields.get(key)
    return str(field.contents()) if field is not None else ""


def _is_linear(tensor) -> re.Match | None:
    return _BLOCK_WEIGHT.match(tensor.name) if len(tensor.shape) == 2 else None


def gguf_summary(path: str | Path) -> GGUFSummary:
    """Metadata and parameter counts of a GGUF file (reads no tensor data).

    Raises:
        FileNotFoundError: no such file.
    """
    reader = _reader(path)
    linear = [t for t in reader.tensors if _is_linear(t)]
    return GGUFSummary(architecture=_field(reader, "general.architecture"), name=_field(reader, "general.name"),
                       parameters=sum(int(t.n_elements) for t in reader.tensors),
                       linear_parameters=sum(int(t.n_elements) for t in linear), linear_weights=len(linear),
                       source_types=dict(sorted(Counter(t.tensor_type.name for t in linear).items())))  # fmt: skip


def gguf_linear_weights(path: str | Path) -> Iterator[LinearWeight]:
    """The blocks' linear weights of a GGUF file, de-quantized one at a time, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a tensor whose de-quantized size is not its shape's.
    """
    from gguf import quants

    reader = _reader(path)
    for t in reader.tensors:
        m = _is_linear(t)
        if m is None:
            continue
        cols, rows = (int(d) for d in t.shape)  # GGUF lists the fastest-varying dimension first
        values = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if values.size != rows * cols:
            raise ValueError(f"{path}: tensor {t.name} de-quantizes to {values.size} values, its shape {rows}x{cols} needs {rows * cols}")
        yield LinearWeight(t.name, int(m["layer"]), m["kind"], t.tensor_type.name, values.reshape(rows, cols))
