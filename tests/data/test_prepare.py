"""The held-out instruction test set: spread over the held-out subtasks, prompts within the budget."""

from types import SimpleNamespace

import pytest

from qlora.data.prepare import _interleaved_test


class WordTokenizer:
    """prompt_ids falls back to plain tokenization without a chat template: one id per word."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=list(range(len(text.split()))))


def _rec(task, i, words=3):
    return SimpleNamespace(subtask=task, prompt=" ".join(["w"] * words) + f" {i}", targets=(f"t{i}",))


def test_interleaved_round_robin_and_budget():
    pool = [_rec("a", i) for i in range(10)] + [_rec("b", i, words=50) for i in range(3)] + [_rec("b", 99)] + [_rec("c", i) for i in range(2)]
    test = _interleaved_test(pool, ["a", "b", "c"], WordTokenizer(), count=7, max_prompt_tokens=10)
    assert [t["subtask"] for t in test] == ["a", "b", "c", "a", "c", "a", "a"]
    assert test[1]["prompt"].endswith(" 99") and test[1]["references"] == ["t99"]  # the long "b" prompts are skipped
    assert len(_interleaved_test(pool, ["a", "b", "c"], WordTokenizer(), count=100, max_prompt_tokens=10)) == 10 + 1 + 2


def test_interleaved_names_an_empty_subtask():
    pool = [_rec("a", 0), _rec("b", 0, words=50)]
    with pytest.raises(ValueError, match=r"\['b'\].*10 tokens"):
        _interleaved_test(pool, ["a", "b"], WordTokenizer(), count=4, max_prompt_tokens=10)


# --- the whole preparation on the fixture assets ---------------------------------------------------------

import json  # noqa: E402
import random  # noqa: E402

import torch  # noqa: E402

from qlora.config import DataConfig  # noqa: E402
from qlora.data.examples import InstructionExample  # noqa: E402
from qlora.data.prepare import held_out_families, ngram_overlap, prepare_datasets  # noqa: E402
from qlora.data.tokenization import TokenizedDataset, canonical_safetensors  # noqa: E402


def _ex(task, family, i=0):
    return InstructionExample(task, "", f"input {i}", (f"t{i}",), family)


def test_held_out_families_keep_families_whole():
    records = [_ex(t, f) for t, f in [("a1", "a"), ("a2", "a"), ("b", "b"), ("c", "c"), ("d", "d")]]
    for seed in range(20):
        held, excluded = held_out_families(records, 2, random.Random(seed))
        assert len(held) >= 2 and set(held) == excluded
        assert ("a1" in held) == ("a2" in held)  # a family is held out whole
        assert len(held) < 5  # one family always trains
    with pytest.raises(ValueError, match="instruction_heldout_tasks=5: only 3 usable tasks can be held out"):
        held_out_families(records[:4], 5, random.Random(0))
    # a task that cannot be evaluated does not count, but its family still trains on none of it
    for seed in range(20):
        held, excluded = held_out_families(records, 2, random.Random(seed), usable=lambda recs: recs[0].subtask != "a2")
        assert "a2" not in held and len(held) >= 2 and set(held) <= excluded and ("a1" in excluded) == ("a2" in excluded)


def test_ngram_overlap():
    train = ["one two three four five six seven eight nine"]
    assert ngram_overlap(train, ["zero one two three four five six seven eight", "one two three"], n=8) == 0.5
    assert ngram_overlap(train, [], n=8) == 0.0


def test_canonical_safetensors_bytes_do_not_depend_on_metadata_order():
    from safetensors.torch import load, save

    tensors = {"b": torch.arange(3), "a": torch.ones(2, 2)}
    one = canonical_safetensors(save(tensors, metadata={"format": "x", "kind": "y"}))
    two = canonical_safetensors(save(dict(reversed(tensors.items())), metadata={"kind": "y", "format": "x"}))
    assert one == two
    header_len = int.from_bytes(one[:8], "little")
    assert header_len % 8 == 0 and one[8 : 8 + header_len].decode().startswith('{"__metadata__":{"format":"x","kind":"y"}')
    back = load(one)
    assert torch.equal(back["a"], tensors["a"]) and torch.equal(back["b"], tensors["b"])


def _tiny_data(**overrides) -> DataConfig:
    return DataConfig(**{"classification_train": 4, "classification_test": 2, "instruction_train": 12, "instruction_heldout_tasks": 1,
                         "instruction_test": 6, "max_length": 64, "instruction_test_max_prompt_tokens": 128, "instruction_val_tasks": 1,
                         "instruction_val": 4, **overrides})  # fmt: skip


@pytest.fixture
def fixture_assets(tmp_path):
    from qlora.data.assets import EVALS_WHEEL, VADER_SDIST
    from tests.data.conftest import write_evals_wheel, write_vader_sdist

    folder = tmp_path / "assets"
    folder.mkdir()
    write_evals_wheel(folder / EVALS_WHEEL.filename)
    write_vader_sdist(folder / VADER_SDIST.filename)
    return folder


def test_prepare_on_fixture_assets(tmp_path, fixture_assets):
    from tests.tiny_text import tiny_tokenizer

    tok, enc = tiny_tokenizer(), tiny_tokenizer(chat_template=False)
    summary = prepare_datasets(_tiny_data(), tok, enc, fixture_assets, tmp_path / "out", verify_assets=False)
    out = tmp_path / "out"
    assert json.loads((out / "cls_labels.json").read_text()) == {"task": "vader_binary", "labels": ["negative", "positive"]}
    assert len(TokenizedDataset.load(out / "cls_train.safetensors")) == 4 and len(TokenizedDataset.load(out / "cls_test.safetensors")) == 2
    test = json.loads((out / "instruct_test.json").read_text())
    held = test["held_out_subtasks"]
    assert held in (["capital_cities"], ["count_words"], ["colour-mixing", "colour_names"])  # a whole family
    assert {e["subtask"] for e in test["examples"]} == set(held)
    sidecar = json.loads((out / "instruct_heldout.json").read_text())
    tasks = sidecar["tasks"]
    assert len(tasks) == len(TokenizedDataset.load(out / "instruct_heldout.safetensors")) == 6 and set(tasks) == set(held)
    assert sidecar["template_tail"] == [2] * 6  # the tiny chat template ends a turn with "<|im_end|>" and a newline
    val = json.loads((out / "instruct_val.json").read_text())["tasks"]
    assert len(val) == len(TokenizedDataset.load(out / "instruct_val.safetensors")) == 4 and not set(val) & set(held)
    train_tasks = 4 - len(held) - len(set(val))
    assert summary["instruct_train"] == 12 and summary["instruction_tasks"] == 4 and summary["train_tasks"] == train_tasks >= 1
    assert summary["instruct_val"] == 4 and summary["val_tasks"] == len(set(val))
    assert 0.0 <= summary["heldout_8gram_overlap"] <= 1.0


def test_prepare_is_byte_identical_when_repeated(tmp_path, fixture_assets):
    from tests.tiny_text import tiny_tokenizer

    tok, enc = tiny_tokenizer(), tiny_tokenizer(chat_template=False)
    for name in ("one", "two"):
        prepare_datasets(_tiny_data(), tok, enc, fixture_assets, tmp_path / name, verify_assets=False)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(files) == 10
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_unknown_classification_task(tmp_path, fixture_assets):
    from tests.tiny_text import tiny_tokenizer

    with pytest.raises(ValueError, match="data.classification_task='multiemo/all_sentence_en': expected one of vader_binary, vader_3way"):
        prepare_datasets(_tiny_data(classification_task="multiemo/all_sentence_en"), tiny_tokenizer(), tiny_tokenizer(),
                         fixture_assets, tmp_path / "out", verify_assets=False)  # fmt: skip


def test_hub_options_through_an_injected_loader(tmp_path, fixture_assets):
    """glue/sst2 and Super-NaturalInstructions read through `datasets.load_dataset` (a stand-in here)."""
    from tests.tiny_text import tiny_tokenizer

    def loader(path, *args, split):
        if path == "nyu-mll/glue":
            return [{"sentence": f"a sentence {i}", "label": i % 2} for i in range(8)] + [{"sentence": "hidden", "label": -1}]
        assert path == "Muennighoff/natural-instructions" and split == "train"
        return [{"task_name": f"task00{t}_src{t}_x", "definition": f"Do task {t} on the cat.", "inputs": f"the input {i} of the cat",
                 "targets": f"out {i}", "id": str(i)} for t in range(3) for i in range(10)]  # fmt: skip

    data = _tiny_data(classification_task="glue/sst2", instructions="super_natural_instructions", instruction_train=6, instruction_test=4)
    summary = prepare_datasets(data, tiny_tokenizer(), tiny_tokenizer(), fixture_assets, tmp_path / "out", hub_loader=loader,
                               verify_assets=False)  # fmt: skip
    assert json.loads((tmp_path / "out" / "cls_labels.json").read_text())["task"] == "glue/sst2"
    assert summary["instruction_tasks"] == 3 and summary["held_out_subtasks"] == 1 and summary["instruct_train"] == 6


class BosTokenizer:
    """One id per word; with special tokens, a <bos> (id 1) first — as Gemma's tokenizer does."""

    def __call__(self, text, add_special_tokens=True):
        ids = [10 + len(w) for w in text.split()]
        return SimpleNamespace(input_ids=([1] if add_special_tokens else []) + ids)


