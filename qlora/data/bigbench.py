"""BIG-bench task JSONs from the `bigbench==1.0.0` sdist: the embedded GLUE-style and instruction data.

Without hub access there is no GLUE, Alpaca or Super-NaturalInstructions here. The BIG-bench sdist on
PyPI (358 MB; not pip-installable without tensorflow, so we only download it) holds task files
`bigbench/benchmark_tasks/<task>/task.json` with `examples[{input, target_scores | target}]`:

- `vitaminc_fact_verification`: 3-way NLI (True / False / Neither), 54,668 examples — our stand-in for
  GLUE's MNLI/RTE (paper Table 3, RoBERTa column);
- `multiemo/all_sentence_en`: 4-way sentiment, 57,466 examples — a stand-in for SST;
- `natural_instructions`: Natural Instructions v1, 61 subtasks, 193,250 records — the predecessor of
  the paper's Super-NaturalInstructions (Table 3, T5 columns; RougeL).

`download_sdist` fetches the archive (a pipeline stage calls it once); `extract_tasks` streams the
archive and writes only the task.json files needed; the loaders read either that folder or the sdist.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

from qlora.atomic import atomic_dir

SDIST_NAME = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"  # PyPI's bigbench 1.0.0 sdist
_TASKS_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"

# Label order is fixed here (it is the classifier's output order), not taken from the files.
CLASSIFICATION_LABELS: dict[str, tuple[str, ...]] = {
    "vitaminc_fact_verification": ("True", "False", "Neither"),
    "multiemo/all_sentence_en": ("positive", "negative", "neutral", "ambivalent"),
}
INSTRUCTION_TASK = "natural_instructions"
DEFAULT_TASKS = (*CLASSIFICATION_LABELS, INSTRUCTION_TASK)


@dataclasses.dataclass(frozen=True)
class ClassificationExample:
    """One labelled example: `text` (and `text_pair` for two-sentence tasks), label index."""

    text: str
    label: int
    text_pair: str | None = None


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """A classification task: its name, label names (index = label id) and examples in file order."""

    task: str
    labels: tuple[str, ...]
    examples: list[ClassificationExample]


@dataclasses.dataclass(frozen=True)
class InstructionExample:
    """One Natural Instructions record.

    Attributes:
        subtask: e.g. "subtask050_multirc_answerability".
        instruction: the subtask's task definition and prompt (its `task_prefix`).
        input: the instance input.
        targets: one or more reference outputs (RougeL takes the best match; training uses the first).
    """

    subtask: str
    instruction: str
    input: str
    targets: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """The user's text: the task definition, a blank line, the instance input."""
        return f"{self.instruction}\n\n{self.input}"

    @property
    def response(self) -> str:
        """The training target (the first reference)."""
        return self.targets[0]


