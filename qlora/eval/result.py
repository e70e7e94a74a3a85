"""What an evaluator measured: the task and metric (enums), the score with its n and 95% interval,
a per-group breakdown, and the per-item scores that paired comparisons need (`qlora.eval.items`).

`Score` is the one definition of "a measured number": the report's `EvalRecord` holds a `Score` plus
who was measured (model, data type, method, dataset), instead of repeating its fields.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qlora.eval.items import ItemResults


def _parse_enum(kind: type[enum.Enum], value, what: str):
    """An enum member from itself or its value, case-insensitively; the error lists the allowed values."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        for member in kind:
            if member.value.lower() == value.lower():
                return member
    raise ValueError(f"{what} must be one of {[m.value for m in kind]}, got {value!r}")


class Task(enum.Enum):
    """What was evaluated (the columns of the paper's tables)."""

    PERPLEXITY = "perplexity"  # fixed windows of held-out text (Table 2)
    MMLU = "mmlu"  # k-shot MMLU, k > 0 (Table 4)
    MMLU_ZERO_SHOT = "mmlu_0shot"  # 0-shot MMLU (Table 2's downstream column)
    CLASSIFICATION = "classification"  # a sequence classifier's accuracy (Table 3, GLUE-style)
    ROUGE_L = "rougeL"  # greedy generations vs references (Table 3, Super-NaturalInstructions-style)
    HELDOUT_NLL = "heldout_nll"  # NLL of held-out instruction responses (did fine-tuning work?)

    @classmethod
    def parse(cls, value: "Task | str") -> "Task":
        return _parse_enum(cls, value, "task")

    @property
    def default_metric(self) -> "Metric":
        return {Task.PERPLEXITY: Metric.PERPLEXITY, Task.MMLU: Metric.ACCURACY, Task.MMLU_ZERO_SHOT: Metric.CHOICE_ACCURACY,
                Task.CLASSIFICATION: Metric.ACCURACY, Task.ROUGE_L: Metric.ROUGE_L_F, Task.HELDOUT_NLL: Metric.NLL}[self]  # fmt: skip


class Metric(enum.Enum):
    """What a score's value is."""

    PERPLEXITY = "perplexity"  # exp(mean NLL per predicted token)
    ACCURACY = "accuracy"  # argmax of the answer-letter logits (MMLU, the paper's code) or of the class logits
    CHOICE_ACCURACY = "choice_accuracy"  # MMLU: argmax of the length-normalised choice log-likelihood
    ROUGE_L_F = "rougeL_f"  # RougeL F-measure in [0, 1]
    NLL = "nll"  # mean NLL per response token, nats
    CONTENT_NLL = "content_nll"  # the same without the template's trailing tokens (end of turn), nats

    @classmethod
    def parse(cls, value: "Metric | str") -> "Metric":
        return _parse_enum(cls, value, "metric")

    @property
    def higher_is_better(self) -> bool:
        return self in (Metric.ACCURACY, Metric.CHOICE_ACCURACY, Metric.ROUGE_L_F)

    @property
    def is_accuracy(self) -> bool:
        return self in (Metric.ACCURACY, Metric.CHOICE_ACCURACY)

    @property
    def is_nll(self) -> bool:
        return self in (Metric.NLL, Metric.CONTENT_NLL)


@dataclasses.dataclass(frozen=True)
class GroupScore:
    """A score over one group (an MMLU subject, a class, a subtask)."""

    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None


@dataclasses.dataclass(frozen=True)
class Score:
    """One measured number.

    Attributes:
        task, metric: what was measured and what `value` is (strings are parsed, case-insensitively).
        value: the score (perplexity, an accuracy or RougeL F in [0, 1], or nats per token).
        n: examples scored (predicted tokens, for perplexity).
        ci_low / ci_high: its 95% interval, when it has one.
    """

    task: Task
    metric: Metric
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task.parse(self.task))
        object.__setattr__(self, "metric", Metric.parse(self.metric))
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"n must be a non-negative int, got {self.n!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise TypeError(f"value must be a number, got {self.value!r}")
        for name in ("ci_low", "ci_high"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number or None, got {v!r}")
        if (self.ci_low is None) != (self.ci_high is None):
            raise ValueError(f"ci_low and ci_high must both be set or both None, got {self.ci_low!r}, {self.ci_high!r}")
        if self.ci_low is not None and math.isfinite(self.value) and not self.ci_low <= self.value <= self.ci_high:
            raise ValueError(f"interval [{self.ci_low}, {self.ci_high}] does not contain the value {self.value}")


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What an evaluator returns.

    Attributes:
        score: the aggregate score.
        items: the per-item scores behind it, keyed by stable item ids (`qlora.eval.items`).
        groups: the same score per group.
        extra: further named scores (e.g. MMLU's mean over subjects, the other prediction rule's accuracy).
    """

    score: Score
    items: "ItemResults"
    groups: dict[str, GroupScore] = dataclasses.field(default_factory=dict)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.items.task is not self.score.task:
            raise ValueError(f"items are for task {self.items.task.value}, the score for {self.score.task.value}")

    # The score's fields, read through (tables and tests use them often).
    @property
    def task(self) -> Task:
        return self.score.task

    @property
    def metric(self) -> Metric:
        return self.score.metric

    @property
    def value(self) -> float:
        return self.score.value

    @property
    def n(self) -> int:
        return self.score.n

    @property
    def ci_low(self) -> float | None:
        return self.score.ci_low

    @property
    def ci_high(self) -> float | None:
        return self.score.ci_high
