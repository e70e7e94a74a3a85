"""Does our MMLU evaluator agree with lm-evaluation-harness's, item by item? (issue 22)

lm-evaluation-harness (`lm_eval`) is the community's reference evaluator. This runs it and our
`qlora.eval.mmlu.evaluate_mmlu` on the same model, the same questions (the seeded subsample our
evaluator draws, `qlora.eval.sampling.subsample`) and the same few-shot exemplars, and compares:

- the prompt, byte for byte: lm_eval renders its context from a task defined over local JSON-lines files
  (one task per subject, as lm_eval's own MMLU: the subject header as `description`, a Jinja
  `doc_to_text`, the letters as `doc_to_choice`, the subject's exemplars as the `dev` split with the
  `first_n` sampler); every context it scored must equal our `format_prompt`, and its token ids
  (`HFLM._encode_pair`) must equal ours, continuation " A".." D" included;
- the letter rule: our `MMLUItem.raw_letter_pred` (argmax of the log-probabilities of " A".." D" after
  "Answer:") against lm_eval's argmax of the loglikelihoods of the same four continuations (its MMLU
  `acc`), with both vectors;
- the choice rule: a second task whose choices are the answer texts (exemplars still answered by
  letter) gives lm_eval's loglikelihood of " {choice text}"; our `choice_logprob_sums` must match it,
  and our prediction (mean log-probability per token) must equal the same rule on lm_eval's numbers;
- time per question of each evaluator, same machine, same run (the model is warmed up first).

One deliberate difference from lm_eval's shipped `mmlu` task: its `doc_to_text` strips the question
(`question.strip()`), ours (Hendrycks' format) keeps it as written; the task here keeps it, so that the
prompts are equal. The report counts the questions where that changes the prompt.

    python benchmarks/mmlu_lm_eval_agreement.py [--model-dir DIR] [--zero-shot 200] [--five-shot 50]
        [--seed 0] [--batch-size 8] [--max-length 2048] [--out reports/mmlu_lm_eval_agreement]

Without --model-dir the embedded SmolLM2-135M-Instruct is materialised into
~/.cache/qlora-pipeline/smollm2 (once). Needs lm_eval's dependencies (`pip install -e ".[peers]"`).
Writes OUT.json (per-item rows) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import torch

from qlora.eval.items import LETTERS, first_max
from qlora.eval.mmlu import answer_token_ids, evaluate_mmlu, format_prompt, question_ids
from qlora.eval.sampling import subsample

# lm_eval's MMLU `doc_to_text` (tasks/mmlu/default/_default_template_yaml) without its `.strip()`
DOC_TO_TEXT = "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
LETTER_TASK, TEXT_TASK = "letters", "texts"


def header(subject: str) -> str:
    """lm_eval's MMLU `description` for a subject (tasks/mmlu/default/mmlu_<subject>.yaml)."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _metric(name: str) -> dict:
    return {"metric": name, "aggregation": "mean", "higher_is_better": True}


def _row(q, qid: str) -> dict:
    return {"id": qid, "question": q.question, "choices": list(q.choices), "answer": q.answer, "subject": q.subject}


