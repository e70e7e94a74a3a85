"""The data-type label of a result row: which storage a model's frozen base had (the rows of Table 2).

A frozen value (data type, double quantization, block size) instead of a free string such as
"nf4_dq", with the same text form in files (`value`, `parse`) and the tables' display names.
"""

from __future__ import annotations

import dataclasses
import re

from qlora.quant.dtypes import DEFAULT_BLOCK_SIZE, DataType, DoubleQuant, validate_block_size

_DISPLAY = {
    DataType.BF16: "BF16", DataType.INT8: "Int8", DataType.INT4: "Int4", DataType.FP4: "FP4 (E2M1, bnb grid)",
    DataType.FP4_E3M0: "FP4 (E3M0)", DataType.NF4: "NF4", DataType.FP8_E4M3: "FP8 (E4M3)", DataType.FP8_E5M2: "FP8 (E5M2)",
    DataType.NVFP4: "NVFP4", DataType.MXFP4: "MXFP4", DataType.AF4: "AF4-64",
}  # fmt: skip
_PATTERN = re.compile(r"^(?P<dtype>[a-z0-9_]+?)(?P<dq>_dq(?:_(?P<dqf>e4m4))?)?(?:_b(?P<block>\d+))?$")


@dataclasses.dataclass(frozen=True)
class DataTypeLabel:
    """Attributes:
    dtype: the storage data type.
    double_quant: the block constants are themselves quantized (paper §3).
    block_size: elements per block constant (the data type's default -- 64, or NVFP4's 16 and MXFP4's 32 --
        is left out of the text form); None: that default.
    double_quant_format: None for the paper's double quantization, DoubleQuant.E4M4 for the E4M4 variant.
    """

    dtype: DataType
    double_quant: bool = False
    block_size: int | None = None
    double_quant_format: DoubleQuant | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", DataType.parse(self.dtype))
        if not isinstance(self.double_quant, bool):
            raise TypeError(f"double_quant must be a bool, got {self.double_quant!r}")
        if self.double_quant_format is DoubleQuant.DYNAMIC:
            object.__setattr__(self, "double_quant_format", None)
        if self.double_quant_format is not None and not self.double_quant:
            raise ValueError(f"double_quant_format {self.double_quant_format.value} needs double_quant")
        if not self.dtype.is_quantized:  # BF16 has no blocks: one label whatever the config says
            object.__setattr__(self, "block_size", DEFAULT_BLOCK_SIZE)
        if self.block_size is None:
            object.__setattr__(self, "block_size", self.dtype.default_block_size)
        validate_block_size(self.block_size, self.dtype if self.dtype.is_quantized else None)
        if self.double_quant and not self.dtype.is_quantized:
            raise ValueError(f"double quantization needs a quantized data type, got {self.dtype.value}")

    @property
    def value(self) -> str:
        """The text form: "nf4_dq", "nf4_dq_e4m4", "fp4", "int8_b128", "nvfp4", "bf16"."""
        text = self.dtype.value + ("_dq" if self.double_quant else "")
        text += f"_{self.double_quant_format.value}" if self.double_quant_format else ""
        default = self.block_size == self.dtype.default_block_size or not self.dtype.is_quantized
        return text if default else f"{text}_b{self.block_size}"

    @property
    def display(self) -> str:
        """The tables' name: "NF4 + DQ", "NF4 + DQ (E4M4)", "FP4 (E2M1, bnb grid)", "Int8, block 128"."""
        text = _DISPLAY[self.dtype] + (" + DQ" if self.double_quant else "")
        text += f" ({self.double_quant_format.value.upper()})" if self.double_quant_format else ""
        default = self.block_size == self.dtype.default_block_size or not self.dtype.is_quantized
        return text if default else f"{text}, block {self.block_size}"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "DataTypeLabel | str") -> "DataTypeLabel":
        """From a label or its text form, case-insensitively ("NF4_DQ" = "nf4_dq").

        Raises:
            ValueError: not of the form <data type>[_dq][_b<block>], naming the allowed data types.
        """
        if isinstance(value, DataTypeLabel):
            return value
        match = _PATTERN.match(value.strip().lower()) if isinstance(value, str) else None
        dtype = next((d for d in DataType if match and d.value == match["dtype"]), None)
        if dtype is None:
            allowed = ", ".join(d.value for d in DataType)
            raise ValueError(f"data type label must be <data type>[_dq[_e4m4]][_b<block size>] with a data type in {allowed}; "
                             f"got {value!r}")  # fmt: skip
        dq_format = DoubleQuant(match["dqf"]) if match["dqf"] else None
        return cls(dtype, bool(match["dq"]), int(match["block"]) if match["block"] else None, dq_format)

    @classmethod
    def of(cls, quant) -> "DataTypeLabel":
        """The label of a `qlora.config.QuantConfig` (its dtype, double_quant, block_size, DQ format)."""
        return cls(quant.dtype, bool(quant.double_quant), quant.block_size, getattr(quant, "double_quant_format", None))


BF16 = DataTypeLabel(DataType.BF16)
INT8 = DataTypeLabel(DataType.INT8)
INT4 = DataTypeLabel(DataType.INT4)
FP4 = DataTypeLabel(DataType.FP4)
FP4_E3M0 = DataTypeLabel(DataType.FP4_E3M0)
NF4 = DataTypeLabel(DataType.NF4)
NF4_DQ = DataTypeLabel(DataType.NF4, double_quant=True)
NF4_DQ_E4M4 = DataTypeLabel(DataType.NF4, double_quant=True, double_quant_format=DoubleQuant.E4M4)
FP8_E4M3 = DataTypeLabel(DataType.FP8_E4M3)
FP8_E5M2 = DataTypeLabel(DataType.FP8_E5M2)
NVFP4 = DataTypeLabel(DataType.NVFP4)
MXFP4 = DataTypeLabel(DataType.MXFP4)
AF4 = DataTypeLabel(DataType.AF4)
