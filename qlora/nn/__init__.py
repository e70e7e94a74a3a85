"""The quantized LoRA linear layer and its autograd Function."""

from qlora.nn.functional import QuantizedLoRAFunction
from qlora.nn.linear import QLoRALinear

__all__ = ["QLoRALinear", "QuantizedLoRAFunction"]