def task_configs(folder: Path, questions: Sequence, pool: Mapping[str, Sequence] | None, k: int, *,
                 doc_to_text: str = DOC_TO_TEXT) -> dict[str, list[dict]]:  # fmt: skip
    """Writes each subject's questions (test split) and its exemplars (dev split) as JSON-lines files under
    `folder` and returns lm_eval task configs over them: {LETTER_TASK: [...], TEXT_TASK: [...]}, one
    config per subject, `num_fewshot` = min(k, exemplars of the subject) as our evaluator uses."""
    ids = dict(zip(map(id, questions), question_ids(questions)))
    by_subject: dict[str, list] = defaultdict(list)
    for q in questions:
        by_subject[q.subject].append(q)
    configs: dict[str, list[dict]] = {LETTER_TASK: [], TEXT_TASK: []}
    for subject, qs in sorted(by_subject.items()):
        shots = list(pool[subject]) if k > 0 else []
        # lm_eval needs a fewshot split even at k = 0: the subject's pool (first_n takes the first k)
        dev = list(pool[subject]) if pool and pool.get(subject) else qs[:1]
        sub = folder / subject
        sub.mkdir(parents=True, exist_ok=True)
        files = {"test": sub / "test.jsonl", "dev": sub / "dev.jsonl"}
        files["test"].write_text("".join(json.dumps(_row(q, ids[id(q)])) + "\n" for q in qs), encoding="utf-8")
        files["dev"].write_text("".join(json.dumps(_row(q, f"dev{i}")) + "\n" for i, q in enumerate(dev)), encoding="utf-8")
        base = {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()}, "cache_dir": str(folder / ".hf_datasets")},
            "test_split": "test", "fewshot_split": "dev", "num_fewshot": min(k, len(shots)),
            "output_type": "multiple_choice", "description": header(subject), "doc_to_text": doc_to_text,
            "doc_to_target": "answer", "target_delimiter": " ", "fewshot_delimiter": "\n\n",
        }  # fmt: skip
        configs[LETTER_TASK].append({**base, "task": f"qlora_mmlu_{LETTER_TASK}_{subject}", "doc_to_choice": list(LETTERS),
                                     "fewshot_config": {"sampler": "first_n"}, "metric_list": [_metric("acc")]})  # fmt: skip
        # the choice texts are the continuations; the exemplars keep their answer letters
        configs[TEXT_TASK].append({**base, "task": f"qlora_mmlu_{TEXT_TASK}_{subject}", "doc_to_choice": "choices",
                                   "fewshot_config": {"sampler": "first_n", "doc_to_choice": list(LETTERS)},
                                   "metric_list": [_metric("acc"), _metric("acc_norm")]})  # fmt: skip
    return configs


def build_tasks(configs: Sequence[dict]) -> list:
    from lm_eval.api.task import ConfigurableTask

    tasks = []
    for cfg in configs:
        task = ConfigurableTask(config=cfg)
        task.set_config("num_fewshot", cfg["num_fewshot"])
        task.set_fewshot_seed(1234)  # first_n ignores it
        tasks.append(task)
    return tasks


def expected_prompts(questions: Sequence, pool: Mapping[str, Sequence] | None, k: int) -> dict[str, str]:
    """Our prompt for each question id, with the exemplars our evaluator puts in it."""
    return {qid: format_prompt(q, list(pool[q.subject])[:k] if k > 0 else []) for q, qid in zip(questions, question_ids(questions))}


def check_rendered_prompts(tasks: Sequence, prompts: Mapping[str, str]) -> int:
    """Renders lm_eval's context for every doc of `tasks` and asserts it equals our prompt, byte for byte.

    Returns:
        How many contexts were compared.

    Raises:
        AssertionError: naming the first differing character.
    """
    n = 0
    for task in tasks:
        for doc in task.test_docs():
            ctx = task.fewshot_context(doc, task.config.num_fewshot)
            _assert_same(ctx, prompts[doc["id"]], f"{task.config.task} {doc['id']}")
            n += 1
    return n


def _assert_same(got: str, want: str, where: str) -> None:
    if got != want:
        i = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise AssertionError(f"{where}: lm_eval's context differs from our prompt at char {i}: "
                             f"lm_eval {got[max(0, i - 40):i + 40]!r} vs ours {want[max(0, i - 40):i + 40]!r}")  # fmt: skip


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    """Wall and CPU seconds (this process, all its threads) since `start`: on a shared machine the CPU time is
    the steadier measure of the work done."""
    wall, cpu = _clock()
    return {"wall": wall - start[0], "cpu": cpu - start[1]}


