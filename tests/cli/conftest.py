"""A tiny Llama with a real (offline-trained) tokenizer and chat template, saved as a model folder."""

import pytest

from tests.tiny_text import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(autouse=True)
def _cli_env(tmp_path, monkeypatch):
    """Each test: its own cache and MLflow store, outside the working directory."""
    monkeypatch.setenv("QLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
