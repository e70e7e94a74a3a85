import collections
import json

import pytest

from qlora.data.mmlu import MMLUQuestion, load_fewshot_pool, load_mmlu, raw_fewshot_samples


@pytest.fixture(scope="module")
def mmlu():
    return load_mmlu()


def test_mmlu_counts(mmlu):
    assert len(mmlu) == 14042
    subjects = collections.Counter(q.subject for q in mmlu)
    assert len(subjects) == 57
    assert subjects["professional_law"] == 1534 and subjects["high_school_biology"] == 310
    assert all(q.question != "question" for q in mmlu)  # the stray header rows are gone
    assert all(0 <= q.answer < 4 and len(q.choices) == 4 for q in mmlu)
    shares = collections.Counter(q.answer for q in mmlu)
    assert all(0.2 < shares[i] / len(mmlu) < 0.3 for i in range(4))


def test_mmlu_first_record(mmlu):
    q = mmlu[0]
    assert q.subject == "moral_scenarios" and q.answer_letter == "D"
    assert q.choices == ("Wrong, Wrong", "Wrong, Not wrong", "Not wrong, Wrong", "Not wrong, Not wrong")


def test_mmlu_rejects_bad_answer(tmp_path):
    row = {"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "topic": "virology"}
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps({**row, "correct_answer": a}) for a in ["B", "answer", "E"]))
    with pytest.raises(ValueError, match="'E'"):
        load_mmlu(path)
    path.write_text("\n".join(json.dumps({**row, "correct_answer": a}) for a in ["B", "answer"]))
    assert load_mmlu(path) == [MMLUQuestion("q", ("a", "b", "c", "d"), 1, "virology")]


def test_fewshot_pool_counts(mmlu):
    raw = raw_fewshot_samples()
    assert sum(map(len, raw.values())) == 282 and len(raw) == 57
    pool = load_fewshot_pool()
    assert sum(map(len, pool.values())) == 281  # college_chemistry's five-choice (A-E) exemplar dropped
    assert set(pool) == {q.subject for q in mmlu}
    assert len(pool["college_chemistry"]) == 3 and len(pool["formal_logic"]) == 4


def test_fewshot_parsing_both_layouts():
    pool = load_fewshot_pool()
    # choices on one line: "(A) True, True (B) False, False ..."
    q = pool["abstract_algebra"][0]
    assert q.choices == ("True, True", "False, False", "True, False", "False, True") and q.answer_letter == "C"
    assert q.question.startswith("Statement 1 | Every element of a group generates")
    # choices on separate lines
    q = next(q for q in pool["high_school_computer_science"] if "[::-1]" in q.question)
    assert q.question == 'What is the output of "abc"[::-1] in Python 3?'
    assert q.choices == ("Error", "abc", "cba", "c") and q.answer_letter == "C"
