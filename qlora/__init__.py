"""qlora: QLoRA fine-tuning in 4 bits (Dettmers et al., 2023, arXiv:2305.14314)."""

from qlora.config import Checkpointing, ComputeDtype, LoRAConfig, QuantConfig, SurgeryConfig, Targets
from qlora.models.surgery import ModelReport, merge_model, model_report, prepare_model
from qlora.nn import QLoRALinear
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

__all__ = [
    "Backend", "Checkpointing", "ComputeDtype", "DataType", "LoRAConfig", "ModelReport", "NestedAbsmax", "QLoRALinear", "QuantConfig",
    "QuantizedTensor", "SurgeryConfig", "Targets", "bits_per_param", "dequantize", "merge_model", "model_report", "prepare_model",
    "quantize",
]  # fmt: skip