def test_perplexity_windows_start_with_the_tokenizers_bos():
    from qlora.data.prepared import leading_special_ids, perplexity_windows

    assert leading_special_ids(BosTokenizer()) == [1] and leading_special_ids(WordTokenizer()) == []
    texts = [" ".join("x" * (i % 5 + 1) for i in range(30))]
    w = perplexity_windows(BosTokenizer(), texts, window=8, count=3)
    assert w.shape == (3, 8) and w[:, 0].tolist() == [1, 1, 1]  # <bos> is context, never a target
    text_ids = [10 + (i % 5 + 1) for i in range(30)]
    assert w[:, 1:].flatten().tolist() == text_ids[:21]  # 7 text tokens per window, consecutive
    plain = perplexity_windows(WordTokenizer(), ["a b c d e f g h"] * 3, window=8, count=3)
    assert plain.shape == (3, 8)  # no special tokens: whole windows of text, as before
    with pytest.raises(ValueError, match="fewer than data.perplexity_windows=9"):
        perplexity_windows(BosTokenizer(), texts, window=8, count=9)


def test_round_robin_spreads_any_prefix_over_the_tasks():
    from qlora.data.prepare import _round_robin

    pool = [_ex("a", "a", i) for i in range(5)] + [_ex("b", "b", i) for i in range(2)] + [_ex("c", "c", 0)]
    order = [(r.subtask, r.input) for r in _round_robin(pool, ["c", "a", "b"])]
    assert order[:5] == [("c", "input 0"), ("a", "input 0"), ("b", "input 0"), ("a", "input 1"), ("b", "input 1")]
    assert len(order) == 8 and order[-1] == ("a", "input 4")
