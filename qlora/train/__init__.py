"""Training: the loop, resumable checkpoints, memory accounting."""

from qlora.train.config import Schedule, TrainConfig
from qlora.train.trainer import StepMetrics, TrainResult, train

__all__ = ["Schedule", "StepMetrics", "TrainConfig", "TrainResult", "train"]
