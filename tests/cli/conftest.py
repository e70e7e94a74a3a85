"""A tiny Llama with a real (offline-trained) tokenizer and chat template, saved as a model folder."""

import pytest

from tests.tiny_text import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _cli_env(tmp_path, monkeypatch):
    """Each test: its own cache and MLflow store, outside the working directory."""
    monkeypatch.setenv("QLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
