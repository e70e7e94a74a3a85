"""The pipeline's datasets from the embedded assets: splits, tokenization, token files.

- classification (Table 3, GLUE-style): a BIG-bench task, a seeded train/test split, encoder tokens;
- instruction tuning (Tables 3 and 4): Natural Instructions v1; whole subtasks are held out for the
  RougeL test (as Super-NaturalInstructions evaluates on unseen tasks), the rest sampled for training
  — or, when `data.source` selects them, the user's own records (`qlora.data.user`) for training;
- perplexity text (Table 2): a seeded sample of MMLU question stems, as text (each base model cuts it
  into windows of its own tokens: `perplexity_windows`);
- held-out instruction loss: held-out subtasks' prompts with their reference responses, tokenized for
  the response-only NLL (the tuned model vs the untuned one).
Examples that do not fit `max_length` are skipped, not truncated (a cut response teaches nothing).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from qlora.config import DataConfig, DataSource
from qlora.data.bigbench import load_classification, load_natural_instructions
from qlora.data.mmlu import load_mmlu
from qlora.data.tokenization import TokenizedDataset, encode_instruction, prompt_ids, tokenize_classification
from qlora.data.user import load_user_data, tokenize_user_data

CLS_TRAIN, CLS_TEST, CLS_LABELS = "cls_train.safetensors", "cls_test.safetensors", "cls_labels.json"
INSTRUCT_TRAIN, INSTRUCT_TEST, INSTRUCT_HELDOUT = "instruct_train.safetensors", "instruct_test.json", "instruct_heldout.safetensors"
PERPLEXITY_TEXT = "perplexity_text.json"


def prepare_datasets(data: DataConfig, causal_tokenizer, encoder_tokenizer, bigbench: str | Path,
                     out_dir: str | Path) -> dict:  # fmt: skip
    """Writes the token files into `out_dir`; returns a summary (counts) for the stage's metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(data.seed)
    user_data = None if data.source is DataSource.EMBEDDED else load_user_data(data)  # a bad record fails first

    cls = load_classification(bigbench, data.classification_task)
    need = data.classification_train + data.classification_test
    if len(cls.examples) < need:
        raise ValueError(f"{data.classification_task} has {len(cls.examples)} examples, fewer than the {need} requested")
    picked = rng.sample(cls.examples, need)
    tokenize_classification(encoder_tokenizer, picked[: data.classification_train], data.max_length).save(out / CLS_TRAIN)
    tokenize_classification(encoder_tokenizer, picked[data.classification_train :], data.max_length).save(out / CLS_TEST)
    (out / CLS_LABELS).write_text(json.dumps({"task": cls.task, "labels": list(cls.labels)}, indent=2) + "\n")

    records = load_natural_instructions(bigbench)
    subtasks = sorted({r.subtask for r in records})
    held_out = set(rng.sample(subtasks, data.instruction_heldout_tasks))
    train_pool = [r for r in records if r.subtask not in held_out]
    test_pool = [r for r in records if r.subtask in held_out]
    rng.shuffle(train_pool)
    rng.shuffle(test_pool)
    user_summary = {}
    if user_data is None:
        train = []
        for r in train_pool:
            try:
                example = encode_instruction(causal_tokenizer, r.prompt, r.response, max_length=None)
            except ValueError:
                continue
            if example["input_ids"].numel() <= data.max_length and (example["labels"] != -100).any():
                train.append(example)
            if len(train) == data.instruction_train:
                break
        TokenizedDataset.from_examples(train).save(out / INSTRUCT_TRAIN)
    else:  # the user's records replace Natural Instructions for training; the held-out tests stay
        user = tokenize_user_data(causal_tokenizer, user_data, max_length=data.max_length, limit=data.instruction_train,
                                  seed=data.seed)  # fmt: skip
        user.dataset.save(out / INSTRUCT_TRAIN)
        train = user.dataset
        user_summary = {"user_records": user.records, "user_too_long": user.too_long}
    test = _interleaved_test(test_pool, sorted(held_out), causal_tokenizer, data.instruction_test,
                             data.instruction_test_max_prompt_tokens)  # fmt: skip
    (out / INSTRUCT_TEST).write_text(json.dumps({"held_out_subtasks": sorted(held_out), "examples": test}, indent=1) + "\n")

    heldout = []
    for r in test_pool:
        if len(heldout) == data.instruction_test:
            break
        try:
            example = encode_instruction(causal_tokenizer, r.prompt, r.targets[0], max_length=None)
        except ValueError:
            continue
        if example["input_ids"].numel() <= data.instruction_test_max_prompt_tokens and (example["labels"] != -100).any():
            heldout.append(example)
    if not heldout:
        raise ValueError("no held-out instruction example fits data.instruction_test_max_prompt_tokens")
    TokenizedDataset.from_examples(heldout).save(out / INSTRUCT_HELDOUT)

    questions = load_mmlu()
    stems = [q.question for q in rng.sample(questions, min(len(questions), 4000))]
    (out / PERPLEXITY_TEXT).write_text(json.dumps({"source": "MMLU question stems (seeded sample)", "texts": stems}, indent=0) + "\n")
    return {"cls_train": data.classification_train, "cls_test": data.classification_test, "instruct_train": len(train),
            "instruct_test": len(test), "instruct_heldout": len(heldout), "held_out_subtasks": len(held_out),
            "perplexity_texts": len(stems), **user_summary}  # fmt: skip


def perplexity_windows(tokenizer, texts: list[str], window: int, count: int):
    """(count, window) token windows of `texts` joined by blank lines, the same for every data type.

    Raises:
        ValueError: the text is too short (names data.perplexity_windows / perplexity_window_tokens).
    """
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False).input_ids
    if len(ids) < window * count:
        raise ValueError(f"perplexity text has {len(ids)} tokens, fewer than data.perplexity_windows={count} "
                         f"x data.perplexity_window_tokens={window}")  # fmt: skip
    return torch.tensor(ids[: window * count], dtype=torch.long).view(count, window)


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
