"""The common result of every evaluator: a score, its n and 95% interval, and a per-group breakdown.

Its fields map one-to-one onto `qlora.report.records.EvalRecord` (value, n, ci_low, ci_high), which the
stage fills in with the model, data type and method it knows about.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class GroupScore:
    """A score over one group (an MMLU subject, a class, a subtask)."""

    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What an evaluator measured.

    Attributes:
        task: "mmlu", "classification", "perplexity" or "rougeL".
        metric: what `value` is: "accuracy", "perplexity" or "rougeL_f".
        value: the score.
        n: examples scored (tokens, for perplexity).
        ci_low / ci_high: its 95% interval.
        groups: the same score per group.
        extra: further named scores (e.g. MMLU's mean over subjects, the choice-log-likelihood accuracy).
        per_example: one number per example (1.0/0.0 correctness, RougeL, window NLL), in input order,
            for paired comparisons between models evaluated on the same examples.
    """

    task: str
    metric: str
    value: float
    n: int
    ci_low: float
    ci_high: float
    groups: dict[str, GroupScore] = dataclasses.field(default_factory=dict)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    per_example: tuple[float, ...] = ()

    def __post_init__(self):
        assert self.ci_low <= self.value <= self.ci_high or math.isnan(self.value), (self.ci_low, self.value, self.ci_high)

    def to_json(self) -> dict:
        """A JSON-ready dict (per_example included; drop it for compact metrics files)."""
        d = dataclasses.asdict(self)
        d["per_example"] = list(self.per_example)
        return d
