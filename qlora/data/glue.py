"""Real GLUE tasks through `datasets`, for machines that reach the Hugging Face hub (or hold a local
copy): the paper's Table 3 encoder column (`data.classification_task=glue/sst2`, ...). The embedded
default uses human-rated sentences instead (`vader.py`), since GLUE is not in any package.
"""

from __future__ import annotations

from collections.abc import Callable

from qlora.data.examples import ClassificationData, ClassificationExample

# task -> (text field, pair field or None, label names)
GLUE_TASKS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "sst2": ("sentence", None, ("negative", "positive")),
    "cola": ("sentence", None, ("unacceptable", "acceptable")),
    "mrpc": ("sentence1", "sentence2", ("not_equivalent", "equivalent")),
    "qqp": ("question1", "question2", ("not_duplicate", "duplicate")),
    "mnli": ("premise", "hypothesis", ("entailment", "neutral", "contradiction")),
    "qnli": ("question", "sentence", ("entailment", "not_entailment")),
    "rte": ("sentence1", "sentence2", ("entailment", "not_entailment")),
    "wnli": ("sentence1", "sentence2", ("not_entailment", "entailment")),
}


def load_glue(task: str, split: str = "validation", *, path: str = "nyu-mll/glue", loader: Callable | None = None) -> ClassificationData:
    """One GLUE task's split as ClassificationData (labels -1, GLUE's hidden test labels, are dropped).

    Args:
        task: a key of GLUE_TASKS.
        split: e.g. "train", "validation" ("validation_matched" for mnli).
        path: the dataset id or a local folder for `datasets.load_dataset`.
        loader: `datasets.load_dataset` (injectable for tests).

    Raises:
        ValueError: an unknown task.
    """
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    if loader is None:
        from datasets import load_dataset as loader
    text, pair, labels = GLUE_TASKS[task]
    rows = loader(path, task, split=split)
    examples = [ClassificationExample(r[text], int(r["label"]), r[pair] if pair else None) for r in rows if int(r["label"]) >= 0]
    return ClassificationData(f"glue/{task}", labels, examples)
