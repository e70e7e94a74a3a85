import collections

import pytest

from qlora.data.evals_registry import is_english, load_evals_tasks, load_sarcasm, task_family


def test_rules_on_fixture(evals_wheel):
    records = load_evals_tasks(evals_wheel)
    counts = collections.Counter(r.subtask for r in records)
    # theory_of_mind: listed in LICENSE.md; tiny_task: 10 < 50 records; francais: not English
    assert counts == {"capital_cities": 60, "colour-mixing": 60, "colour_names": 60, "count_words": 60}
    assert [r.subtask for r in records] == sorted(r.subtask for r in records)  # grouped by task, file order within
    first = records[0]
    assert (first.subtask, first.instruction, first.input, first.targets) == (
        "capital_cities", "Answer with the capital city of the country.", "What is the capital of the country in question 0?", ("Paris 0",))
    assert records[1].targets == ("Paris 1", "other")  # a list of ideals: every item a reference, the first trains
    assert records[1].response == "Paris 1"
    count = [r for r in records if r.subtask == "count_words"]
    assert count[0].instruction == "" and count[0].prompt == count[0].input  # no system message: the input alone
    assert {r.family for r in records if r.subtask.startswith("colour")} == {"colour"}


def test_family_and_language_rules():
    assert task_family("poker_hand_ranks") == task_family("poker-analysis") == "poker"
    assert task_family("GOL") == "gol" and task_family("rot13") == "rot13"
    assert is_english(["The cat sat on the mat and it is a good cat."])
    assert not is_english(["Où est la bibliothèque ? Je ne sais pas où elle est."])
    assert not is_english(["x1 y2 z3 q4 w5"])  # ASCII but no English function words
    assert not is_english([""])


def test_errors(tmp_path, evals_wheel):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_evals_tasks(tmp_path / "missing.whl")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.whl", "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(ValueError, match="LICENSE.md: not the pinned evals wheel"):
        load_evals_tasks(tmp_path / "other.whl")


def test_sarcasm_on_fixture(evals_wheel):
    data = load_sarcasm(evals_wheel)
    assert data.labels == ("not sarcastic", "sarcastic")
    assert [(e.text, e.label) for e in data.examples[:3]] == [("headline 0", 0), ("headline 1", 1), ("headline 2", 0)]


@pytest.mark.slow
def test_real_wheel(real_assets):
    """What the rules keep from the pinned wheel (a change here changes the pipeline's data: say so in reports)."""
    from qlora.data.assets import EVALS_WHEEL, asset_path

    wheel = asset_path(EVALS_WHEEL, real_assets)
    records = load_evals_tasks(wheel)
    tasks = collections.Counter(r.subtask for r in records)
    assert (len(records), len(tasks), len({r.family for r in records})) == (80754, 152, 143)
    assert max(tasks.values()) == 2000 and min(tasks.values()) >= 50
    assert not {"theory_of_mind", "steganography", "text_compression", "sandbagging", "schelling_point"} & set(tasks)
    assert "rot13" in tasks and "spanish-lexicon" in tasks and "ukraine_gec" not in tasks
    sarcasm = load_sarcasm(wheel)
    assert collections.Counter(e.label for e in sarcasm.examples) == {0: 14984, 1: 13630}
