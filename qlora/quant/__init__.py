"""Data types, codebooks, reference maths, double quantization and `QuantizedTensor`."""

from qlora.quant.api import Backend, block_absmax, dequantize, quantize
from qlora.quant.dtypes import DEFAULT_BLOCK_SIZE, NESTED_BLOCK_SIZE, DataType, bits_per_param, codebook
from qlora.quant.state import NestedAbsmax, QuantizedTensor

__all__ = [
    "Backend",
    "DataType",
    "DEFAULT_BLOCK_SIZE",
    "NESTED_BLOCK_SIZE",
    "NestedAbsmax",
    "QuantizedTensor",
    "bits_per_param",
    "block_absmax",
    "codebook",
    "dequantize",
    "quantize",
]
