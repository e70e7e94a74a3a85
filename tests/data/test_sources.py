"""`qlora.data.sources.materialise` of a PRETRAINED model that is not there: one line, nothing written."""

import pytest

from qlora.config import ModelConfig, ModelSource
from qlora.data.sources import looks_like_a_path, materialise


@pytest.mark.parametrize("text, local", [("./m", True), ("../m", True), ("/abs/m", True), ("~/m", True), ("a/b/c", True),
                                         ("org/name", False), ("name", False)])  # fmt: skip
def test_which_references_are_folders(text, local):
    assert looks_like_a_path(text) is local


def test_a_folder_below_an_existing_one_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert looks_like_a_path("models/mine") and not looks_like_a_path("org/mine")


def test_a_missing_folder_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"^\./no/such: no such model folder \({tmp_path}/no/such does not exist\)$"):
        materialise(ModelConfig("m", ModelSource.PRETRAINED, path="./no/such"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_hub_id_not_available_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        materialise(ModelConfig("m", ModelSource.PRETRAINED, path="no-such-org/no-such-model"), tmp_path / "out")
    message = str(error.value)
    assert message.startswith("no-such-org/no-such-model: neither a model folder here nor a hub id available (") and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []
