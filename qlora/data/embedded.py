"""The embedded models by name: `qlora.model_dir("smollm2")` and `qlora.from_pretrained("smollm2")` work
offline, wherever a model folder or hub id is accepted.

The names are those of the conf/model options whose source is an embedded package (a test keeps the two
in step). An embedded model is materialised once into `<cache_dir>/models/<name>` (SmolLM2 ~30 s, the
GGUF-joined ones ~90 s) and read from there afterwards; the command line uses the same folders. A name
that is neither a folder nor an embedded model is tried as a hub id; a miss names the embedded choices,
and a path that cannot be a hub id (`../models/x`, `/abs/x`) is reported as a missing folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from qlora.config import ModelConfig, ModelKind, ModelSource

# name -> the conf/model option of the same name (name, source, kind)
EMBEDDED_MODELS: dict[str, ModelConfig] = {
    "smollm2": ModelConfig("SmolLM2-135M-Instruct", ModelSource.SMOLLM2, ModelKind.CAUSAL_LM),
    "gemma3_270m": ModelConfig("Gemma-3-270M", ModelSource.GEMMA3_270M, ModelKind.CAUSAL_LM),
    "qwen25_coder_05b": ModelConfig("Qwen2.5-Coder-0.5B-Instruct", ModelSource.QWEN25_CODER_05B, ModelKind.CAUSAL_LM),
    "minilm": ModelConfig("all-MiniLM-L6-v2", ModelSource.MINILM, ModelKind.SEQ_CLS),
}


def default_cache_dir() -> Path:
    """Where embedded models are materialised unless told: ~/.cache/qlora-pipeline (the command line's
    default too; it honours $QLORA_CACHE, which the library does not read)."""
    return Path.home() / ".cache" / "qlora-pipeline"


def embedded_folder(model: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """The materialised folder of an embedded model (made on first use).

    Raises:
        FileNotFoundError: the model's package is not installed (the message names it).
    """
    from qlora.data.sources import materialise

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / "models" / model.source.value
    if (folder / "config.json").is_file():
        return folder
    return materialise(model, folder, gguf_cache_dir=cache / "gguf")


def suggest(name: str) -> str:
    """"; did you mean smollm2?" for a near miss of an embedded name, else ""."""
    close = difflib.get_close_matches(name.lower(), list(EMBEDDED_MODELS), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def model_dir(path_or_name: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """The local folder of a model: a folder as it is, an embedded model by name (materialised once into
    `cache_dir`), a hub id through the Hugging Face cache (downloads only when online).

    Args:
        path_or_name: a model folder, an embedded model's name (`EMBEDDED_MODELS`: smollm2, ...), or a hub id.
        cache_dir: where embedded models are materialised; None: `default_cache_dir()`.

    Raises:
        FileNotFoundError: a path that does not exist, or a hub id not available here (names the
            embedded models, which need no hub).
    """
    from qlora.models.pretrained import could_be_hub_id, resolve_model_dir

    text = str(path_or_name)
    if Path(text).is_dir():
        return Path(text)
    if text in EMBEDDED_MODELS:
        return embedded_folder(EMBEDDED_MODELS[text], cache_dir)
    choices = f"the embedded models load offline by name: {', '.join(EMBEDDED_MODELS)}"
    if not could_be_hub_id(text) or Path(text).exists():
        raise FileNotFoundError(f"{text}: no such model folder{suggest(text)}")
    try:
        return resolve_model_dir(text)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}{suggest(text) or f'; {choices}'}") from None


def from_pretrained(path_or_hub_id: str | Path, *, cache_dir: str | Path | None = None, **kwargs):
    """`qlora.models.pretrained.from_pretrained` (see it for the arguments) that also takes an embedded
    model's name: `qlora.from_pretrained("smollm2", quant=...)`.

    Args:
        path_or_hub_id: a model folder, an embedded model's name or a hub id (`model_dir`).
        cache_dir: where embedded models are materialised; None: `default_cache_dir()`.
    """
    from qlora.models.pretrained import from_pretrained as load

    return load(model_dir(path_or_hub_id, cache_dir=cache_dir), **kwargs)
