"""The data types of the QLoRA ablation (paper Tables 2-4) and their storage facts.

A new data type is one entry here plus its codebook in `codebooks.py`: the kernels take the codebook
as a tensor and know no formats.
"""

from __future__ import annotations

import enum
from functools import lru_cache

import torch

from qlora.quant import codebooks

DEFAULT_BLOCK_SIZE = 64
NESTED_BLOCK_SIZE = 256  # double quantization: blocks of 256 absmax constants (paper §3)
VALID_BLOCK_SIZES = tuple(2**k for k in range(5, 13))  # 32 .. 4096


class DataType(enum.Enum):
    """Storage data type of a frozen weight."""

    BF16 = "bf16"  # no quantization: the baseline of every ablation row
    INT8 = "int8"  # blockwise absmax, round(127 x / absmax) (paper Eq. 1)
    INT4 = "int4"  # blockwise absmax, 15 levels k/7
    FP4 = "fp4"  # bitsandbytes' FP4 (E2M1 grid, smallest magnitude 1/192)
    FP4_E3M0 = "fp4_e3m0"  # 0 and +-2^-6 .. 2^0 (paper Table 2)
    NF4 = "nf4"  # 4-bit NormalFloat (paper §3)

    @property
    def bits(self) -> int:
        """Bits per stored element (excluding the block constants)."""
        return {DataType.BF16: 16, DataType.INT8: 8}.get(self, 4)

    @property
    def is_4bit(self) -> bool:
        return self.bits == 4

    @property
    def is_quantized(self) -> bool:
        return self is not DataType.BF16

    @classmethod
    def parse(cls, value: "DataType | str") -> "DataType":
        """Accepts a DataType or its value ("nf4"), failing with the allowed values."""
        if isinstance(value, DataType):
            return value
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(d.value for d in cls)
            raise ValueError(f"unknown data type {value!r}; expected one of: {allowed}") from None


_CODES = {
    DataType.NF4: codebooks.NF4_CODE,
    DataType.FP4: codebooks.FP4_CODE,
    DataType.FP4_E3M0: codebooks.FP4_E3M0_CODE,
    DataType.INT4: codebooks.INT4_CODE,
}


@lru_cache(maxsize=None)
def _codebook_cpu(dtype: DataType) -> torch.Tensor:
    if dtype is DataType.INT8:
        k = torch.arange(-128, 128, dtype=torch.float32)
        return k / codebooks.INT8_LEVELS  # index (q + 128) -> q / 127
    if dtype not in _CODES:
        raise ValueError(f"data type {dtype} has no codebook")
    return torch.tensor(_CODES[dtype], dtype=torch.float32)


def codebook(dtype: DataType, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 values of the storage codes of `dtype`, in code order.

    4-bit types: 16 values; INT8: 256 values indexed by (q + 128).
    """
    return _codebook_cpu(dtype).to(device)


@lru_cache(maxsize=None)
def _sorted_search_cpu(dtype: DataType) -> tuple[torch.Tensor, torch.Tensor]:
    code = _codebook_cpu(dtype)
    order = torch.argsort(code, stable=True)
    sorted_code = code[order]
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2
    return midpoints, order.to(torch.uint8)


def nearest_code_search(dtype: DataType, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """What the 4-bit quantizer needs: midpoints between sorted codes, and sorted position -> code.

    Rounding rule (bitsandbytes' CPU `quantize_4bit`): a scaled value x takes sorted position
    #{midpoints < x} (`torch.bucketize`, right=False), so an exact tie goes to the lower code.

    Returns:
        midpoints (15,) float32, order (16,) uint8.
    """
    if not dtype.is_4bit:
        raise ValueError(f"nearest-code search is for 4-bit types, got {dtype}")
    midpoints, order = _sorted_search_cpu(dtype)
    return midpoints.to(device), order.to(device)


def validate_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in VALID_BLOCK_SIZES:
        raise ValueError(
            f"block_size must be a power of two from 32 to 4096 ({', '.join(map(str, VALID_BLOCK_SIZES))}), "
            f"got {block_size!r}"
        )
    return block_size


def bits_per_param(dtype: DataType, block_size: int = DEFAULT_BLOCK_SIZE, double_quant: bool = False) -> float:
    """Storage bits per parameter of the paper's accounting (paper §3).

    bits + 32/block for one fp32 absmax per block; with double quantization the absmax costs 8 bits
    and one fp32 constant per 256 absmax: bits + 8/block + 32/(block*256). NF4: 4.5; NF4+DQ:
    4 + 8/64 + 32/16384 = 4.126953125 (the paper's 4.127). BF16: 16.
    """
    dtype = DataType.parse(dtype)
    if not dtype.is_quantized:
        if double_quant:
            raise ValueError("double_quant applies to quantized data types, not bf16")
        return 16.0
    validate_block_size(block_size)
    if double_quant:
        return dtype.bits + 8 / block_size + 32 / (block_size * NESTED_BLOCK_SIZE)
    return dtype.bits + 32 / block_size
