"""Training: the loop, resumable checkpoints, memory accounting."""

from qlora._lazy import attach

_LAZY = {
    "Schedule": "qlora.train.config",
    "StepMetrics": "qlora.train.trainer",
    "TrainConfig": "qlora.train.config",
    "TrainResult": "qlora.train.trainer",
    "train": "qlora.train.trainer",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