def run_lm_eval(lm, tasks: Sequence) -> tuple[dict[str, dict], dict[str, float], dict[str, float]]:
    """lm_eval's `simple_evaluate` over `tasks` with per-sample logs.

    Returns:
        ({question id: logged sample}, seconds of simple_evaluate, seconds inside lm.loglikelihood), the
        seconds as {"wall", "cpu"}.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    inner = {"wall": 0.0, "cpu": 0.0}
    real = type(lm).loglikelihood.__get__(lm)

    def timed(requests, *a, **kw):
        start = _clock()
        out = real(requests, *a, **kw)
        for key, v in _since(start).items():
            inner[key] += v
        return out

    lm.loglikelihood = timed
    try:
        start = _clock()
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_defaults=False),
                                      bootstrap_iters=0, log_samples=True, verbosity="ERROR")  # fmt: skip
        outer = _since(start)
    finally:
        del lm.loglikelihood
    samples = {s["doc"]["id"]: s for per_task in res["samples"].values() for s in per_task}
    return samples, outer, inner


def run_ours(model, tokenizer, questions, pool, k, limit, seed, batch_size, max_length, choice_loglik):
    start = _clock()
    r = evaluate_mmlu(model, tokenizer, questions, pool, k=k, limit=limit, seed=seed, batch_size=batch_size,
                      max_length=max_length, choice_loglik=choice_loglik, rotations=False, letters=True, progress=False)  # fmt: skip
    return r, _since(start)


def _lls(sample: dict) -> list[float]:
    return [float(r[0]) for r in sample["filtered_resps"]]


def _margin(values: Sequence[float]) -> float:
    top = sorted(values, reverse=True)
    return top[0] - top[1]


def compare(questions, items, letter_samples, text_samples, prompts, lm, tokenizer) -> list[dict]:
    """One row per question: both evaluators' numbers, predictions and the prompt/token checks (the choice-text
    columns only with `text_samples`).

    Raises:
        AssertionError: a context lm_eval scored is not our prompt, or a continuation is not ours.
    """
    letter_ids = answer_token_ids(tokenizer)
    rows = []
    for q, item in zip(questions, items):
        ls = letter_samples[item.id]
        prompt = prompts[item.id]
        ours_ids = tokenizer(prompt).input_ids
        # every context lm_eval scored, byte for byte, and its token ids for each continuation
        for ctx, _ in ls["arguments"]:
            _assert_same(ctx, prompt, item.id)
        assert [c for _, c in ls["arguments"]] == [f" {x}" for x in LETTERS], ls["arguments"]
        lm_letter = _lls(ls)
        lm_letter_pred = LETTERS[first_max(lm_letter)]
        assert ls["acc"] == float(lm_letter_pred == item.answer), (ls["acc"], lm_letter_pred, item.answer)
        row = {
            "id": item.id, "subject": item.subject, "answer": item.answer, "shots": item.shots, "prompt_tokens": len(ours_ids),
            "prompt_equal": True,
            "letter_tokens_equal": all(lm._encode_pair(prompt, f" {x}") == (ours_ids, [i]) for x, i in zip(LETTERS, letter_ids)),
            "ours_letter_logprobs": list(item.letter_logprobs), "lm_eval_letter_loglik": lm_letter,
            "ours_raw_letter_pred": item.raw_letter_pred, "lm_eval_letter_pred": lm_letter_pred,
            "letter_agree": item.raw_letter_pred == lm_letter_pred,
            "letter_max_abs_diff": max(abs(a - b) for a, b in zip(item.letter_logprobs, lm_letter)),
            "ours_letter_margin": _margin(item.letter_logprobs), "lm_eval_letter_margin": _margin(lm_letter),
        }  # fmt: skip
        if text_samples is not None:
            ts = text_samples[item.id]
            for ctx, _ in ts["arguments"]:
                _assert_same(ctx, prompt, item.id)
            assert [c for _, c in ts["arguments"]] == [f" {c}" for c in q.choices], ts["arguments"]
            lm_text = _lls(ts)
            lm_choice_pred = LETTERS[first_max([s / n for s, n in zip(lm_text, item.choice_tokens)])]
            row.update({
                "choice_tokens_equal": list(item.choice_tokens) == [len(lm._encode_pair(prompt, f" {c}")[1]) for c in q.choices],
                "ours_choice_logprob_sums": list(item.choice_logprob_sums), "ours_choice_tokens": list(item.choice_tokens),
                "lm_eval_choice_loglik": lm_text, "ours_choice_pred": item.choice_pred, "lm_eval_choice_pred": lm_choice_pred,
                "choice_agree": item.choice_pred == lm_choice_pred,
                "choice_max_abs_diff": max(abs(a - b) for a, b in zip(item.choice_logprob_sums, lm_text)),
                # lm_eval's own rules on the choice texts: acc = argmax of the sums, acc_norm = per character
                "lm_eval_acc": ts["acc"], "lm_eval_acc_norm": ts["acc_norm"],
                "ours_sum_rule_correct": float(first_max(item.choice_logprob_sums) == item.answer_index),
                "ours_char_rule_correct": float(first_max([s / len(c) for s, c in zip(item.choice_logprob_sums, q.choices)])
                                                == item.answer_index),
            })  # fmt: skip
        rows.append(row)
    return rows


def summarise(rows: Sequence[dict], times: Mapping[str, float]) -> dict:
    n = len(rows)
    mean = lambda key: sum(float(r[key]) for r in rows) / n  # noqa: E731
    acc = lambda key: sum(r[key] == r["answer"] for r in rows) / n  # noqa: E731
    out = {
        "n": n, "prompts_equal": sum(r["prompt_equal"] for r in rows), "letter_tokens_equal": sum(r["letter_tokens_equal"] for r in rows),
        "longest_prompt_tokens": max(r["prompt_tokens"] for r in rows),
        "prompts_over_2048_tokens": sum(r["prompt_tokens"] > 2048 for r in rows),
        "letter_agreement": mean("letter_agree"), "letter_max_abs_diff": max(r["letter_max_abs_diff"] for r in rows),
        "ours_raw_letter_accuracy": acc("ours_raw_letter_pred"), "lm_eval_letter_accuracy": acc("lm_eval_letter_pred"),
        "seconds": dict(times),
        "seconds_per_question": {clock: {key: t[clock] / n for key, t in times.items()} for clock in ("wall", "cpu")},
    }  # fmt: skip
    if "choice_agree" in rows[0]:
        out.update({
            "choice_tokens_equal": sum(r["choice_tokens_equal"] for r in rows), "choice_agreement": mean("choice_agree"),
            "choice_max_abs_diff": max(r["choice_max_abs_diff"] for r in rows), "ours_choice_accuracy": acc("ours_choice_pred"),
            "lm_eval_acc_choice_texts": mean("lm_eval_acc"), "ours_sum_rule_accuracy": mean("ours_sum_rule_correct"),
            "lm_eval_acc_norm_choice_texts": mean("lm_eval_acc_norm"), "ours_char_rule_accuracy": mean("ours_char_rule_correct"),
        })  # fmt: skip
    return out


def check_lengths(tokenizer, prompts: Mapping[str, str], max_length: int) -> None:
    """Raises ValueError when a prompt is longer than `max_length` tokens.

    Note (truncation): past max_length our evaluator drops exemplars from the end (Hendrycks' evaluate.py), lm_eval
    keeps them all and cuts tokens from the left: the two would score different prompts.
    """
    lengths = {qid: len(tokenizer(p).input_ids) for qid, p in prompts.items()}
    too_long = sorted(qid for qid, n_tokens in lengths.items() if n_tokens > max_length)
    if too_long:
        raise ValueError(f"{len(too_long)} prompts are longer than max_length={max_length} tokens (e.g. {too_long[0]}, "
                         f"{lengths[too_long[0]]} tokens): the evaluators truncate differently; raise --max-length")  # fmt: skip


def evaluate_both(model, tokenizer, lm, questions_all, pool, k, n, seed, batch_size, max_length, folder: Path, *,
                  texts: bool = True) -> dict:  # fmt: skip
    """Both evaluators on the same `n` questions (seeded as our evaluator draws them) at `k` shots; with
    `texts`, also the choice-text rule (lm_eval: one more task, four continuations per question)."""
    questions = subsample(questions_all, n, seed)
    prompts = expected_prompts(questions, pool, k)
    check_lengths(tokenizer, prompts, max_length)
    configs = task_configs(folder, questions, pool, k)
    kinds = (LETTER_TASK, TEXT_TASK) if texts else (LETTER_TASK,)
    tasks = {kind: build_tasks(configs[kind]) for kind in kinds}
    rendered = sum(check_rendered_prompts(ts, prompts) for ts in tasks.values())
    times = {}
    ours, times["ours_letters"] = run_ours(model, tokenizer, questions_all, pool, k, n, seed, batch_size, max_length, False)
    letter_samples, times["lm_eval_letters"], times["lm_eval_letters_loglikelihood"] = run_lm_eval(lm, tasks[LETTER_TASK])
    text_samples = None
    if texts:
        letters_only = ours
        ours, times["ours_letters_and_choices"] = run_ours(model, tokenizer, questions_all, pool, k, n, seed, batch_size, max_length, True)
        text_samples, times["lm_eval_texts"], times["lm_eval_texts_loglikelihood"] = run_lm_eval(lm, tasks[TEXT_TASK])
        diff = max(abs(a - b) for x, y in zip(letters_only.items.items, ours.items.items) for a, b in zip(x.letter_logprobs, y.letter_logprobs))
        assert diff < 1e-5, f"our letter log-probs change with choice_loglik by {diff}"
    items = ours.items.items
    assert [it.id for it in items] == list(prompts), "our evaluator scored other questions than the subsample"
    assert [it.shots for it in items] == [min(k, len(pool[it.subject])) if k else 0 for it in items]
    rows = compare(questions, items, letter_samples, text_samples, prompts, lm, tokenizer)
    summary = summarise(rows, times)
    summary["rendered_contexts_checked"] = rendered
    summary["questions_changed_by_strip"] = sum(q.question != q.question.strip() for q in questions)
    return {"k": k, "texts": texts, "summary": summary, "rows": rows}


def _cpu() -> dict:
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Flags"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        info["Model name"] = platform.processor()
    return info


def _versions() -> dict:
    names = ("torch", "transformers", "datasets", "lm_eval", "sacrebleu", "tokenizers")
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in names}}


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.5f}" for v in values) + "]"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def render_markdown(report: dict) -> str:
    lines = [
        "# MMLU: our evaluator against lm-evaluation-harness, item by item (issue 22)", "",
        f"Generated by `{report['command']}` on {report['date']} ({report['model']}, fp32, CPU).", "",
        f"CPU: {report['cpu'].get('Model name', '?')}, {report['cpu'].get('CPU(s)', '?')} CPUs shared with other jobs "
        f"(load average at start {report['load_average']}), torch threads {report['torch_threads']}.  ",
        f"Flags: {report['cpu'].get('Flags', '?')}", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
        "Both evaluators score the same questions (our seeded subsample, `subsample(load_mmlu(), n, seed)`, "
        f"seed {report['seed']}), with the same exemplars (`load_fewshot_pool()`, the first k of the subject), the same "
        f"model object, batch size {report['batch_size']}, max length {report['max_length']}. lm_eval runs tasks defined "
        "over local JSON-lines files (see the benchmark's docstring); each context it scored is checked byte for byte "
        "against our `format_prompt` (the script stops at the first difference) and its token ids (`HFLM._encode_pair`) "
        "against ours.", "",
        "| k | n | prompts equal | tokens equal: letters / choice texts | letter agreement | max abs diff, letter log-prob "
        "| choice agreement | max abs diff, choice log-lik sum |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for run in report["runs"]:
        s = run["summary"]
        lines.append(f"| {run['k']} | {s['n']} | {s['prompts_equal']}/{s['n']} | {s['letter_tokens_equal']}/{s['n']} / "
                     f"{_num(s.get('choice_tokens_equal'), 'd')} | {_pct(s['letter_agreement'])} | {s['letter_max_abs_diff']:.2e} | "
                     f"{_pct(s.get('choice_agreement'))} | {_num(s.get('choice_max_abs_diff'), '.2e')} |")  # fmt: skip
    lines += ["", "Accuracy of each rule from each evaluator's numbers. Letter: argmax of the four letter log-probabilities "
              "(lm_eval's MMLU `acc`). Choice texts: ours is the mean log-probability per token; lm_eval's `acc` is the "
              "argmax of the summed log-likelihood and `acc_norm` of the log-likelihood per character, each beside the "
              "same rule computed from our numbers.", "",
              "| k | n | letter: ours | letter: lm_eval | choice per token: ours | sum: ours / lm_eval acc "
              "| per character: ours / lm_eval acc_norm |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run in report["runs"]:
        s = run["summary"]
        lines.append(f"| {run['k']} | {s['n']} | {_pct(s['ours_raw_letter_accuracy'])} | {_pct(s['lm_eval_letter_accuracy'])} "
                     f"| {_pct(s.get('ours_choice_accuracy'))} | {_pct(s.get('ours_sum_rule_accuracy'))} / "
                     f"{_pct(s.get('lm_eval_acc_choice_texts'))} | {_pct(s.get('ours_char_rule_accuracy'))} / "
                     f"{_pct(s.get('lm_eval_acc_norm_choice_texts'))} |")  # fmt: skip
    lines += ["", "Seconds per question, CPU time of the process (wall time in brackets; the machine is shared, so wall "
              "time depends on the other jobs, CPU time much less). Same process, same model object, warmed up. Ours: "
              "`evaluate_mmlu(..., rotations=False)`, letters only with `choice_loglik=False`. lm_eval: `simple_evaluate`, "
              "building its requests included; the part inside `HFLM.loglikelihood` is in the JSON.", "",
              "| k | n | letters: ours | letters: lm_eval | lm_eval / ours | letters + choice texts: ours (one run) "
              "| letters + choice texts: lm_eval (two tasks) | lm_eval / ours |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for run in report["runs"]:
        s, t, w = run["summary"], run["summary"]["seconds_per_question"]["cpu"], run["summary"]["seconds_per_question"]["wall"]
        cell = lambda d, key: f"{d[key]:.3f}"  # noqa: E731
        row = (f"| {run['k']} | {s['n']} | {cell(t, 'ours_letters')} ({cell(w, 'ours_letters')}) | {cell(t, 'lm_eval_letters')} "
               f"({cell(w, 'lm_eval_letters')}) | {t['lm_eval_letters'] / t['ours_letters']:.2f}x |")  # fmt: skip
        if "lm_eval_texts" in t:
            lm_t, lm_w = t["lm_eval_letters"] + t["lm_eval_texts"], w["lm_eval_letters"] + w["lm_eval_texts"]
            row += (f" {cell(t, 'ours_letters_and_choices')} ({cell(w, 'ours_letters_and_choices')}) | {lm_t:.3f} ({lm_w:.3f}) | "
                    f"{lm_t / t['ours_letters_and_choices']:.2f}x |")  # fmt: skip
        else:
            row += " – | – | – |"
        lines.append(row)
    lines += ["", "## Disagreements", ""]
    count = 0
    for run in report["runs"]:
        for r in run["rows"]:
            for rule, ours_key, lm_key, ours_pred, lm_pred in (
                ("letter", "ours_letter_logprobs", "lm_eval_letter_loglik", "ours_raw_letter_pred", "lm_eval_letter_pred"),
                ("choice", "ours_choice_logprob_sums", "lm_eval_choice_loglik", "ours_choice_pred", "lm_eval_choice_pred"),
            ):  # fmt: skip
                if ours_pred in r and r[ours_pred] != r[lm_pred]:
                    count += 1
                    lines.append(f"- k={run['k']} {r['id']} ({rule} rule): ours {r[ours_pred]} {_fmt(r[ours_key])}, "
                                 f"lm_eval {r[lm_pred]} {_fmt(r[lm_key])}; choice tokens {r.get('ours_choice_tokens')}; "
                                 f"letter tokens equal {r['letter_tokens_equal']}")  # fmt: skip
    if not count:
        lines.append("None: every prediction agrees.")
    near = [(run["k"], r) for run in report["runs"] for r in run["rows"] if min(r["ours_letter_margin"], r["lm_eval_letter_margin"]) < 1e-3]
    lines += ["", f"Closest calls (top-two letter margin below 1e-3 nats in either evaluator): {len(near)}"
              + "".join(f"; k={k} {r['id']}: ours {r['ours_letter_margin']:.2e}, lm_eval {r['lm_eval_letter_margin']:.2e}" for k, r in near)
              + "."]  # fmt: skip
    lines += ["", "## Notes", "",
              "- lm_eval's shipped `mmlu` task strips the question (`question.strip()`); ours does not. In these samples "
              + ", ".join(f"{run['summary']['questions_changed_by_strip']} of {run['summary']['n']} (k={run['k']})" for run in report["runs"])
              + " questions have leading or trailing whitespace, so their prompts would differ from the shipped task's; "
              "the task here keeps the text as written so that the prompts are equal.",
              "- Longest prompt: " + ", ".join(f"{run['summary']['longest_prompt_tokens']} tokens (k={run['k']})" for run in report["runs"])
              + "; longer than the pipeline's max_length of 2048: "
              + ", ".join(f"{run['summary']['prompts_over_2048_tokens']} (k={run['k']})" for run in report["runs"])
              + ". Past max_length our evaluator drops exemplars from the end (as Hendrycks' evaluate.py does) and lm_eval "
              "cuts tokens from the left, so the two then score different prompts; this check runs with a max_length that "
              "fits every prompt (the script refuses otherwise).",
              "- Per-item rows (both vectors, margins, predictions, checks): the JSON file beside this one."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(render_markdown(report), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="a causal LM folder (default: the embedded SmolLM2, materialised once)")
    ap.add_argument("--zero-shot", type=int, default=200, help="questions at k=0 (0: skip)")
    ap.add_argument("--five-shot", type=int, default=50, help="questions at k=5 (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--texts-shots", type=int, nargs="*", default=[0],
                    help="the k values at which the choice-text rule is also compared (lm_eval: 4 more sequences per question)")
    ap.add_argument("--threads", type=int, help="torch threads for both evaluators (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("reports/mmlu_lm_eval_agreement"))
    args = ap.parse_args(argv)

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora.data.mmlu import load_fewshot_pool, load_mmlu

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    model_dir = args.model_dir
    if model_dir is None:
        from qlora.data.gguf_model import materialise_smollm2

        model_dir = Path.home() / ".cache" / "qlora-pipeline" / "smollm2"
        if not (model_dir / "config.json").is_file():
            materialise_smollm2(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    with torch.no_grad():  # warm-up: the first forward pass pays one-off costs neither evaluator should carry
        model(torch.arange(64).unsqueeze(0))
    questions, pool = load_mmlu(), load_fewshot_pool()
    report = {
        "command": " ".join(["python", "benchmarks/mmlu_lm_eval_agreement.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M"), "model": model_dir.name, "cpu": _cpu(), "versions": _versions(),
        "torch_threads": torch.get_num_threads(), "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "seed": args.seed, "batch_size": args.batch_size, "max_length": args.max_length, "runs": [],
    }  # fmt: skip
    plan = [(k, n) for k, n in ((0, args.zero_shot), (5, args.five_shot)) if n > 0]
    for k, n in plan:  # before any model work
        check_lengths(tokenizer, expected_prompts(subsample(questions, n, args.seed), pool, k), args.max_length)
    with tempfile.TemporaryDirectory(prefix="mmlu_lm_eval_") as tmp:
        for k, n in plan:
            if n > 0:
                run = evaluate_both(model, tokenizer, lm, questions, pool, k, n, args.seed, args.batch_size, args.max_length,
                                    Path(tmp) / f"k{k}", texts=k in args.texts_shots)  # fmt: skip
                report["runs"].append(run)
                _write(args.out, report)  # after each run: a later failure keeps what is done
                s = run["summary"]
                print(f"k={k} n={s['n']}: letter agreement {_pct(s['letter_agreement'])} (max |diff| {s['letter_max_abs_diff']:.2e}), "
                      f"choice agreement {_pct(s.get('choice_agreement'))} (max |diff| {_num(s.get('choice_max_abs_diff'), '.2e')}); "
                      f"CPU s/question {json.dumps({key: round(v, 3) for key, v in s['seconds_per_question']['cpu'].items()})}", flush=True)  # fmt: skip
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
