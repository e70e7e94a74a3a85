"""Learning-rate multipliers: linear warmup, then constant (paper) or cosine decay."""

from __future__ import annotations

import math

from qlora.train.config import Schedule


def lr_multiplier(step: int, max_steps: int, warmup_steps: int, schedule: Schedule) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule is Schedule.CONSTANT:
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
