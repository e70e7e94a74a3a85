"""The data types of the QLoRA ablation (paper Tables 2-4), the formats since the paper, and their storage facts.

A new data type is one entry here (`DataType` and its `TypeSpec`: bits, scale format, element grid or
codebook, allowed block sizes) plus, for a codebook type, its codebook in `codebooks.py`: the kernels
take codebooks, rounding tables and scales as tensors and know no formats.

Two ways a block's values are stored:
- codebook types (NF4, FP4, FP4-E3M0, Int4, AF4; Int8): x / absmax rounded to the nearest entry of a
  codebook on [-1, 1] (ties to the lower entry, as bitsandbytes), one float32 absmax per block;
- minifloat types (FP8 E4M3 / E5M2, NVFP4, MXFP4): values rounded to a float format's grid, nearest
  with ties to even and saturation (`qlora.quant.minifloat`). FP8 scales like Int8 (x / absmax times
  the format's largest value, one float32 absmax per block); NVFP4 and MXFP4 keep their standard
  8-bit block scales (`ScaleFormat`).
"""

from __future__ import annotations

import dataclasses
import enum
from functools import lru_cache

import torch

from qlora.quant import codebooks, minifloat
from qlora.quant.minifloat import Minifloat

DEFAULT_BLOCK_SIZE = 64
NESTED_BLOCK_SIZE = 256  # double quantization: blocks of 256 absmax constants (paper §3)
VALID_BLOCK_SIZES = tuple(2**k for k in range(5, 13))  # 32 .. 4096: the absmax types' block sizes


class ScaleFormat(enum.Enum):
    """How the scale of a block is stored."""

    FP32 = "fp32"  # one float32 absmax per block (the paper); may be double-quantized (`DoubleQuant`)
    E8M0 = "e8m0"  # one byte per block, the power of two 2^(code - 127) (OCP MX v1.0 shared scale)
    E4M3 = "e4m3"  # one FP8 E4M3 byte per block times one float32 per tensor (NVIDIA NVFP4)


class DoubleQuant(enum.Enum):
    """How double quantization stores the float32 absmax of each block (8 bits + one float32 per 256 blocks).

    DYNAMIC: the paper's (§3): (absmax - mean) to 8 bits with the signed dynamic map (bitsandbytes).
    E4M4: each absmax as an unsigned E4M4 byte (bitsandbytes' k-bit absmax format: 4 exponent bits,
    bias 11, 4 mantissa bits, subnormals, max 31) of absmax / s, s = (largest absmax of its group of 256)
    / 31, rounded to nearest-even; s in float32 per group (`reference.double_quantize_e4m4`).
    """

    DYNAMIC = "dynamic"
    E4M4 = "e4m4"

    @classmethod
    def parse(cls, value: "DoubleQuant | bool | str | None") -> "DoubleQuant | None":
        """None/False: none; True: the paper's DYNAMIC; a DoubleQuant or its value ("e4m4")."""
        if value is None or value is False:
            return None
        if value is True:
            return cls.DYNAMIC
        if isinstance(value, DoubleQuant):
            return value
        try:
            return cls(value.lower() if isinstance(value, str) else value)
        except ValueError:
            from qlora.checks import ConfigError  # a string such as "no" is truthy: refused, never taken as True

            raise ConfigError("double_quant", value, f"true, false or one of: {', '.join(d.value for d in cls)}") from None


