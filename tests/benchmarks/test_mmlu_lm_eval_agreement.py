"""benchmarks/mmlu_lm_eval_agreement.py on a tiny model: lm-evaluation-harness and our MMLU evaluator score the
same prompts, byte for byte, with the same token ids, and agree on every prediction."""

import importlib.util
import sys
from pathlib import Path

import pytest

from qlora.data.mmlu import MMLUQuestion, load_fewshot_pool, load_mmlu
from qlora.eval.mmlu import format_prompt
from tests.peers import peer
from tests.tiny_text import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("mmlu_lm_eval_agreement", ROOT / "benchmarks" / "mmlu_lm_eval_agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    peer("lm_eval.models.huggingface")  # lm_eval is an asset; its imports need the `peers` extra (sacrebleu)
    return _load_benchmark()


@pytest.fixture(scope="module")
def tiny():
    from lm_eval.models.huggingface import HFLM

    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    return model, tokenizer, HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=2048)


@pytest.fixture(scope="module")
def mmlu():
    return load_mmlu(), load_fewshot_pool()


@pytest.mark.slow
@pytest.mark.parametrize("k, n", [(0, 6), (2, 4)])
def test_lm_eval_and_ours_agree_item_by_item(bench, tiny, mmlu, tmp_path, k, n):
    model, tokenizer, lm = tiny
    questions, pool = mmlu
    run = bench.evaluate_both(model, tokenizer, lm, questions, pool, k, n, 3, 3, 2048, tmp_path, texts=True)
    s, rows = run["summary"], run["rows"]
    assert s["n"] == n == len(rows) and s["rendered_contexts_checked"] == 2 * n  # both tasks, every doc
    assert [r["shots"] for r in rows] == [k] * n
    assert s["prompts_equal"] == s["letter_tokens_equal"] == s["choice_tokens_equal"] == n
    # the same numbers up to batching (ours left-pads with a mask, lm_eval right-pads), so the same predictions
    assert s["letter_max_abs_diff"] < 1e-5 and s["choice_max_abs_diff"] < 1e-4
    assert min(min(r["ours_letter_margin"], r["lm_eval_letter_margin"]) for r in rows) > 1e-5  # no near-tie decides
    assert s["letter_agreement"] == s["choice_agreement"] == 1.0
    # lm_eval's own metrics on the choice texts equal the same rules computed from our sums
    assert s["lm_eval_acc_choice_texts"] == s["ours_sum_rule_accuracy"]
    assert s["lm_eval_acc_norm_choice_texts"] == s["ours_char_rule_accuracy"]
    assert set(s["seconds_per_question"]) == {"wall", "cpu"}
    assert all(v > 0 for clock in ("wall", "cpu") for v in s["seconds_per_question"][clock].values())
    assert set(s["seconds_per_question"]["cpu"]) == {"ours_letters", "lm_eval_letters", "lm_eval_letters_loglikelihood",
                                              "ours_letters_and_choices", "lm_eval_texts", "lm_eval_texts_loglikelihood"}  # fmt: skip
    md = bench.render_markdown({"command": "c", "date": "d", "model": "tiny", "cpu": {}, "versions": {}, "torch_threads": 1,
                                "load_average": "0", "seed": 3, "batch_size": 3, "max_length": 2048, "runs": [run]})  # fmt: skip
    assert f"| {k} | {n} | {n}/{n} | {n}/{n} / {n} | 100.0% |" in md and "None: every prediction agrees." in md


def test_a_prompt_that_differs_by_one_byte_fails_the_check(bench, tmp_path):
    """lm_eval's shipped MMLU template strips the question; ours keeps a trailing space: the check must see it."""
    q = MMLUQuestion("Which is blue? ", ("red", "sky", "grass", "soil"), 1, "high_school_biology")
    pool = {"high_school_biology": [MMLUQuestion("Pick A.", ("a", "b", "c", "d"), 0, "high_school_biology")]}
    prompts = bench.expected_prompts([q], pool, 1)
    assert list(prompts.values()) == [format_prompt(q, pool["high_school_biology"])]
    same = bench.build_tasks(bench.task_configs(tmp_path / "same", [q], pool, 1)[bench.LETTER_TASK])
    assert bench.check_rendered_prompts(same, prompts) == 1
    shipped = bench.DOC_TO_TEXT.replace("{{question}}", "{{question.strip()}}")
    stripped = bench.build_tasks(bench.task_configs(tmp_path / "strip", [q], pool, 1, doc_to_text=shipped)[bench.LETTER_TASK])
    at = len(prompts[q_id := next(iter(prompts))].split("Which is blue?")[0]) + len("Which is blue?")
    assert at == 140
    with pytest.raises(AssertionError) as e:
        bench.check_rendered_prompts(stripped, prompts)
    message = str(e.value)
    assert f"{q_id}: lm_eval's context differs from our prompt at char 140:" in message
    assert repr("Which is blue?\nA. red")[1:-1] in message and repr("Which is blue? \nA. red")[1:-1] in message


def test_prompts_longer_than_max_length_are_refused(bench):
    """Past max_length the evaluators truncate differently (ours drops exemplars, lm_eval cuts the left)."""
    tokenizer = tiny_tokenizer()
    prompts = {"short": "Answer: A", "long": "the cat sat on the mat. " * 20}
    n_long = len(tokenizer(prompts["long"]).input_ids)
    bench.check_lengths(tokenizer, prompts, n_long)
    with pytest.raises(ValueError, match=rf"^1 prompts are longer than max_length={n_long - 1} tokens \(e\.g\. long, {n_long} tokens\)"):
        bench.check_lengths(tokenizer, prompts, n_long - 1)
