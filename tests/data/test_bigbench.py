import collections
import io
import json
import tarfile

import pytest

from qlora.data.bigbench import extract_tasks, load_classification, load_natural_instructions

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _fixture_sdist(path):
    files = {
        "vitaminc_fact_verification/task.json": {"examples": [
            {"input": "Title: some evidence .\nClaim: a claim .", "target_scores": {"True": 0, "False": 0, "Neither": 1}},
            {"input": "T: x\nClaim: y", "target_scores": {"True": 1, "False": 0, "Neither": 0}}]},
        "multiemo/all_sentence_en/task.json": {"examples": [
            {"input": "Great hotel.", "target_scores": {"ambivalent": 0, "positive": 1, "negative": 0, "neutral": 0}}]},
        "multiemo/all_sentence_de/task.json": {"examples": []},
        "natural_instructions/task.json": {"description": "parent"},
        "natural_instructions/subtask002_b/task.json": {"task_prefix": "Definition: B. ", "examples": [
            {"input": "in b", "target": ["out b1", "out b2"]}]},
        "natural_instructions/subtask001_a/task.json": {"task_prefix": "Definition: A.", "examples": [
            {"input": " in a ", "target": ["out a"]}, {"input": "in a2", "target": "out a2"}]},
        "other_task/task.json": {"examples": []},
    }  # fmt: skip
    with tarfile.open(path, "w:gz") as tar:
        for rel, obj in files.items():
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(ROOT + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_only_wanted_files(tmp_path):
    sdist = _fixture_sdist(tmp_path / "bb.tar.gz")
    out = extract_tasks(sdist, tmp_path / "tasks")
    found = sorted(str(p.relative_to(out)) for p in out.rglob("task.json"))
    assert found == ["multiemo/all_sentence_en/task.json", "natural_instructions/subtask001_a/task.json",
                     "natural_instructions/subtask002_b/task.json", "natural_instructions/task.json",
                     "vitaminc_fact_verification/task.json"]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    with pytest.raises(FileNotFoundError, match="no_such_task"):
        extract_tasks(sdist, tmp_path / "tasks2", ["no_such_task"])
    assert not (tmp_path / "tasks2").exists()


@pytest.mark.parametrize("from_sdist", [False, True])
def test_loaders_on_fixture(tmp_path, from_sdist):
    sdist = _fixture_sdist(tmp_path / "bb.tar.gz")
    source = sdist if from_sdist else extract_tasks(sdist, tmp_path / "tasks")
    nli = load_classification(source, "vitaminc_fact_verification")
    assert nli.labels == ("True", "False", "Neither")
    assert [(e.text, e.text_pair, e.label) for e in nli.examples] == [("Title: some evidence .", "a claim .", 2), ("T: x", "y", 0)]
    senti = load_classification(source, "multiemo/all_sentence_en")
    assert [(e.text, e.label) for e in senti.examples] == [("Great hotel.", 0)]
    ni = load_natural_instructions(source)
    assert [(e.subtask, e.input, e.targets) for e in ni] == [
        ("subtask001_a", "in a", ("out a",)), ("subtask001_a", "in a2", ("out a2",)),
        ("subtask002_b", "in b", ("out b1", "out b2"))]  # fmt: skip
    assert ni[0].prompt == "Definition: A.\n\nin a" and ni[2].response == "out b1"


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown classification task 'sst2'"):
        load_classification(tmp_path, "sst2")
    with pytest.raises(FileNotFoundError):
        load_classification(tmp_path / "missing", "vitaminc_fact_verification")


@pytest.mark.slow
def test_real_task_sizes(bigbench_tasks):
    nli = load_classification(bigbench_tasks, "vitaminc_fact_verification")
    assert len(nli.examples) == 54668
    assert collections.Counter(e.label for e in nli.examples) == {0: 27242, 1: 20169, 2: 7257}
    senti = load_classification(bigbench_tasks, "multiemo/all_sentence_en")
    assert len(senti.examples) == 57466
    assert collections.Counter(e.label for e in senti.examples) == {0: 15324, 1: 21156, 2: 14101, 3: 6885}
    ni = load_natural_instructions(bigbench_tasks)
    assert len(ni) == 193250 and len({e.subtask for e in ni}) == 61
    assert all(e.instruction.startswith("Definition") for e in ni[:: 1000])
