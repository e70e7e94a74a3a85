"""Paged AdamW with 32-bit or 8-bit blockwise state (QLoRA §3, "Paged Optimizers")."""

from qlora._lazy import attach

_LAZY = {
    "AdamWConfig": "qlora.optim.paged_adamw",
    "PagedAdamW": "qlora.optim.paged_adamw",
    "StateBits": "qlora.optim.state_bits",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
