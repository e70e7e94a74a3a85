"""Data types, codebooks, reference maths, double quantization and `QuantizedTensor`."""

from qlora._lazy import attach

_LAZY = {
    "Backend": "qlora.quant.api",
    "DEFAULT_BLOCK_SIZE": "qlora.quant.dtypes",
    "CodedScales": "qlora.quant.state",
    "DataType": "qlora.quant.dtypes",
    "DoubleQuant": "qlora.quant.dtypes",
    "NESTED_BLOCK_SIZE": "qlora.quant.dtypes",
    "NestedAbsmax": "qlora.quant.state",
    "QuantizedTensor": "qlora.quant.state",
    "ScaleFormat": "qlora.quant.dtypes",
    "bits_per_param": "qlora.quant.dtypes",
    "block_absmax": "qlora.quant.api",
    "codebook": "qlora.quant.dtypes",
    "dequantize": "qlora.quant.api",
    "quantize": "qlora.quant.api",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
