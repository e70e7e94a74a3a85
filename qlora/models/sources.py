"""Materialise a base model (embedded package, hub id or local folder) as a plain safetensors folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qlora.config import ModelConfig, ModelKind, ModelSource


def materialise(config: ModelConfig, out_dir: str | Path) -> Path:
    """Writes `out_dir` (config.json, model.safetensors, tokenizer files) atomically; replaces it.

    SMOLLM2 converts the package's GGUF (~30 s); MINILM copies the package's folder; PRETRAINED loads a
    hub id or folder with transformers (hub access needed for ids) and saves it.

    Raises:
        ValueError: a source this function cannot materialise (TINY_LLAMA has no tokenizer).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if config.source is ModelSource.SMOLLM2:
        from qlora.data.gguf_model import materialise_smollm2

        return materialise_smollm2(out_dir, overwrite=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if config.source is ModelSource.MINILM:
            from qlora.data.offline import minilm_dir

            shutil.rmtree(tmp)
            shutil.copytree(minilm_dir(), tmp)
        elif config.source is ModelSource.PRETRAINED:
            from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

            auto = AutoModelForCausalLM if config.kind is ModelKind.CAUSAL_LM else AutoModelForSequenceClassification
            auto.from_pretrained(config.path).save_pretrained(tmp)
            AutoTokenizer.from_pretrained(config.path).save_pretrained(tmp)
        else:
            raise ValueError(f"cannot materialise model source {config.source.value!r} (it has no tokenizer)")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
