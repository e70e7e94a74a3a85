"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys as PEFT writes them: `base_model.model.<module>.lora_A.weight` (r x in) and `...lora_B.weight`
(out x r); a classification head trained alongside ("modules_to_save") is stored under its own key,
e.g. `base_model.model.classifier.weight`. So `peft.PeftModel.from_pretrained(base, path)` loads our
adapters, and adapters PEFT saved load here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."


class TaskType(enum.Enum):
    CAUSAL_LM = "CAUSAL_LM"
    SEQ_CLS = "SEQ_CLS"


@dataclasses.dataclass(frozen=True)
class AdapterWeights:
    """Attributes:
    lora: module name -> (A (r, in_features), B (out_features, r)).
    extra: other trained tensors by their model key (e.g. "classifier.weight").
    rank, alpha, dropout: the LoRA settings (scaling = alpha / rank).
    task_type: what PEFT should wrap the base with.
    modules_to_save: module names whose full weights are in `extra` (PEFT's modules_to_save).
    fan_in_fan_out: True when the targets are GPT-2 Conv1D layers (weight stored in x out).
    base_model: the base model's name or path, for PEFT's config.
    """

    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float
    dropout: float
    task_type: TaskType
    extra: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()
    fan_in_fan_out: bool = False
    base_model: str | None = None

    def __post_init__(self) -> None:
        for name, (a, b) in self.lora.items():
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise ValueError(
                    f"{name}: expected lora_A (r={self.rank}, in) and lora_B (out, r={self.rank}), "
                    f"got {tuple(a.shape)} and {tuple(b.shape)}"
                )


def save_peft_adapter(out_dir: str | Path, adapter: AdapterWeights) -> Path:
    """Writes the adapter folder atomically (a temporary folder renamed into place)."""
    out_dir = Path(out_dir)
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b) in adapter.lora.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = b
    for key, value in adapter.extra.items():
        tensors[f"{_PREFIX}{key}"] = value
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    config = {
        "peft_type": "LORA",
        "task_type": adapter.task_type.value,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": sorted(adapter.lora),
        "modules_to_save": list(adapter.modules_to_save) or None,
        "fan_in_fan_out": adapter.fan_in_fan_out,
        "bias": "none",
        "base_model_name_or_path": adapter.base_model,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_peft_adapter(directory: str | Path) -> AdapterWeights:
    """Reads a PEFT LoRA adapter folder (ours or PEFT's).

    Raises:
        ValueError: not a LoRA adapter, or one using features we do not implement (DoRA, rsLoRA,
            per-module ranks, LoRA biases) — named, never silently ignored.
    """
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory}: peft_type must be 'LORA', got {config.get('peft_type')!r}")
    for flag in ("use_dora", "use_rslora", "lora_bias"):
        if config.get(flag):
            raise ValueError(f"{directory}: adapters with {flag}=true are not supported")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            raise ValueError(f"{directory}: per-module {pattern} is not supported: {config[pattern]}")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{directory}: bias={config['bias']!r} is not supported (expected 'none')")
    from qlora.models.bnb_checkpoint import read_safetensors

    state = read_safetensors(directory / WEIGHTS_FILE)
    lora: dict[str, list] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(_PREFIX):
            raise ValueError(f"{directory}: unexpected key {key!r} (expected the prefix {_PREFIX!r})")
        key = key[len(_PREFIX):]
        for part, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if key.endswith(part):
                lora.setdefault(key[: -len(part)], [None, None])[slot] = value
                break
        else:
            extra[key] = value
    missing = [n for n, ab in lora.items() if ab[0] is None or ab[1] is None]
    if missing:
        raise ValueError(f"{directory}: modules without both lora_A and lora_B: {missing}")
    return AdapterWeights(
        lora={n: (a, b) for n, (a, b) in lora.items()},
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0)),
        task_type=TaskType(config.get("task_type") or "CAUSAL_LM"),
        extra=extra,
        modules_to_save=tuple(config.get("modules_to_save") or ()),
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        base_model=config.get("base_model_name_or_path"),
    )
