"""Do the MMLU items measure anything? Per MMLU evaluation and rule, the share of questions given the most
predicted letter and the questions whose top scores tie exactly (issue 22: a row that answers "C" to every
question, or a rule that breaks ties by position, measures a letter preference, not knowledge).

Rules: CHOICE (the length-normalised choice log-likelihood, every row that computed it) and LETTER (only where
the choices were also asked rotated: the unrotated letter rule is not reported). A rule is flagged when one
letter takes more than `MAX_LETTER_SHARE` of the predictions or any question's top scores tie.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Sequence

from qlora.eval.items import LETTERS, MMLUItem, first_max
from qlora.eval.result import Task
from qlora.report.records import Evaluation

MAX_LETTER_SHARE = 0.6  # issue 22's bound: above it a row mostly answers one letter


class Rule(enum.Enum):
    CHOICE = "choice log-likelihood"
    LETTER = "letter, 4 rotations"


@dataclasses.dataclass(frozen=True)
class MMLUCheck:
    """One rule of one MMLU evaluation."""

    row: str  # model, method, data type, variant
    task: Task
    rule: Rule
    n: int
    letter: str  # the most predicted letter
    letter_share: float
    ties: int  # questions whose top scores tie exactly

    @property
    def flagged(self) -> bool:
        return self.letter_share > MAX_LETTER_SHARE or self.ties > 0


def _check(row: str, task: Task, rule: Rule, scores: Sequence[Sequence[float]]) -> MMLUCheck:
    preds = Counter(LETTERS[first_max(s)] for s in scores)
    letter, count = preds.most_common(1)[0]
    ties = sum(1 for s in scores if sum(1 for v in s if v == max(s)) > 1)
    return MMLUCheck(row, task, rule, len(scores), letter, count / len(scores), ties)


def _row(e: Evaluation) -> str:
    r = e.record
    name = f"{r.model}, {r.method.value}, {r.quant.display if r.quant is not None else 'main'}"
    return name + (f", {r.variant}" if r.variant else "")


def mmlu_checks(evals: Sequence[Evaluation]) -> list[MMLUCheck]:
    """The checks of every MMLU evaluation with per-item results (seeds pooled: items of every seed)."""
    out = []
    for e in evals:
        if e.items is None or e.record.task not in (Task.MMLU, Task.MMLU_ZERO_SHOT):
            continue
        items: list[MMLUItem] = list(e.items.items)
        if all(it.choice_scores is not None for it in items):
            out.append(_check(_row(e), e.record.task, Rule.CHOICE, [it.choice_scores for it in items]))
        if all(it.rotated_letter_logprobs is not None for it in items):
            out.append(_check(_row(e), e.record.task, Rule.LETTER, [it.letter_scores for it in items]))
    return out


def render_checks(checks: Sequence[MMLUCheck]) -> str:
    """The markdown section (empty without MMLU evaluations)."""
    if not checks:
        return ""
    flagged = [c for c in checks if c.flagged]
    lines = ["", "## MMLU: do the items measure anything?", "",
             f"Per MMLU evaluation and rule (seeds pooled): the most predicted letter and its share of the questions, and "
             f"the questions whose top scores tie exactly (a tie counts 1/k in every accuracy). A rule is flagged when one "
             f"letter takes more than {100 * MAX_LETTER_SHARE:g}% of the answers or any tie occurs. "
             + (f"**{len(flagged)} of {len(checks)} flagged.**" if flagged else f"None of the {len(checks)} is flagged."),
             "", "| row | task | rule | n | most predicted letter | ties | flagged |", "|---|---|---|---:|---|---:|---|"]  # fmt: skip
    lines += [f"| {c.row} | {c.task.value} | {c.rule.value} | {c.n:,} | {c.letter} ({100 * c.letter_share:.1f}%) | {c.ties} | "
              f"{'**yes**' if c.flagged else 'no'} |" for c in checks]  # fmt: skip
    return "\n".join(lines) + "\n"