class DataType(enum.Enum):
    """Storage data type of a frozen weight."""

    BF16 = "bf16"  # no quantization: the baseline of every ablation row
    INT8 = "int8"  # blockwise absmax, round(127 x / absmax) (paper Eq. 1)
    INT4 = "int4"  # blockwise absmax, 15 levels k/7
    FP4 = "fp4"  # bitsandbytes' FP4 (E2M1 grid, smallest magnitude 1/192)
    FP4_E3M0 = "fp4_e3m0"  # 0 and +-2^-6 .. 2^0 (paper Table 2)
    NF4 = "nf4"  # 4-bit NormalFloat (paper §3)
    FP8_E4M3 = "fp8_e4m3"  # OFP8 E4M3 (max 448) of 448 x / absmax, blockwise absmax like Int8
    FP8_E5M2 = "fp8_e5m2"  # OFP8 E5M2 (max 57344) of 57344 x / absmax, blockwise absmax like Int8
    NVFP4 = "nvfp4"  # NVIDIA NVFP4: E2M1 values, an E4M3 scale per 16, a float32 scale per tensor
    MXFP4 = "mxfp4"  # OCP MXFP4: E2M1 values, an E8M0 (power-of-two) scale per 32
    AF4 = "af4"  # Abnormal Float 4 for blocks of 64 (arXiv:2306.06965)

    @property
    def spec(self) -> "TypeSpec":
        return _SPECS[self]

    @property
    def bits(self) -> int:
        """Bits per stored element (excluding the block constants)."""
        return self.spec.bits

    @property
    def is_4bit(self) -> bool:
        return self.bits == 4

    @property
    def is_quantized(self) -> bool:
        return self is not DataType.BF16

    @property
    def scale_format(self) -> ScaleFormat | None:
        """How each block's scale is stored (None for BF16)."""
        return self.spec.scale_format

    @property
    def grid(self) -> Minifloat | None:
        """The float format the values are rounded to (minifloat types), None for codebook types."""
        return self.spec.grid

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """The block sizes this type allows (NVFP4: 16, MXFP4: 32, AF4: 64, fixed by the format)."""
        return self.spec.block_sizes

    @property
    def default_block_size(self) -> int:
        return DEFAULT_BLOCK_SIZE if DEFAULT_BLOCK_SIZE in self.block_sizes else self.block_sizes[0]

    @property
    def allows_double_quant(self) -> bool:
        """Whether the block scales are float32 absmax that double quantization can compress."""
        return self.scale_format is ScaleFormat.FP32

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


@dataclasses.dataclass(frozen=True)
class TypeSpec:
    """The storage facts of one data type.

    Attributes:
        bits: bits per stored element.
        scale_format: how block scales are stored (None: BF16).
        grid: the minifloat format values are rounded to (None: a codebook type).
        block_sizes: the allowed elements per block.
    """

    bits: int
    scale_format: ScaleFormat | None = ScaleFormat.FP32
    grid: Minifloat | None = None
    block_sizes: tuple[int, ...] = VALID_BLOCK_SIZES


_SPECS = {
    DataType.BF16: TypeSpec(16, None, block_sizes=VALID_BLOCK_SIZES),
    DataType.INT8: TypeSpec(8),
    DataType.INT4: TypeSpec(4),
    DataType.FP4: TypeSpec(4),
    DataType.FP4_E3M0: TypeSpec(4),
    DataType.NF4: TypeSpec(4),
    DataType.FP8_E4M3: TypeSpec(8, grid=minifloat.E4M3),
    DataType.FP8_E5M2: TypeSpec(8, grid=minifloat.E5M2),
    DataType.NVFP4: TypeSpec(4, ScaleFormat.E4M3, minifloat.E2M1, block_sizes=(16,)),  # NVIDIA: 16 values per scale
    DataType.MXFP4: TypeSpec(4, ScaleFormat.E8M0, minifloat.E2M1, block_sizes=(32,)),  # OCP MX v1.0: k = 32
    DataType.AF4: TypeSpec(4, block_sizes=(64,)),  # the codebook is AF4-64: built for blocks of 64
}

_CODES = {
    DataType.NF4: codebooks.NF4_CODE,
    DataType.FP4: codebooks.FP4_CODE,
    DataType.FP4_E3M0: codebooks.FP4_E3M0_CODE,
    DataType.INT4: codebooks.INT4_CODE,
    DataType.AF4: codebooks.AF4_64_CODE,
}


