"""The pipeline's datasets from the embedded assets (or the hub): splits, tokenization, token files.

- classification (Table 3, GLUE-style): `data.classification_task` — `vader_binary` (the default: human-rated
  sentences, positive vs negative, `vader.py`), `vader_3way`, `evals_sarcasm` (news headlines), or a GLUE task
  from the hub (`glue/sst2`, `glue/mnli`, ...: `glue.py`); a seeded train/test split, encoder tokens;
- instruction tuning (Tables 3 and 4): `data.instructions` — the evals registry's English tasks (the default,
  `evals_registry.py`) or Super-NaturalInstructions from the hub (`hub_instructions.py`). Whole task families
  are held out for the RougeL test and the held-out loss (as Super-NaturalInstructions evaluates on unseen
  tasks); the training set is drawn round-robin over the other tasks (no task dominates) — or, when
  `data.source` selects them, it is the user's own records (`qlora.data.user`);
- perplexity text (Table 2): a seeded sample of MMLU question stems, as text (each base model cuts it
  into windows of its own tokens: `perplexity_windows`);
- held-out instruction loss: held-out tasks' prompts with their first reference, round-robin over the
  tasks, tokenized for the response-only NLL; `instruct_heldout.json` names each example's task and its
  trailing template tokens (NLL is reported with and without them);
- validation (learning rate, stopping step): the same from other held-out families (`instruct_val.*`),
  never the test tasks.
Examples that do not fit `max_length` are skipped, not truncated (a cut response teaches nothing). The
summary counts what was kept and the share of held-out examples that share a word 8-gram with the
training text (a leakage check).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from qlora.config import DataConfig, DataSource, InstructionTasks
from qlora.data.assets import EVALS_WHEEL, VADER_SDIST, asset_path
from qlora.data.evals_registry import load_evals_tasks, load_sarcasm
from qlora.data.examples import ClassificationData, InstructionExample
from qlora.data.glue import GLUE_TASKS, load_glue
from qlora.data.hub_instructions import load_super_natural_instructions
from qlora.data.mmlu import load_mmlu
from qlora.data.prepared import (CLS_LABELS, CLS_TEST, CLS_TRAIN, INSTRUCT_HELDOUT, INSTRUCT_HELDOUT_TASKS, INSTRUCT_TEST,
                                 INSTRUCT_TRAIN, INSTRUCT_VAL, INSTRUCT_VAL_TASKS, PERPLEXITY_TEXT)  # fmt: skip
from qlora.data.tokenization import TokenizedDataset, encode_instruction, prompt_ids, response_tail_tokens, tokenize_classification
from qlora.data.user import load_user_data, tokenize_user_data
from qlora.data.vader import VaderLabels, load_vader

EMBEDDED_CLASSIFICATION = ("vader_binary", "vader_3way", "evals_sarcasm")
CLASSIFICATION_TASKS = (*EMBEDDED_CLASSIFICATION, *(f"glue/{t}" for t in GLUE_TASKS))
OVERLAP_NGRAM = 8


def load_classification_task(task: str, assets_dir: str | Path | None = None, *, hub_loader: Callable | None = None,
                             verify_assets: bool = True) -> ClassificationData:  # fmt: skip
    """The examples of `task` (one of CLASSIFICATION_TASKS): embedded ones from the pinned assets in
    `assets_dir` (their sha256 checked unless `verify_assets` is False), GLUE from the hub (its train split)."""
    if task == "vader_binary":
        return load_vader(asset_path(VADER_SDIST, assets_dir, verify=verify_assets), VaderLabels.BINARY)
    if task == "vader_3way":
        return load_vader(asset_path(VADER_SDIST, assets_dir, verify=verify_assets), VaderLabels.THREE_WAY)
    if task == "evals_sarcasm":
        return load_sarcasm(asset_path(EVALS_WHEEL, assets_dir, verify=verify_assets))
    if task.startswith("glue/") and task[5:] in GLUE_TASKS:
        return load_glue(task[5:], "train", loader=hub_loader)
    raise ValueError(f"data.classification_task={task!r}: expected one of {', '.join(CLASSIFICATION_TASKS)}")


def load_instruction_tasks(which: InstructionTasks, assets_dir: str | Path | None = None, *,
                           hub_loader: Callable | None = None, verify_assets: bool = True) -> list[InstructionExample]:  # fmt: skip
    """The instruction records of every task: the evals registry (embedded) or Super-NaturalInstructions (hub)."""
    if which is InstructionTasks.EVALS:
        return load_evals_tasks(asset_path(EVALS_WHEEL, assets_dir, verify=verify_assets))
    return load_super_natural_instructions(loader=hub_loader)


def held_out_families(records: list[InstructionExample], tasks_wanted: int, rng: random.Random,
                      usable: Callable[[list[InstructionExample]], bool] = lambda records: True) -> tuple[list[str], set[str]]:  # fmt: skip
    """Whole families, in a seeded order, until at least `tasks_wanted` usable tasks are held out.

    Args:
        usable: whether a task's records (in file order) can be evaluated (e.g. some prompt fits the budget).

    Returns:
        (the sorted usable held-out tasks, every task of the held-out families: none of them trains).
        At least one family always stays for training.
    """
    by_family: dict[str, dict[str, list[InstructionExample]]] = {}
    for r in records:
        by_family.setdefault(r.group, {}).setdefault(r.subtask, []).append(r)
    families = sorted(by_family)
    rng.shuffle(families)
    held: list[str] = []
    excluded: set[str] = set()
    for fam in families[:-1]:
        if len(held) >= tasks_wanted:
            break
        excluded |= set(by_family[fam])
        held += [t for t, recs in sorted(by_family[fam].items()) if usable(recs)]
    if len(held) < tasks_wanted:
        raise ValueError(f"data.instruction_heldout_tasks={tasks_wanted}: only {len(held)} usable tasks can be held out "
                         f"while one family stays for training")  # fmt: skip
    return sorted(held), excluded


def _round_robin(pool: list[InstructionExample], tasks: list[str]):
    """Yields the records of `pool` (already shuffled) task by task in turn: the first of every task, then
    the second, ... — any prefix spreads evenly over the tasks."""
    per_task: dict[str, list[InstructionExample]] = {t: [] for t in tasks}
    for r in pool:
        per_task[r.subtask].append(r)
    for i in range(max((len(v) for v in per_task.values()), default=0)):
        for t in tasks:
            if i < len(per_task[t]):
                yield per_task[t][i]


def _encoded(tokenizer, records, limit: int, max_tokens: int, target=lambda r: r.response) -> tuple[list, list]:
    """Up to `limit` (record, tokenized example) pairs whose tokens fit `max_tokens` and score a response."""
    kept, examples = [], []
    for r in records:
        if len(kept) == limit:
            break
        try:
            example = encode_instruction(tokenizer, r.prompt, target(r), max_length=None)
        except ValueError:
            continue
        if example["input_ids"].numel() <= max_tokens and (example["labels"] != -100).any():
            kept.append(r)
            examples.append(example)
    return kept, examples


def _write_heldout(tokenizer, pool, tasks: list[str], count: int, max_tokens: int, tokens_path: Path, tasks_path: Path) -> list:
    """Up to `count` examples round-robin over `tasks` (prompt + first reference), as a token file and its
    sidecar (each example's task and trailing template tokens); returns the records written."""
    records, examples = _encoded(tokenizer, _round_robin(pool, tasks), count, max_tokens, target=lambda r: r.targets[0])
    if not examples:
        raise ValueError(f"no example of the held-out tasks {tasks} fits data.instruction_test_max_prompt_tokens={max_tokens}")
    TokenizedDataset.from_examples(examples).save(tokens_path)
    tail = [response_tail_tokens(tokenizer, r.prompt, r.targets[0]) for r in records]
    tasks_path.write_text(json.dumps({"tasks": [r.subtask for r in records], "template_tail": tail}, indent=0) + "\n")
    return records


def _ngrams(text: str, n: int = OVERLAP_NGRAM) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(train_texts: list[str], test_texts: list[str], n: int = OVERLAP_NGRAM) -> float:
    """The share of `test_texts` that share at least one word n-gram with any of `train_texts`."""
    if not test_texts:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    for t in train_texts:
        seen |= _ngrams(t, n)
    return sum(bool(_ngrams(t, n) & seen) for t in test_texts) / len(test_texts)


def prepare_datasets(data: DataConfig, causal_tokenizer, encoder_tokenizer, assets_dir: str | Path | None,
                     out_dir: str | Path, *, hub_loader: Callable | None = None, verify_assets: bool = True) -> dict:  # fmt: skip
    """Writes the token files into `out_dir`; returns a summary (counts) for the stage's metrics.

    Args:
        assets_dir: where set-up put the pinned data files (None: the environment's default).
        hub_loader: `datasets.load_dataset` for the hub options (injectable for tests).
        verify_assets: check the files' sha256 against the pins (False: stand-ins, in tests).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(data.seed)
    user_data = None if data.source is DataSource.EMBEDDED else load_user_data(data)  # a bad record fails first

    cls = load_classification_task(data.classification_task, assets_dir, hub_loader=hub_loader, verify_assets=verify_assets)
    need = data.classification_train + data.classification_test
    if len(cls.examples) < need:
        raise ValueError(f"{data.classification_task} has {len(cls.examples)} examples, fewer than the {need} requested "
                         "(data.classification_train + data.classification_test)")  # fmt: skip
    picked = rng.sample(cls.examples, need)
    tokenize_classification(encoder_tokenizer, picked[: data.classification_train], data.max_length).save(out / CLS_TRAIN)
    tokenize_classification(encoder_tokenizer, picked[data.classification_train :], data.max_length).save(out / CLS_TEST)
    (out / CLS_LABELS).write_text(json.dumps({"task": cls.task, "labels": list(cls.labels)}, indent=2) + "\n")

    records = load_instruction_tasks(data.instructions, assets_dir, hub_loader=hub_loader, verify_assets=verify_assets)
    budget = data.instruction_test_max_prompt_tokens
    usable = lambda recs: any(len(prompt_ids(causal_tokenizer, r.prompt)) <= budget for r in recs[:50])  # noqa: E731
    held_out, excluded = held_out_families(records, data.instruction_heldout_tasks, rng, usable)
    rest = [r for r in records if r.subtask not in excluded]
    val_tasks, val_excluded = held_out_families(rest, data.instruction_val_tasks, rng, usable)
    held = set(held_out)
    train_pool = [r for r in rest if r.subtask not in val_excluded]
    test_pool = [r for r in records if r.subtask in held]
    val_pool = [r for r in rest if r.subtask in set(val_tasks)]
    rng.shuffle(val_pool)
    rng.shuffle(train_pool)
    rng.shuffle(test_pool)
    train_tasks = sorted({r.subtask for r in train_pool})
    rng.shuffle(train_tasks)
    user_summary = {}
    if user_data is None:
        train_records, train = _encoded(causal_tokenizer, _round_robin(train_pool, train_tasks), data.instruction_train, data.max_length)
        TokenizedDataset.from_examples(train).save(out / INSTRUCT_TRAIN)
        train_texts = [f"{r.prompt} {r.response}" for r in train_records]
    else:  # the user's records replace the embedded tasks for training; the held-out tests stay
        user = tokenize_user_data(causal_tokenizer, user_data, max_length=data.max_length, limit=data.instruction_train,
                                  seed=data.seed)  # fmt: skip
        user.dataset.save(out / INSTRUCT_TRAIN)
        train = user.dataset
        train_texts = [f"{c.prompt} {c.reference}" for c in user_data.conversations]
        user_summary = {"user_records": user.records, "user_too_long": user.too_long}
    test = _interleaved_test(test_pool, held_out, causal_tokenizer, data.instruction_test,
                             data.instruction_test_max_prompt_tokens)  # fmt: skip
    source = {InstructionTasks.EVALS: "evals held-out tasks",
              InstructionTasks.SUPER_NATURAL_INSTRUCTIONS: "Super-NaturalInstructions held-out tasks"}[data.instructions]  # fmt: skip
    (out / INSTRUCT_TEST).write_text(json.dumps({"source": source, "held_out_subtasks": held_out, "examples": test}, indent=1) + "\n")

    heldout_records = _write_heldout(causal_tokenizer, test_pool, held_out, data.instruction_test, data.instruction_test_max_prompt_tokens,
                                     out / INSTRUCT_HELDOUT, out / INSTRUCT_HELDOUT_TASKS)  # fmt: skip
    val_records = _write_heldout(causal_tokenizer, val_pool, val_tasks, data.instruction_val, data.instruction_test_max_prompt_tokens,
                                 out / INSTRUCT_VAL, out / INSTRUCT_VAL_TASKS)  # fmt: skip
    overlap = ngram_overlap(train_texts, [f"{r.prompt} {r.targets[0]}" for r in heldout_records])

    questions = load_mmlu()
    stems = [q.question for q in rng.sample(questions, min(len(questions), 4000))]
    (out / PERPLEXITY_TEXT).write_text(json.dumps({"source": "MMLU question stems (seeded sample)", "texts": stems}, indent=0) + "\n")
    return {"cls_train": data.classification_train, "cls_test": data.classification_test, "instruct_train": len(train),
            "instruct_test": len(test), "instruct_heldout": len(heldout_records), "held_out_subtasks": len(held_out),
            "instruct_val": len(val_records), "val_tasks": len(val_tasks),
            "instruction_tasks": len({r.subtask for r in records}), "train_tasks": len(train_tasks),
            "heldout_8gram_overlap": round(overlap, 4), "perplexity_texts": len(stems), **user_summary}  # fmt: skip


def _interleaved_test(pool, subtasks: list[str], tokenizer, count: int, max_prompt_tokens: int) -> list[dict]:
    """Up to `count` held-out examples taken round-robin over `subtasks` (so that any prefix, e.g. the
    first `eval.rouge_examples`, spreads evenly over them), prompts of at most `max_prompt_tokens`."""
    per_task: dict[str, list] = {t: [] for t in subtasks}
    for r in pool:  # already shuffled
        if len(per_task[r.subtask]) < count and len(prompt_ids(tokenizer, r.prompt)) <= max_prompt_tokens:
            per_task[r.subtask].append(r)
    empty = [t for t, rs in per_task.items() if not rs]
    if empty:
        raise ValueError(f"held-out subtasks {empty} have no prompt of at most {max_prompt_tokens} tokens "
                         "(data.instruction_test_max_prompt_tokens)")  # fmt: skip
    test: list[dict] = []
    for i in range(count):
        for t in subtasks:
            if i < len(per_task[t]) and len(test) < count:
                r = per_task[t][i]
                test.append({"subtask": r.subtask, "prompt": r.prompt, "references": list(r.targets)})
    return test
