"""`QuantizedTensor`: the frozen, typed state of one quantized tensor.

Layout (bitsandbytes `quantize_4bit`, so that checkpoints move between tools):
- the tensor is flattened row-major and cut into blocks of `block_size` elements (the last block
  may be partial); each block has one absmax;
- 4-bit types: element 2j in the HIGH nibble and 2j+1 in the LOW nibble of byte j, packed as uint8
  of shape ((numel + 1) // 2, 1); an odd numel pads the last low nibble with the code of 0;
- INT8 and FP8: int8 codes of shape (numel,) (FP8: the E4M3 / E5M2 bit pattern); BF16: the tensor
  itself, in bfloat16 (identity storage).
- block scales: one float32 absmax per block (`absmax`), or, double-quantized, 8-bit codes of them
  (`NestedAbsmax`: the paper's dynamic map of absmax - mean, or E4M4), or for NVFP4 / MXFP4 the
  format's own 8-bit scale per block (`CodedScales`). The 4-bit minifloat types (NVFP4, MXFP4) use
  this project's nibble order (first element high), not the OCP/NVIDIA packing (first element low).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from qlora.quant.dtypes import NESTED_BLOCK_SIZE, DataType, DoubleQuant, ScaleFormat, validate_block_size


def _check_finite(name: str, t: torch.Tensor, nonnegative: bool = False) -> None:
    bad = ~torch.isfinite(t)
    if nonnegative:
        bad |= t < 0
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        expected = "finite and >= 0" if nonnegative else "finite"
        raise ValueError(f"{name} must be {expected}: {int(bad.sum())} of {t.numel()} values are not "
                         f"(first at index {first}: {t.reshape(-1)[first].item()})")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NestedAbsmax:
    """Second-level (double) quantization of the absmax constants.

    absmax[i] = code[codes[i]] * absmax2[i // block_size] + offset   (fp32 arithmetic, in that order)

    Attributes:
        codes: (n_blocks,) uint8 — indices into `code`.
        absmax: (ceil(n_blocks / block_size),) float32 — absmax of each block of constants.
        offset: () float32 — mean of the fp32 absmax vector, subtracted before quantizing.
        code: (256,) float32 — the signed dynamic map (DYNAMIC) or the E4M4 values (E4M4).
        block_size: 256 (paper).
        format: how the constants were quantized (`DoubleQuant`; E4M4 has offset 0).
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    offset: torch.Tensor
    code: torch.Tensor
    block_size: int = NESTED_BLOCK_SIZE
    format: DoubleQuant = DoubleQuant.DYNAMIC

    def __post_init__(self) -> None:
        if not isinstance(self.format, DoubleQuant):
            raise TypeError(f"nested format must be a qlora DoubleQuant, got {self.format!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"nested block_size must be a positive integer, got {self.block_size!r}")
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 1:
            raise ValueError(f"nested codes must be a 1-D uint8 tensor, got {self.codes.dtype} {tuple(self.codes.shape)}")
        expected = math.ceil(self.codes.numel() / self.block_size)
        if self.absmax.dtype != torch.float32 or tuple(self.absmax.shape) != (expected,):
            raise ValueError(
                f"nested absmax must be float32 of shape ({expected},), got {self.absmax.dtype} {tuple(self.absmax.shape)}"
            )
        if self.code.dtype != torch.float32 or tuple(self.code.shape) != (256,):
            raise ValueError(f"nested code map must be float32 (256,), got {self.code.dtype} {tuple(self.code.shape)}")
        if self.offset.numel() != 1 or self.offset.dtype != torch.float32:
            raise ValueError(f"nested offset must be one float32 value, got {self.offset.dtype} {tuple(self.offset.shape)}")

    def __repr__(self) -> str:
        fmt = "" if self.format is DoubleQuant.DYNAMIC else f"format={self.format.value}, "
        return f"NestedAbsmax(constants={self.codes.numel()}, block_size={self.block_size}, {fmt}device={self.codes.device})"

    def check_values(self) -> None:
        """Raises ValueError naming the field when a constant is NaN/Inf or an absmax is negative.

        Not part of construction (a QuantizedLoRA layer rebuilds its weight every forward): loaders call it.
        """
        _check_finite("nested_absmax", self.absmax, nonnegative=True)
        _check_finite("nested_offset", self.offset)
        _check_finite("nested_quant_map", self.code)

    def storage_bytes(self) -> int:
        return self.codes.numel() + 4 * self.absmax.numel() + 4  # codes, fp32 absmax, fp32 offset

    def to(self, device: torch.device | str) -> "NestedAbsmax":
        return dataclasses.replace(
            self, codes=self.codes.to(device), absmax=self.absmax.to(device), offset=self.offset.to(device), code=self.code.to(device)
        )


@dataclasses.dataclass(frozen=True)
class CodedScales:
    """The 8-bit block scales of NVFP4 (E4M3 x one float32 per tensor) and MXFP4 (E8M0).

    scale[b] = scale_map(format, tensor_scale)[codes[b]]  (`qlora.quant.scales.scale_map`)

    Attributes:
        codes: (n_blocks,) uint8 — the E8M0 exponent byte or the E4M3 bit pattern of each block's scale.
        format: ScaleFormat.E8M0 or ScaleFormat.E4M3.
        tensor_scale: () float32 — E4M3 only: the per-tensor decode scale (None for E8M0).
    """

    codes: torch.Tensor
    format: ScaleFormat
    tensor_scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.format not in (ScaleFormat.E8M0, ScaleFormat.E4M3):
            raise ValueError(f"coded scales are E8M0 or E4M3, got {self.format!r}")
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 1:
            raise ValueError(f"scale codes must be a 1-D uint8 tensor, got {self.codes.dtype} {tuple(self.codes.shape)}")
        if (self.tensor_scale is not None) != (self.format is ScaleFormat.E4M3):
            raise ValueError(f"{self.format.value} scales {'need' if self.format is ScaleFormat.E4M3 else 'take no'} per-tensor scale")
        if self.tensor_scale is not None and (self.tensor_scale.numel() != 1 or self.tensor_scale.dtype != torch.float32):
            raise ValueError(f"tensor_scale must be one float32 value, got {self.tensor_scale.dtype} {tuple(self.tensor_scale.shape)}")

    def __repr__(self) -> str:
        return f"CodedScales({self.format.value}, blocks={self.codes.numel()}, device={self.codes.device})"

    def check_values(self) -> None:
        """Raises ValueError when a code stands for no finite non-negative scale, or the tensor scale is bad."""
        c = self.codes.to(torch.int32)
        bad = c == 255 if self.format is ScaleFormat.E8M0 else (c >= 0x7F)  # E4M3: NaN (0x7F) and negatives
        if bool(bad.any()):
            first = int(bad.nonzero()[0])
            raise ValueError(f"scale_codes: {int(bad.sum())} of {c.numel()} {self.format.value} codes are no finite non-negative "
                             f"scale (first at index {first}: {int(c[first])})")  # fmt: skip
        if self.tensor_scale is not None:
            _check_finite("tensor_scale", self.tensor_scale, nonnegative=True)

    def storage_bytes(self) -> int:
        return self.codes.numel() + (0 if self.tensor_scale is None else 4)

    def to(self, device: torch.device | str) -> "CodedScales":
        return dataclasses.replace(self, codes=self.codes.to(device),
                                   tensor_scale=None if self.tensor_scale is None else self.tensor_scale.to(device))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """A blockwise-quantized tensor. Build it with `qlora.quantize`; read it with `qlora.dequantize`.

    Attributes:
        data: packed codes (see the module docstring for the layout per data type).
        dtype: the storage data type.
        shape: the logical shape of the original tensor.
        orig_dtype: the floating dtype of the original tensor.
        block_size: elements per absmax block.
        absmax: (n_blocks,) float32, or None when double-quantized or coded.
        nested: the double-quantized absmax, or None.
        scales: NVFP4 / MXFP4: the 8-bit block scales (exactly then; never with absmax or nested).
    """

    data: torch.Tensor
    dtype: DataType
    shape: torch.Size
    orig_dtype: torch.dtype
    block_size: int
    absmax: torch.Tensor | None = None
    nested: NestedAbsmax | None = None
    scales: CodedScales | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", torch.Size(self.shape))
        if not isinstance(self.dtype, DataType):
            raise TypeError(f"dtype must be a qlora DataType, got {self.dtype!r}")
        n = self.numel
        if self.dtype is DataType.BF16:
            if self.data.dtype != torch.bfloat16 or self.data.shape != self.shape:
                raise ValueError(f"bf16 storage must be a bfloat16 tensor of shape {tuple(self.shape)}, got {self.data.dtype} {tuple(self.data.shape)}")
            if self.absmax is not None or self.nested is not None or self.scales is not None:
                raise ValueError("bf16 storage has no absmax")
            return
        validate_block_size(self.block_size, self.dtype)
        if self.dtype.is_4bit:
            expected_shape, expected_dtype = ((n + 1) // 2, 1), torch.uint8
        else:
            expected_shape, expected_dtype = (n,), torch.int8
        if self.data.dtype != expected_dtype or tuple(self.data.shape) != expected_shape:
            raise ValueError(
                f"{self.dtype.value} data for shape {tuple(self.shape)} must be {expected_dtype} of shape {expected_shape}, "
                f"got {self.data.dtype} {tuple(self.data.shape)}"
            )
        if self.dtype.scale_format is not ScaleFormat.FP32:
            if self.scales is None or self.absmax is not None or self.nested is not None:
                raise ValueError(f"{self.dtype.value} stores {self.dtype.scale_format.value} block scales: give scales "
                                 f"(CodedScales) and neither absmax nor nested")  # fmt: skip
            if self.scales.format is not self.dtype.scale_format or self.scales.codes.numel() != self.n_blocks:
                raise ValueError(f"{self.dtype.value} needs {self.n_blocks} {self.dtype.scale_format.value} scale codes, got "
                                 f"{self.scales.codes.numel()} {self.scales.format.value}")  # fmt: skip
            return
        if self.scales is not None:
            raise ValueError(f"{self.dtype.value} stores float32 absmax, not coded scales")
        if (self.absmax is None) == (self.nested is None):
            raise ValueError("exactly one of absmax (fp32) and nested (double-quantized) must be given")
        if self.absmax is not None and (self.absmax.dtype != torch.float32 or tuple(self.absmax.shape) != (self.n_blocks,)):
            raise ValueError(
                f"absmax must be float32 of shape ({self.n_blocks},), got {self.absmax.dtype} {tuple(self.absmax.shape)}"
            )
        if self.nested is not None and self.nested.codes.numel() != self.n_blocks:
            raise ValueError(f"nested absmax holds {self.nested.codes.numel()} constants, expected {self.n_blocks}")

    def __repr__(self) -> str:
        """One line: data type, shape, block size, double quantization, bits/param (never the absmax dump)."""
        if self.dtype is DataType.BF16:
            return f"QuantizedTensor(bf16, shape={tuple(self.shape)}, 16 bits/param, device={self.device})"
        return (
            f"QuantizedTensor({self.dtype.value}, shape={tuple(self.shape)}, orig_dtype={str(self.orig_dtype).removeprefix('torch.')}, "
            f"block_size={self.block_size}, double_quant={self._dq_text()}, "
            f"{self.storage_bits_per_param():.3f} bits/param, device={self.device})"
        )

    def _dq_text(self) -> str:
        if self.nested is None or self.nested.format is DoubleQuant.DYNAMIC:
            return str(self.double_quant)
        return self.nested.format.value

    def check_values(self) -> None:
        """Raises ValueError naming the field when a block constant is NaN/Inf or negative.

        Dequantizing such a tensor gives NaN/Inf weights, and every output after them. Not part of
        construction (a QuantizedLoRA layer rebuilds its weight on every forward): loaders call it.
        """
        if self.absmax is not None:
            _check_finite("absmax", self.absmax, nonnegative=True)
        if self.nested is not None:
            self.nested.check_values()
        if self.scales is not None:
            self.scales.check_values()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.numel / self.block_size)

    @property
    def double_quant(self) -> bool:
        return self.nested is not None

    @property
    def double_quant_format(self) -> DoubleQuant | None:
        """How the absmax were double-quantized (None without double quantization)."""
        return None if self.nested is None else self.nested.format

    @property
    def device(self) -> torch.device:
        return self.data.device

    def storage_bytes(self) -> int:
        """Bytes of this tensor's own storage (codes + block constants; shared codebooks excluded)."""
        if self.dtype is DataType.BF16:
            return 2 * self.numel
        data_bytes = self.data.numel() * self.data.element_size()
        if self.nested is not None:
            return data_bytes + self.nested.storage_bytes()
        if self.scales is not None:
            return data_bytes + self.scales.storage_bytes()
        return data_bytes + 4 * self.absmax.numel()

    def storage_bits_per_param(self) -> float:
        """Actual storage bits per element of this tensor, padding and the DQ offset included."""
        return 8 * self.storage_bytes() / self.numel

    def to(self, device: torch.device | str) -> "QuantizedTensor":
        return dataclasses.replace(
            self,
            data=self.data.to(device),
            absmax=None if self.absmax is None else self.absmax.to(device),
            nested=None if self.nested is None else self.nested.to(device),
            scales=None if self.scales is None else self.scales.to(device),
        )