@lru_cache(maxsize=None)
def _codebook_cpu(dtype: DataType) -> torch.Tensor:
    if dtype is DataType.INT8:
        k = torch.arange(-128, 128, dtype=torch.float32)
        return k / codebooks.INT8_LEVELS  # index (q + 128) -> q / 127
    grid = dtype.grid
    if grid is not None and dtype.bits == 8:
        # FP8 codes are stored as int8 bit patterns and read like Int8's: index (q + 128) -> byte q & 0xFF,
        # whose value divided by the format's largest (float32), as Int8's q / 127: value = entry * absmax.
        byte = torch.arange(-128, 128) & 0xFF
        return minifloat.values(grid)[byte] / grid.max
    if grid is not None:
        return minifloat.values(grid).clone()  # E2M1 in code order: the scale is the block's real scale
    if dtype not in _CODES:
        raise ValueError(f"data type {dtype} has no codebook")
    return torch.tensor(_CODES[dtype], dtype=torch.float32)


def codebook(dtype: DataType, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 values of the storage codes of `dtype`, in code order: value = entry * block scale.

    4-bit types: 16 values; 8-bit types (Int8, FP8): 256 values indexed by (q + 128) for the int8 code q.
    FP8 entries hold the format's NaN/Inf at their codes (never produced by the quantizer).
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
    """What the 4-bit codebook quantizer needs: midpoints between sorted codes, and sorted position -> code.

    Rounding rule (bitsandbytes' CPU `quantize_4bit`): a scaled value x takes sorted position
    #{midpoints < x} (`torch.bucketize`, right=False), so an exact tie goes to the lower code.
    Minifloat types round with `minifloat.rounding_table(dtype.grid)` instead (ties to even).

    Returns:
        midpoints (15,) float32, order (16,) uint8.
    """
    if not dtype.is_4bit:
        raise ValueError(f"nearest-code search is for 4-bit types, got {dtype}")
    midpoints, order = _sorted_search_cpu(dtype)
    return midpoints.to(device), order.to(device)


def validate_block_size(block_size: int, dtype: DataType | None = None) -> int:
    """Returns `block_size` if `dtype` allows it (any type's range when dtype is None), else ValueError."""
    allowed = VALID_BLOCK_SIZES if dtype is None else dtype.block_sizes
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in allowed:
        if dtype is not None and len(allowed) == 1:
            raise ValueError(f"{dtype.value} has a fixed block size of {allowed[0]} (set by the format), got {block_size!r}")
        raise ValueError(
            f"block_size must be a power of two from 32 to 4096 ({', '.join(map(str, allowed))}), "
            f"got {block_size!r}"
        )
    return block_size


def bits_per_param(dtype: DataType, block_size: int | None = None, double_quant: "bool | DoubleQuant" = False) -> float:
    """Storage bits per parameter of the paper's accounting (paper §3), per-tensor constants excluded.

    bits + 32/block for one fp32 absmax per block; with double quantization (either `DoubleQuant`) the
    absmax costs 8 bits and one fp32 constant per 256 absmax: bits + 8/block + 32/(block*256). NF4: 4.5;
    NF4+DQ: 4 + 8/64 + 32/16384 = 4.126953125 (the paper's 4.127). NVFP4: 4 + 8/16 = 4.5 (plus one fp32
    per tensor); MXFP4: 4 + 8/32 = 4.25; FP8: 8.5. BF16: 16. `QuantizedTensor.storage_bits_per_param`
    counts a tensor's actual bytes.
    """
    dtype = DataType.parse(dtype)
    dq = DoubleQuant.parse(double_quant)
    if not dtype.is_quantized:
        if dq is not None:
            raise ValueError("double_quant applies to quantized data types, not bf16")
        return 16.0
    block_size = dtype.default_block_size if block_size is None else block_size
    validate_block_size(block_size, dtype)
    if dq is not None:
        if not dtype.allows_double_quant:
            raise ValueError(f"double_quant applies to float32 absmax; {dtype.value} stores {dtype.scale_format.value} scales")
        return dtype.bits + 8 / block_size + 32 / (block_size * NESTED_BLOCK_SIZE)
    scale_bits = 32 if dtype.scale_format is ScaleFormat.FP32 else 8
    return dtype.bits + scale_bits / block_size
