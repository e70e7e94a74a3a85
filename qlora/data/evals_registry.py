"""Instruction tasks from the OpenAI `evals` registry (the `evals==3.0.1.post1` wheel, read as a zip).

Natural Instructions, the paper's instruction data (Super-NaturalInstructions, Table 3), is in no
package; the evals wheel carries 470 task folders `evals/registry/data/<task>/*.jsonl` of chat records
`{"input": [{"role", "content"}, ...], "ideal": str | [str, ...]}`. We read them as instruction
records the same way Natural Instructions is used: a task's system message is its instruction, the
user message the instance input, `ideal` (all items of a list) the references; whole tasks are held out
for RougeL on unseen tasks.

What is kept (the rules are the code below; a test pins their outcome on the pinned wheel):
- licence: the wheel is MIT except the folders its `LICENSE.md` lists with their own licences
  (text_compression, steganography, theory_of_mind (CC BY-NC), ...): every listed folder is left out;
- records: single-turn ones only (`[system, user]` or `[user]`, no named few-shot turns), a non-empty
  reference; `few_shot*.jsonl` files are skipped; at most `MAX_RECORDS_PER_TASK` per task (file order:
  a few generated tasks hold 200k+ records);
- tasks with at least `MIN_RECORDS` such records whose text is English by a simple measure: >= 99% of
  letters ASCII and >= 8% of words among the commonest English function words;
- tasks are grouped into families by the first word of their name (`poker_analysis`, `poker_hand_ranks`
  -> `poker`), and families are held out whole, so that related tasks do not straddle train and test.
Members are opened through `io.TextIOWrapper` (one file has non-`\\n` line breaks).
"""

from __future__ import annotations

import collections
import io
import json
import re
import zipfile
from pathlib import Path

from qlora.data.examples import ClassificationData, ClassificationExample, InstructionExample

_DATA = "evals/registry/data/"
_LICENSE = "evals-3.0.1.post1.dist-info/LICENSE.md"
MIN_RECORDS = 50
MAX_RECORDS_PER_TASK = 2000
MIN_ASCII_SHARE = 0.99
MIN_FUNCTION_WORD_SHARE = 0.08
_FUNCTION_WORDS = frozenset("the of and to a in is that for it with as on be are this by".split())
SARCASM_TASK = "sarcasm"


def task_family(task: str) -> str:
    """The family a task is held out with: its name up to the first '-' or '_' (lower case)."""
    return re.split(r"[-_]", task.lower(), maxsplit=1)[0]


def licence_excluded(wheel: zipfile.ZipFile) -> set[str]:
    """Task folders that the wheel's LICENSE.md lists under their own licences."""
    try:
        text = wheel.read(_LICENSE).decode("utf-8")
    except KeyError:
        raise ValueError(f"{wheel.filename} has no {_LICENSE}: not the pinned evals wheel") from None
    return {loc.rstrip("/").rsplit("/", 1)[-1] for loc in re.findall(r"\*\*Location\*\*:\s*(\S+)", text)}


def _task_files(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    files: dict[str, list[str]] = collections.defaultdict(list)
    for name in wheel.namelist():
        if name.startswith(_DATA) and name.endswith(".jsonl") and not name.rsplit("/", 1)[-1].startswith("few_shot"):
            files[name[len(_DATA) :].split("/", 1)[0]].append(name)
    return {task: sorted(names) for task, names in sorted(files.items())}


def _record(obj) -> tuple[str, str, tuple[str, ...]] | None:
    """(instruction, input, references) of a single-turn chat record, else None."""
    if not isinstance(obj, dict):
        return None
    messages, ideal = obj.get("input"), obj.get("ideal")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "name" not in m for m in messages):
        return None
    roles = [m.get("role") for m in messages]
    if roles not in (["system", "user"], ["user"]) or not all(isinstance(m.get("content"), str) for m in messages):
        return None
    refs = tuple(r.strip() for r in (ideal if isinstance(ideal, list) else [ideal]) if isinstance(r, str) and r.strip())
    if not refs:
        return None
    instruction = messages[0]["content"].strip() if len(messages) == 2 else ""
    text = messages[-1]["content"].strip()
    return (instruction, text, refs) if text else None


def _read_task(wheel: zipfile.ZipFile, names: list[str], limit: int) -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for name in names:
        with wheel.open(name) as raw:
            for line in io.TextIOWrapper(raw, encoding="utf-8"):
                if not line.strip():
                    continue
                try:
                    rec = _record(json.loads(line))
                except json.JSONDecodeError:
                    continue
                if rec is not None:
                    out.append(rec)
                    if len(out) == limit:
                        return out
    return out


def is_english(texts: list[str]) -> bool:
    """>= MIN_ASCII_SHARE of the letters are ASCII and >= MIN_FUNCTION_WORD_SHARE of the words are
    common English function words."""
    joined = " ".join(texts)
    letters = [c for c in joined if c.isalpha()]
    words = re.findall(r"[a-z]+", joined.lower())
    if not letters or not words:
        return False
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    return ascii_share >= MIN_ASCII_SHARE and sum(w in _FUNCTION_WORDS for w in words) / len(words) >= MIN_FUNCTION_WORD_SHARE


def load_evals_tasks(wheel_path: str | Path) -> list[InstructionExample]:
    """The kept instruction records of every kept task, ordered by task then file order.

    Raises:
        FileNotFoundError: the wheel does not exist.
        ValueError: it is not the evals wheel, or no task passes the rules.
    """
    wheel_path = Path(wheel_path)
    if not wheel_path.is_file():
        raise FileNotFoundError(f"evals wheel {wheel_path} does not exist")
    out: list[InstructionExample] = []
    with zipfile.ZipFile(wheel_path) as wheel:
        excluded = licence_excluded(wheel)
        for task, names in _task_files(wheel).items():
            if task in excluded:
                continue
            records = _read_task(wheel, names, MAX_RECORDS_PER_TASK)
            if len(records) < MIN_RECORDS or not is_english([f"{i} {t} {r[0]}" for i, t, r in records]):
                continue
            family = task_family(task)
            out.extend(InstructionExample(task, i, t, refs, family) for i, t, refs in records)
    if not out:
        raise ValueError(f"no task of {wheel_path} passes the licence, size and language rules")
    return out


def load_sarcasm(wheel_path: str | Path) -> ClassificationData:
    """`evals_sarcasm`: news headlines labelled sarcastic (1) or not (0), 28,614 records (binary)."""
    with zipfile.ZipFile(wheel_path) as wheel:
        names = [n for n in _task_files(wheel).get(SARCASM_TASK, []) if n.endswith("/samples.jsonl")]
        if not names:
            raise ValueError(f"{wheel_path} has no {_DATA}{SARCASM_TASK}/samples.jsonl")
        records = _read_task(wheel, names, limit=-1)
    labels = ("not sarcastic", "sarcastic")
    examples = []
    for _, text, refs in records:
        if refs[0] not in ("0", "1"):
            raise ValueError(f"{SARCASM_TASK}: reference {refs[0]!r} is not 0 or 1")
        examples.append(ClassificationExample(text=text, label=int(refs[0])))
    return ClassificationData(task="evals_sarcasm", labels=labels, examples=examples)
