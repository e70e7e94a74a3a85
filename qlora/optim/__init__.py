"""Paged AdamW with 32-bit or 8-bit blockwise state (QLoRA §3, "Paged Optimizers")."""

from qlora.optim.paged_adamw import AdamWConfig, PagedAdamW, StateBits

__all__ = ["AdamWConfig", "PagedAdamW", "StateBits"]