def download_sdist(dest_dir: str | Path) -> Path:
    """Downloads the bigbench 1.0.0 sdist into `dest_dir` with pip (~45 s, 358 MB); no-op if present.

    Runs `python -m pip download --no-deps bigbench==1.0.0 -d dest_dir` with this interpreter, so
    pip's own configuration (index, proxy) applies. (PyPI has only the sdist for this version.)

    Returns:
        The path of `bigbench-1.0.0.tar.gz`.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / SDIST_NAME
    if target.is_file() and _sha256(target) == SDIST_SHA256:
        return target
    with atomic_dir(dest_dir / ".download") as tmp:  # a killed download leaves nothing that looks complete
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "bigbench==1.0.0", "-d", str(tmp)]
        subprocess.run(cmd, check=True)  # a failure raises CalledProcessError after pip's own message
        if not (tmp / SDIST_NAME).is_file():
            raise FileNotFoundError(f"pip download finished but {tmp / SDIST_NAME} is missing")
        if _sha256(tmp / SDIST_NAME) != SDIST_SHA256:
            raise ValueError(f"downloaded {SDIST_NAME} has sha256 {_sha256(tmp / SDIST_NAME)}, expected {SDIST_SHA256}")
        os.replace(tmp / SDIST_NAME, target)
    shutil.rmtree(dest_dir / ".download", ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wanted(member: str, tasks: tuple[str, ...]) -> str | None:
    """The path relative to benchmark_tasks/ when `member` is a task.json of one of `tasks`."""
    if not member.startswith(_TASKS_ROOT) or not member.endswith("/task.json"):
        return None
    rel = member[len(_TASKS_ROOT) :]
    return rel if any(rel == f"{t}/task.json" or rel.startswith(f"{t}/") for t in tasks) else None


def _check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be non-empty task names, got {tasks!r}")
    return tasks


def _iter_task_files(sdist: Path, tasks: tuple[str, ...]):
    """Yields (path under benchmark_tasks/, bytes) streaming the gzip tar once."""
    with tarfile.open(sdist, mode="r|gz") as tar:
        for member in tar:
            rel = _wanted(member.name, tasks) if member.isfile() else None
            if rel is not None:
                yield rel, tar.extractfile(member).read()


def extract_tasks(sdist: str | Path, out_dir: str | Path, tasks: Iterable[str] = DEFAULT_TASKS) -> Path:
    """Writes `out_dir/<task>/.../task.json` for `tasks` (with subtasks), streaming the sdist once.

    The folder is written beside `out_dir` and renamed into place (an existing `out_dir` is replaced).
    Extracting the default tasks (63 files) takes ~8 s.

    Raises:
        FileNotFoundError: `sdist` is missing, or holds no task.json for one of `tasks`.
    """
    sdist, out_dir, tasks = Path(sdist), Path(out_dir), _check_tasks(tasks)
    if not sdist.is_file():
        raise FileNotFoundError(f"BIG-bench sdist {sdist} does not exist")
    with atomic_dir(out_dir) as tmp:
        found = set()
        for rel, data in _iter_task_files(sdist, tasks):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
            found.update(t for t in tasks if rel.startswith(f"{t}/"))
        missing = [t for t in tasks if t not in found]
        if missing:
            raise FileNotFoundError(f"no task.json for {missing} in {sdist}")
    return out_dir


def _read_task_jsons(source: str | Path, task: str) -> dict[str, dict]:
    """{path relative to benchmark_tasks/: parsed task.json} for `task` and its subtasks."""
    source = Path(source)
    if source.is_dir():
        base = source / task
        files = sorted(base.rglob("task.json")) if base.is_dir() else []
        found = {str(f.relative_to(source)): json.loads(f.read_text(encoding="utf-8")) for f in files}
    elif source.is_file():
        found = {rel: json.loads(data) for rel, data in _iter_task_files(source, (task,))}
    else:
        raise FileNotFoundError(f"{source} is neither a folder of extracted tasks nor the BIG-bench sdist")
    if not found:
        raise FileNotFoundError(f"no task.json for task {task!r} under {source}")
    return dict(sorted(found.items()))


def load_classification(source: str | Path, task: str) -> ClassificationData:
    """A multiple-choice BIG-bench task as labelled examples.

    Args:
        source: a folder written by `extract_tasks`, or the sdist itself (slower: one stream per call).
        task: a key of `CLASSIFICATION_LABELS`.

    Returns:
        The examples in file order. For vitaminc, `text` is the Wikipedia evidence and `text_pair` the
        claim (the file joins them with "\\nClaim: ").

    Raises:
        ValueError: unknown task, or an example whose target_scores do not name exactly one label.
    """
    if task not in CLASSIFICATION_LABELS:
        raise ValueError(f"unknown classification task {task!r}; expected one of {sorted(CLASSIFICATION_LABELS)}")
    labels = CLASSIFICATION_LABELS[task]
    data = _read_task_jsons(source, task)[f"{task}/task.json"]
    examples = []
    for i, ex in enumerate(data["examples"]):
        scores = ex["target_scores"]
        best = [k for k, v in scores.items() if v == 1]
        if set(scores) != set(labels) or len(best) != 1:
            raise ValueError(f"{task} example {i}: target_scores {scores!r} do not pick one of {labels}")
        text, pair = ex["input"], None
        if task == "vitaminc_fact_verification":
            text, sep, pair = text.rpartition("\nClaim: ")
            if not sep:
                raise ValueError(f"{task} example {i}: no '\\nClaim: ' in {ex['input'][:80]!r}")
        examples.append(ClassificationExample(text=text, label=labels.index(best[0]), text_pair=pair))
    return ClassificationData(task=task, labels=labels, examples=examples)


def load_natural_instructions(source: str | Path) -> list[InstructionExample]:
    """All Natural Instructions v1 records (61 subtasks, 193,250 records), ordered by subtask then file.

    Args:
        source: a folder written by `extract_tasks`, or the sdist itself.
    """
    out = []
    for rel, data in _read_task_jsons(source, INSTRUCTION_TASK).items():
        if rel == f"{INSTRUCTION_TASK}/task.json":  # the parent: description only
            continue
        subtask = rel.split("/")[1]
        instruction = data["task_prefix"].strip()
        for ex in data["examples"]:
            targets = ex["target"]
            targets = (targets,) if isinstance(targets, str) else tuple(targets)
            out.append(InstructionExample(subtask, instruction, ex["input"].strip(), targets))
    return out
