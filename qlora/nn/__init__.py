"""The quantized LoRA linear, its adapter parameters and its autograd Function."""

from qlora._lazy import attach

_LAZY = {
    "QLoRALinear": "qlora.nn.linear",
    "QuantizedLoRAFunction": "qlora.nn.functional",
    "lora_delta": "qlora.nn.lora",
    "lora_parameters": "qlora.nn.lora",
    "reset_lora_parameters": "qlora.nn.lora",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
