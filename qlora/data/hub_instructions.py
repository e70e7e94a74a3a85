"""Super-NaturalInstructions (Wang et al., 2022) through `datasets`, for machines that reach the Hugging
Face hub or hold a local copy: the paper's own instruction data (Table 3, T5 columns; RougeL on held-out
tasks). The embedded default reads the evals registry instead (`evals_registry.py`).

The hub copy `Muennighoff/natural-instructions` has one row per instance: task_name
("task001_quoref_question_generation"), id, definition, inputs, targets. A task's family is its source
dataset, the second word of its name ("quoref"): held-out families keep a dataset's tasks together.
"""

from __future__ import annotations

from collections.abc import Callable

from qlora.data.examples import InstructionExample

SNI_HUB_ID = "Muennighoff/natural-instructions"


def sni_family(task_name: str) -> str:
    parts = task_name.split("_")
    return parts[1] if len(parts) > 2 and parts[0].startswith("task") else task_name


def load_super_natural_instructions(path: str = SNI_HUB_ID, split: str = "train", *, loader: Callable | None = None,
                                    max_per_task: int = 2000) -> list[InstructionExample]:  # fmt: skip
    """Records of `split` as instruction examples (at most `max_per_task` per task, in dataset order).

    Args:
        path: the dataset id or a local folder for `datasets.load_dataset`.
        loader: `datasets.load_dataset` (injectable for tests).

    Raises:
        ValueError: a row without the expected fields.
    """
    if loader is None:
        from datasets import load_dataset as loader
    counts: dict[str, int] = {}
    out = []
    for i, row in enumerate(loader(path, split=split)):
        missing = [k for k in ("task_name", "definition", "inputs", "targets") if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path} ({split}) row {i}: missing or non-text fields {missing}")
        task = row["task_name"]
        if counts.get(task, 0) >= max_per_task or not row["targets"].strip():
            continue
        counts[task] = counts.get(task, 0) + 1
        out.append(InstructionExample(task, row["definition"].strip(), row["inputs"].strip(), (row["targets"].strip(),), sni_family(task)))
    return sorted(out, key=lambda e: e.subtask)  # stable: dataset order within a task
