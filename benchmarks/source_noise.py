"""Noise of one source-quantization step on the weights of a GGUF-sourced model (issue 22, item 8).

Our "BF16" references are de-quantized GGUF files: every linear weight sits on the grid of its GGUF
block (SmolLM2: Q4_1; Gemma-3-270M and Qwen2.5-Coder-0.5B: Q4_K_M mixes of Q5_0, Q8_0, Q4_K and Q6_K).
Re-quantizing such a grid to NF4/FP4/Int4 need not behave like re-quantizing the original weights. The
perturbation here asks how much a verdict depends on where on the grid the weights happen to sit.

The step of an element is the weight change of one code step of its block, read from the block's
scale fields (layouts: gguf-py `gguf/quants.py`, llama.cpp `ggml-common.h`):

| type | block | dequantization | step |
|---|---|---|---|
| Q4_0, Q5_0, Q8_0 | 32 | w = d * q (q signed) | abs(d) |
| Q4_1, Q5_1 | 32 | w = d * q + m | d |
| Q4_K, Q5_K | 256 = 8 x 32 | w = d * sc_j * q - dmin * m_j (6-bit sc_j, m_j) | d * sc_j per 32 |
| Q6_K | 256 = 16 x 16 | w = d * sc_j * (q - 32) (int8 sc_j) | abs(d * sc_j) per 16 |
| F32, F16, BF16 | - | stored as is | 0 (not re-rounded) |

The perturbation: w' = w + step * u, u ~ Uniform[-1/2, 1/2) per element, i.i.d. Why uniform over one
step: ggml's quantizers round each weight to the nearest code of its (final) block scale, so all the
file says about the original weight is that it lay in [w - step/2, w + step/2]; a uniform draw over
that cell is a fresh "re-dequantization" of the same file (dithering the reconstruction) that keeps the
rounding error's size (variance step^2/12) and the block structure, and moves each weight off the grid.
`width` scales the cell (2.0: uniform over [-step, step]).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import Q4_K

# (offset of the fp16 d, elements per step) of the 32-element types: w = d * q (+ m)
_FLAT = {Q.Q4_0: 32, Q.Q4_1: 32, Q.Q5_0: 32, Q.Q5_1: 32, Q.Q8_0: 32}
_FLOAT = (Q.F32, Q.F16, Q.BF16)
QK_K = 256


def _fp16(raw: np.ndarray) -> np.ndarray:
    """(n, 2) bytes -> (n, 1) float32 from little-endian fp16."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def source_steps(qtype: Q, data: np.ndarray) -> np.ndarray:
    """The grid step of every element of a GGUF tensor (the table in the module docstring).

    Args:
        qtype: the tensor's GGUF type (`ReaderTensor.tensor_type`).
        data: the tensor as `gguf.GGUFReader` holds it: quantized types as raw bytes (..., row bytes)
            uint8; float types as their values.

    Returns:
        float32 of the shape `gguf.quants.dequantize(data, qtype)` has (..., row elements): per element
        its step (>= 0); zeros for float types.

    Raises:
        ValueError: a quantized type not in the table, or a row that is not a whole number of blocks.
    """
    qtype = Q(qtype)
    if qtype in _FLOAT:
        return np.zeros(data.shape, dtype=np.float32)
    if qtype not in _FLAT and qtype not in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        raise ValueError(f"no step rule for GGUF type {qtype.name}; supported: "
                         f"{', '.join(t.name for t in (*_FLAT, Q.Q4_K, Q.Q5_K, Q.Q6_K, *_FLOAT))}")  # fmt: skip
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if data.dtype != np.uint8 or data.shape[-1] % type_size:
        raise ValueError(f"{qtype.name} data must be uint8 rows of whole {type_size}-byte blocks, got {data.dtype} {data.shape}")
    rows = data.shape[:-1]
    blocks = np.ascontiguousarray(data).reshape(-1, type_size)
    if qtype in _FLAT:  # d first in every 32-element type
        step = np.repeat(np.abs(_fp16(blocks[:, :2])), _FLAT[qtype], axis=1)
    elif qtype is Q.Q6_K:  # ql[128] qh[64] scales[16] (int8) d (fp16)
        scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
        step = np.repeat(np.abs(_fp16(blocks[:, 208:210]) * scales), QK_K // 16, axis=1)
    else:  # Q4_K, Q5_K: d dmin scales[12] ...; sub-block j of 32 has scale d * sc_j
        sc, _ = Q4_K.get_scale_min(blocks[:, 4:16])
        step = np.repeat(np.abs(_fp16(blocks[:, :2]) * sc.astype(np.float32)), QK_K // 8, axis=1)
    assert step.shape == (blocks.shape[0], block_size)
    return step.reshape(*rows, -1)


def noise_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for one tensor of one draw, seeded by the draw's seed and the tensor's name (sha256):
    a draw does not depend on which other tensors were perturbed, or in which order."""
    digest = hashlib.sha256(f"source-noise:{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def perturb(weight: torch.Tensor, step: torch.Tensor, generator: torch.Generator, *, width: float = 1.0) -> torch.Tensor:
    """weight + width * step * u with u ~ Uniform[-1/2, 1/2) i.i.d. per element (summed in float64, then
    rounded to weight's dtype), so |change| <= width * step / 2 up to that rounding.

    Args:
        weight: any shape, floating.
        step: the same shape: the grid step of each element (`source_steps`), >= 0.
        generator: the draw's (`noise_generator`).
        width: the noise's width in steps; 0 returns an exact copy of `weight` (no draw is taken).

    Raises:
        ValueError: shapes differ, a negative or non-finite step, or width < 0.
    """
    if weight.shape != step.shape:
        raise ValueError(f"step shape {tuple(step.shape)} differs from the weight's {tuple(weight.shape)}")
    if not (width >= 0 and np.isfinite(width)):
        raise ValueError(f"width must be a finite number >= 0, got {width!r}")
    if not bool(torch.isfinite(step).all()) or bool((step < 0).any()):
        raise ValueError("steps must be finite and >= 0")
    if width == 0:
        return weight.clone()
    u = torch.rand(weight.shape, generator=generator, dtype=torch.float64) - 0.5
    return (weight.double() + width * step.double() * u).to(weight.dtype)


def grid_residual(weight: torch.Tensor, step: torch.Tensor, group: int = 16) -> float:
    """How far `weight` is from lying on its steps' grid: the largest |k - round(k)| over elements, where
    k = (w - min of the element's group) / step and groups are `group` consecutive elements of a row
    (16 divides every block and sub-block above). 0 for weights on the grid (up to float rounding);
    about 0.5 for weights with the wrong steps or off the grid. Elements with step 0 are skipped."""
    w, s = weight.double().reshape(-1, group), step.double().reshape(-1, group)
    k = (w - w.min(dim=1, keepdim=True).values) / s.clamp_min(torch.finfo(torch.float64).tiny)
    dev = (k - k.round()).abs()
    return float(dev[s > 0].max()) if bool((s > 0).any()) else 0.0


def hf_source_steps(gguf_path: str | Path, model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The source step of each weight `names` of `model` (a transformers model loaded from `gguf_path`),
    in the model's layout.

    The GGUF tensors go through transformers' own name map and tensor processor (the code that loaded the
    model: Llama's q/k rows are un-permuted there), applied once to the de-quantized tensor and once to
    its steps. The de-quantized tensor must then equal the model's weight bit for bit, which checks the
    mapping; a processor that changed values (e.g. Gemma's norm offset) would fail it.

    Args:
        names: parameter names of `model` ("model.layers.0.self_attn.q_proj.weight", ...).

    Returns:
        {name: float32 tensor of the weight's shape}.

    Raises:
        ValueError: a name with no GGUF tensor, or one whose de-quantization differs from the weight.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map,
                                                          load_gguf_checkpoint, read_field)  # fmt: skip

    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    reader = GGUFReader(str(gguf_path))
    arch = read_field(reader, "general.architecture")[0]  # as transformers picks the processor
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=parsed["config"])
    to_hf = get_gguf_hf_weights_map(model, processor)
    params = dict(model.named_parameters())
    wanted, out = set(names), {}
    for tensor in reader.tensors:
        name = to_hf.get(tensor.name)
        if name not in wanted:
            continue
        kwargs = {"tensor_key_mapping": to_hf, "parsed_parameters": parsed}
        values = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name, **kwargs).weights
        steps = processor.process(weights=source_steps(tensor.tensor_type, tensor.data), name=tensor.name, **kwargs).weights
        weight = params[name].detach()
        values = torch.from_numpy(np.ascontiguousarray(values)).reshape(weight.shape)
        if not torch.equal(values.to(weight.dtype), weight):
            raise ValueError(f"{tensor.name} ({tensor.tensor_type.name}) de-quantized does not reproduce {name}: the mapping is wrong")
        out[name] = torch.from_numpy(np.ascontiguousarray(steps, dtype=np.float32)).reshape(weight.shape)
    missing = sorted(wanted - out.keys())
    if missing:
        raise ValueError(f"{len(missing)} weights have no GGUF tensor in {gguf_path}, e.g. {missing[:3]}")
    return out


def source_types(gguf_path: str | Path) -> dict[str, str]:
    """{GGUF tensor name: its type name} (for the report)."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(gguf_path)).tensors}
