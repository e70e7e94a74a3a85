"""Round-trip error and storage of a set of weight matrices under one data type (paper §3 figures)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from qlora.quant.api import dequantize, quantize
from qlora.quant.dtypes import DataType, bits_per_param


@dataclasses.dataclass(frozen=True)
class RoundTripStats:
    """Aggregate quantization error of many tensors (all elements pooled).

    Attributes:
        rel_rmse: ||W - deq(q(W))|| / ||W|| over all elements.
        bits_per_param: the paper's accounting (`bits_per_param`).
        storage_bits_per_param: bytes actually stored * 8 / numel (padding and DQ offsets included).
    """

    dtype: DataType
    double_quant: bool
    block_size: int
    numel: int
    bits_per_param: float
    storage_bits_per_param: float
    mean_abs_error: float
    rmse: float
    rel_rmse: float
    max_abs_error: float

    @property
    def label(self) -> str:
        return self.dtype.value + ("+dq" if self.double_quant else "")


def roundtrip_stats(weights: Mapping[str, torch.Tensor], dtype: DataType, block_size: int = 64, double_quant: bool = False) -> RoundTripStats:
    """Quantizes and dequantizes every tensor of `weights`; pools the errors.

    Raises:
        ValueError: `weights` is empty (and whatever `quantize` raises for a bad tensor, naming it).
    """
    if not weights:
        raise ValueError("roundtrip_stats needs at least one weight tensor")
    numel = 0
    stored_bytes = 0
    abs_sum = sq_sum = ref_sq_sum = 0.0
    max_abs = 0.0
    for name, w in weights.items():
        try:
            q = quantize(w, dtype, block_size, double_quant)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name}: {e}") from None
        err = dequantize(q, torch.float32) - w.to(torch.float32)
        numel += w.numel()
        stored_bytes += q.storage_bytes()
        abs_sum += err.abs().sum(dtype=torch.float64).item()
        sq_sum += err.pow(2).sum(dtype=torch.float64).item()
        ref_sq_sum += w.to(torch.float64).pow(2).sum().item()
        max_abs = max(max_abs, err.abs().max().item())
    return RoundTripStats(
        dtype=dtype,
        double_quant=double_quant,
        block_size=block_size,
        numel=numel,
        bits_per_param=bits_per_param(dtype, block_size, double_quant),
        storage_bits_per_param=8 * stored_bytes / numel,
        mean_abs_error=abs_sum / numel,
        rmse=(sq_sum / numel) ** 0.5,
        rel_rmse=(sq_sum / ref_sq_sum) ** 0.5,
        max_abs_error=max_abs,
    )
