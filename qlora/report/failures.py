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
class ClassifierRun:
    """One classification run checked against the majority class of its own test items."""

    model: str
    method: str
    quant: str
    seed: int | None
    accuracy: float
    majority: float  # the share of the test set's most common label

    @property
    def failed(self) -> bool:
        return self.accuracy <= self.majority

    def describe(self) -> str:
        seed = "" if self.seed is None else f", seed {self.seed}"
        verb = "does not beat" if self.failed else "beats"
        return (f"{self.model} {self.method} {self.quant}{seed}: accuracy {100 * self.accuracy:.1f}% {verb} the "
                f"majority class ({100 * self.majority:.1f}%)")  # fmt: skip


def majority_share(e: Evaluation) -> float:
    labels = Counter(it.label for it in e.items.items)
    return max(labels.values()) / sum(labels.values())


def split_failed(evals: Sequence[Evaluation]) -> tuple[list[Evaluation], list[ClassifierRun]]:
    """(the evaluations to use, every classification run checked). A run fails when its accuracy is not above
    the majority-class share of its own test items; failed runs are left out of the first list. A run without
    per-item results cannot be checked: it is kept and not listed."""
    kept, checked = [], []
    for e in evals:
        if e.record.task is Task.CLASSIFICATION and e.items is not None:
            r = e.record
            run = ClassifierRun(r.model, r.method.value, r.quant.value if r.quant else "", r.seed, r.value, majority_share(e))
            checked.append(run)
            if run.failed:
                continue
        kept.append(e)
    return kept, checked
