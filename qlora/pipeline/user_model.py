"""A model the user names, as a local folder: a folder as it is, a hub id through the Hugging Face cache,
an embedded model (conf/model options) materialised once into the user's cache.

The `qlora` command line takes the same `models.<key>` configs as the pipeline (conf/model), plus any
folder or hub id (`ModelSource.PRETRAINED`), and needs a folder to read: this is where it gets one.
"""

from __future__ import annotations

from pathlib import Path

from qlora.config import ModelConfig, ModelSource


def model_folder(model: ModelConfig, cache_dir: str | Path) -> Path:
    """The folder holding `model` (config.json, weights, tokenizer files).

    Args:
        model: a conf/model config; PRETRAINED: `model.path` is a folder, an embedded model's name or a hub id.
        cache_dir: where embedded models are materialised (once: a later call reuses the folder).

    Raises:
        FileNotFoundError: the folder or hub id is not available (offline, or no such id).
    """
    from qlora.data.embedded import embedded_folder, model_dir

    if model.source is ModelSource.PRETRAINED:
        folder = model_dir(model.path, cache_dir=cache_dir)
        if not (folder / "config.json").is_file():
            hint = " (a PEFT adapter: pass it as --adapter and its base as the model)" if (folder / "adapter_config.json").is_file() else ""
            raise FileNotFoundError(f"{model.path}: no config.json (expected a transformers model folder){hint}")
        return folder
    return embedded_folder(model, cache_dir)


def model_inputs(model: ModelConfig, cache_dir: str | Path) -> list[tuple[str, Path]]:
    """The local folders a command reads for `model` (a folder the user named, or an embedded model's
    materialised folder), for `qlora.pipeline.outputs`; hub ids are not local."""
    if model.source is ModelSource.PRETRAINED:
        return [("model folder", Path(model.path))]
    return [("embedded model's folder", Path(cache_dir) / "models" / model.source.value)]


def model_params(model: ModelConfig) -> dict[str, str]:
    """The model's MLflow params: its name, and where it came from (a folder or hub id, or the embedded source)."""
    return {"model": model.name, "model.source": model.source.name, "model.path": model.path or model.source.value}
