"""The example types every data source produces: labelled sentences and instruction records.

Sources (`vader.py`, `evals_registry.py`, `glue.py`, `hub_instructions.py`, the user's own records) all
turn their files into these, so that splitting, tokenization and evaluation know no source.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ClassificationExample:
    """One labelled example: `text` (and `text_pair` for two-sentence tasks), label index, and the
    part of the source it came from (`group`, e.g. "tweets"; empty when the source has no parts)."""

    text: str
    label: int
    text_pair: str | None = None
    group: str = ""


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """A classification task: its name, label names (index = label id) and examples in file order."""

    task: str
    labels: tuple[str, ...]
    examples: list[ClassificationExample]


@dataclasses.dataclass(frozen=True)
class InstructionExample:
    """One instruction record of a task.

    Attributes:
        subtask: the task it belongs to (whole tasks are held out for evaluation), e.g. "rot13".
        instruction: the task's instruction (a system message, a task definition), may be empty.
        input: the instance input.
        targets: one or more reference outputs (RougeL takes the best match; training uses the first).
        family: the group of related tasks it belongs to (held out together); defaults to `subtask`.
    """

    subtask: str
    instruction: str
    input: str
    targets: tuple[str, ...]
    family: str = ""

    @property
    def prompt(self) -> str:
        """The user's text: the instruction, a blank line, the instance input (or the input alone)."""
        return f"{self.instruction}\n\n{self.input}" if self.instruction else self.input

    @property
    def response(self) -> str:
        """The training target (the first reference)."""
        return self.targets[0]

    @property
    def group(self) -> str:
        return self.family or self.subtask
