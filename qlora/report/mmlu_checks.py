"""Do the MMLU items measure anything? Per MMLU evaluation and rule, the share of questions given the most
predicted letter and the questions whose top scores tie exactly (issue 22: a row that answers "C" to every
question, or a rule that breaks ties by position, measures a letter preference, not knowledge).

Rules: CHOICE (the length-normalised choice log-likelihood, every row that computed it) and LETTER (only where
the choices were also asked rotated: the unrotated letter rule is not reported). A rule is flagged when one
letter takes more than `MAX_LETTER_SHARE` of the predictions or any question's top scores tie — except a tie
between choices whose texts are identical (MMLU lists "manipulative" twice in one public_relations question):
that tie is the data's, counted apart and not flagged, when the questions are given (`identical_choices`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Mapping, Sequence

from qlora.eval.items import LETTERS, MMLUItem, first_max, text_id
from qlora.eval.result import Task
from qlora.report.paired import split_seed
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
    ties: int  # questions whose top scores tie exactly (but for data_ties)
    data_ties: int = 0  # questions whose top scores tie between choices of identical text

    @property
    def flagged(self) -> bool:
        return self.letter_share > MAX_LETTER_SHARE or self.ties > 0


def identical_choices(questions: Sequence) -> dict[str, tuple[frozenset[int], ...]]:
    """Per question id (without its "#k" repeat suffix) with two or more choices of the same text: the groups of
    choice indices that share a text. `questions`: e.g. `qlora.data.mmlu.load_mmlu()`."""
    out = {}
    for q in questions:  # the id of `qlora.eval.mmlu.question_ids`, without the suffix it adds to a repeat
        qid = text_id(q.subject, q.question, *q.choices)
        groups: dict[str, set[int]] = {}
        for j, text in enumerate(q.choices):
            groups.setdefault(text.strip(), set()).add(j)
        same = tuple(frozenset(g) for g in groups.values() if len(g) > 1)
        if same:
            out[qid.split("#")[0]] = same
    return out


def _tie(scores: Sequence[float]) -> frozenset[int] | None:
    """The indices sharing the top score, where more than one does."""
    top = frozenset(j for j, v in enumerate(scores) if v == max(scores))
    return top if len(top) > 1 else None


def _check(row: str, task: Task, rule: Rule, items: Sequence[MMLUItem], scores: Sequence[Sequence[float]],
           same: Mapping[str, tuple[frozenset[int], ...]]) -> MMLUCheck:  # fmt: skip
    preds = Counter(LETTERS[first_max(s)] for s in scores)
    letter, count = preds.most_common(1)[0]
    ties = data = 0
    for it, s in zip(items, scores):
        tie = _tie(s)
        if tie is None:
            continue
        if any(tie <= group for group in same.get(split_seed(it.id)[1].split("#")[0], ())):  # pooled ids: "s<seed>:<id>"
            data += 1
        else:
            ties += 1
    return MMLUCheck(row, task, rule, len(scores), letter, count / len(scores), ties, data)


def _row(e: Evaluation) -> str:
    r = e.record
    name = f"{r.model}, {r.method.value}, {r.quant.display if r.quant is not None else 'main'}"
    return name + (f", {r.variant}" if r.variant else "")


def mmlu_checks(evals: Sequence[Evaluation], same: Mapping[str, tuple[frozenset[int], ...]] | None = None) -> list[MMLUCheck]:
    """The checks of every MMLU evaluation with per-item results (seeds pooled: items of every seed). `same`: the
    questions' identical choices (`identical_choices`); without it every tie is counted as a tie."""
    same = same or {}
    out = []
    for e in evals:
        if e.items is None or e.record.task not in (Task.MMLU, Task.MMLU_ZERO_SHOT):
            continue
        items: list[MMLUItem] = list(e.items.items)
        if all(it.choice_scores is not None for it in items):
            out.append(_check(_row(e), e.record.task, Rule.CHOICE, items, [it.choice_scores for it in items], same))
        if all(it.rotated_letter_logprobs is not None for it in items):
            out.append(_check(_row(e), e.record.task, Rule.LETTER, items, [it.letter_scores for it in items], same))
    return out


def render_checks(checks: Sequence[MMLUCheck]) -> str:
    """The markdown section (empty without MMLU evaluations)."""
    if not checks:
        return ""
    flagged = [c for c in checks if c.flagged]
    lines = ["", "## MMLU: do the items measure anything?", "",
             f"Per MMLU evaluation and rule (seeds pooled): the most predicted letter and its share of the questions, and "
             f"the questions whose top scores tie exactly (a tie counts 1/k in every accuracy; a tie between choices whose "
             f"texts are identical is the data's and counted apart). A rule is flagged when one letter takes more than "
             f"{100 * MAX_LETTER_SHARE:g}% of the answers or any other tie occurs. "
             + (f"**{len(flagged)} of {len(checks)} flagged.**" if flagged else f"None of the {len(checks)} is flagged."),
             "", "| row | task | rule | n | most predicted letter | ties | ties between identical choice texts | flagged |",
             "|---|---|---|---:|---|---:|---:|---|"]  # fmt: skip
    lines += [f"| {c.row} | {c.task.value} | {c.rule.value} | {c.n:,} | {c.letter} ({100 * c.letter_share:.1f}%) | {c.ties} | {c.data_ties} | "
              f"{'**yes**' if c.flagged else 'no'} |" for c in checks]  # fmt: skip
    return "\n".join(lines) + "\n"
