"""qlora: QLoRA fine-tuning in 4 bits (Dettmers et al., 2023, arXiv:2305.14314)."""

from qlora.quant import (
    Backend,
    DataType,
    NestedAbsmax,
    QuantizedTensor,
    bits_per_param,
    dequantize,
    quantize,
)

__version__ = "0.1.0"

__all__ = ["Backend", "DataType", "NestedAbsmax", "QuantizedTensor", "bits_per_param", "dequantize", "quantize"]
