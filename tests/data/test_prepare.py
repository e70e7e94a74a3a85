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
