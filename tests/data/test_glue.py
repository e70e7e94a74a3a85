import pytest

from qlora.data.glue import load_glue


def fake_loader(path, task, split):
    assert (path, task, split) == ("nyu-mll/glue", "rte", "validation")
    return [{"sentence1": "a", "sentence2": "b", "label": 1}, {"sentence1": "c", "sentence2": "d", "label": -1}]


def test_glue_rows_become_classification_examples():
    data = load_glue("rte", loader=fake_loader)
    assert data.task == "glue/rte" and data.labels == ("entailment", "not_entailment")
    assert [(e.text, e.text_pair, e.label) for e in data.examples] == [("a", "b", 1)]  # hidden labels (-1) dropped
    with pytest.raises(ValueError, match="unknown GLUE task 'sst5'"):
        load_glue("sst5", loader=fake_loader)
