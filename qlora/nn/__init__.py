"""The quantized LoRA linear, its adapter parameters and its autograd Function."""

from qlora.nn.functional import QuantizedLoRAFunction
from qlora.nn.linear import QLoRALinear
from qlora.nn.lora import lora_delta, lora_parameters, reset_lora_parameters

__all__ = ["QLoRALinear", "QuantizedLoRAFunction", "lora_delta", "lora_parameters", "reset_lora_parameters"]
