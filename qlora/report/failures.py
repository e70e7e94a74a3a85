"""Training runs that failed: a classifier that does not beat always answering the majority class learned
nothing (issue 22: encoder seeds that collapsed to one class contributed an exact 0 difference and were
pooled as data). They are reported as failed and left out of every table and comparison; a comparison of
two rows then uses the seeds both have.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from qlora.eval.result import Task
from qlora.report.records import Evaluation


@dataclasses.dataclass(frozen=True)
class FailedRun:
    model: str
    method: str
    quant: str
    seed: int | None
    accuracy: float
    majority: float  # the share of the test set's most common label

    def describe(self) -> str:
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (f"{self.model} {self.method} {self.quant}{seed}: accuracy {100 * self.accuracy:.1f}% does not beat the "
                f"majority class ({100 * self.majority:.1f}%)")  # fmt: skip


def majority_share(e: Evaluation) -> float:
    labels = Counter(it.label for it in e.items.items)
    return max(labels.values()) / sum(labels.values())


def split_failed(evals: Sequence[Evaluation]) -> tuple[list[Evaluation], list[FailedRun]]:
    """(the evaluations to use, the classification runs that failed). A run fails when its accuracy is not
    above the majority-class share of its own test items (needs per-item results; without them it is kept)."""
    kept, failed = [], []
    for e in evals:
        if e.record.task is Task.CLASSIFICATION and e.items is not None:
            majority = majority_share(e)
            if e.record.value <= majority:
                r = e.record
                failed.append(FailedRun(r.model, r.method.value, r.quant.value if r.quant else "", r.seed, r.value, majority))
                continue
        kept.append(e)
    return kept, failed
