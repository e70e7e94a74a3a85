"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys as PEFT writes them: `base_model.model.<module>.lora_A.weight` (r x in) and `...lora_B.weight`
(out x r); a classification head trained alongside ("modules_to_save") is stored under its own key,
e.g. `base_model.model.classifier.weight`. So `peft.PeftModel.from_pretrained(base, path)` loads our
adapters, and adapters PEFT saved load here.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from qlora.atomic import atomic_dir, write_json
from qlora.readers import BadFileError, check_finite, check_tensor, get, read_json, read_safetensors

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
    target_modules: what `adapter_config.json` lists as `target_modules`: module-name suffixes as PEFT
        writes them (["q_proj", "v_proj"], see `suffix_targets`), or full names; each adapted module
        must match one. Empty: the sorted full names of `lora`.
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
    target_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, (a, b) in self.lora.items():
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise ValueError(
                    f"{name}: expected lora_A (r={self.rank}, in) and lora_B (out, r={self.rank}), "
                    f"got {tuple(a.shape)} and {tuple(b.shape)}"
                )
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        unmatched = [n for n in self.lora if self.target_modules and not _matches(n, list(self.target_modules))]
        if unmatched:
            raise ValueError(f"target_modules {list(self.target_modules)} match no entry for the adapted module {unmatched[0]!r}")


def suffix_targets(adapted: list[str], modules: list[str]) -> tuple[str, ...]:
    """PEFT's `target_modules` for the adapted layers among all of a model's module names: the distinct
    last name components (["down_proj", "q_proj", ...]) when exactly the adapted modules end in them —
    what `peft.LoraConfig(target_modules=[...])` writes, and matches on load — else the full names (so
    PEFT adds no adapter where none was trained).
    """
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    if {n for n in modules if n.rsplit(".", 1)[-1] in suffixes} == set(adapted):
        return tuple(suffixes)
    return tuple(sorted(adapted))


def save_peft_adapter(out_dir: str | Path, adapter: AdapterWeights) -> Path:
    """Writes the adapter folder atomically (`qlora.atomic.atomic_dir`: whole or not at all)."""
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
        "target_modules": list(adapter.target_modules) or sorted(adapter.lora),
        "modules_to_save": list(adapter.modules_to_save) or None,
        "fan_in_fan_out": adapter.fan_in_fan_out,
        "bias": "none",
        "base_model_name_or_path": adapter.base_model,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, config)
    return out_dir


def _matches(name: str, targets: str | list[str]) -> bool:
    """PEFT's rule: a list entry matches the module name or its last components; a string is a regex."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _read_config(path: Path) -> dict:
    """adapter_config.json, every key we use checked (type, range, unsupported features)."""
    config = read_json(path, "adapter config")
    peft_type = get(config, "peft_type", path, str)
    if peft_type != "LORA":
        raise BadFileError(path, "peft_type", f"got {peft_type!r}; expected 'LORA'")
    for flag in ("use_dora", "use_rslora", "lora_bias"):
        if get(config, flag, path, bool, default=False):
            raise BadFileError(path, flag, f"adapters with {flag}=true are not supported")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if get(config, pattern, path, dict, default={}):
            raise BadFileError(path, pattern, f"per-module patterns are not supported: {config[pattern]}")
    bias = get(config, "bias", path, str, default="none")
    if bias != "none":
        raise BadFileError(path, "bias", f"got {bias!r}; only 'none' is supported")
    rank = get(config, "r", path, int)
    if rank < 1:
        raise BadFileError(path, "r", f"got {rank}; expected an integer >= 1")
    alpha = get(config, "lora_alpha", path, float)
    if alpha <= 0:
        raise BadFileError(path, "lora_alpha", f"got {alpha}; expected a number > 0")
    dropout = get(config, "lora_dropout", path, float, default=0.0)
    if not 0 <= dropout < 1:
        raise BadFileError(path, "lora_dropout", f"got {dropout}; expected a number in [0, 1)")
    task = get(config, "task_type", path, str, default="CAUSAL_LM")
    if task not in {t.value for t in TaskType}:
        raise BadFileError(path, "task_type", f"got {task!r}; expected one of {[t.value for t in TaskType]}")
    targets = get(config, "target_modules", path, (list, str), default=None)
    if isinstance(targets, list) and not all(isinstance(t, str) for t in targets):
        raise BadFileError(path, "target_modules", f"expected a list of module names, got {targets!r}")
    if isinstance(targets, str) and targets != "all-linear":
        try:
            re.compile(targets)
        except re.error as e:
            raise BadFileError(path, "target_modules", f"not a valid regular expression ({e}): {targets!r}") from None
    to_save = get(config, "modules_to_save", path, list, default=[])
    if not all(isinstance(m, str) for m in to_save):
        raise BadFileError(path, "modules_to_save", f"expected a list of module names, got {to_save!r}")
    return {
        "rank": rank, "alpha": alpha, "dropout": dropout, "task_type": TaskType(task),
        "targets": None if targets == "all-linear" else targets, "modules_to_save": tuple(to_save),
        "fan_in_fan_out": get(config, "fan_in_fan_out", path, bool, default=False),
        "base_model": get(config, "base_model_name_or_path", path, str, default=None),
    }  # fmt: skip


def load_peft_adapter(directory: str | Path) -> AdapterWeights:
    """Reads a PEFT LoRA adapter folder (ours or PEFT's), checking it against its own config.

    Raises:
        FileNotFoundError: no such folder, or a missing adapter_config.json / adapter_model.safetensors.
        BadFileError (ValueError), naming the file and the key: invalid JSON; a missing or mistyped
            config key (`r`, `lora_alpha`, ...); features we do not implement (DoRA, rsLoRA, per-module
            ranks, LoRA biases); a target without both lora_A and lora_B; a tensor whose rank, shape
            or dtype disagrees with the config; NaN/Inf values; tensors the config does not explain.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: adapter folder not found")
    cfg = _read_config(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    state = read_safetensors(weights, "adapter weights")
    lora: dict[str, list] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(_PREFIX):
            raise BadFileError(weights, key, f"unexpected key (expected the prefix {_PREFIX!r})")
        check_finite(value, weights, key)
        name = key[len(_PREFIX):]
        for part, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if name.endswith(part):
                module = name[: -len(part)]
                floats = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
                check_tensor(value, weights, key, dtypes=floats)
                r_dim = 0 if slot == 0 else 1
                if value.dim() != 2 or value.shape[r_dim] != cfg["rank"]:
                    layout = "(r, in_features)" if slot == 0 else "(out_features, r)"
                    raise BadFileError(weights, key, f"shape {tuple(value.shape)}, expected {layout} with r={cfg['rank']} "
                                                     f"from {CONFIG_FILE}")  # fmt: skip
                lora.setdefault(module, [None, None])[slot] = value
                break
        else:
            module = name.rpartition(".")[0]
            if not cfg["modules_to_save"] or not _matches(module, list(cfg["modules_to_save"])):
                raise BadFileError(weights, key, f"neither a lora_A/lora_B weight nor in modules_to_save "
                                                 f"{list(cfg['modules_to_save'])} of {CONFIG_FILE}")  # fmt: skip
            extra[name] = value
    for module, (a, b) in sorted(lora.items()):
        if a is None or b is None:
            missing = f"{_PREFIX}{module}.lora_{'A' if a is None else 'B'}.weight"
            raise BadFileError(weights, missing, f"missing: {module} has only lora_{'B' if a is None else 'A'}")
        if cfg["targets"] is not None and not _matches(module, cfg["targets"]):
            raise BadFileError(weights, f"{_PREFIX}{module}.lora_A.weight",
                               f"{module} is not among target_modules {cfg['targets']!r} of {CONFIG_FILE}")  # fmt: skip
    if isinstance(cfg["targets"], list):
        for target in cfg["targets"]:
            if not any(_matches(module, [target]) for module in lora):
                raise BadFileError(weights, f"{_PREFIX}{target}.lora_A.weight",
                                   f"missing: target_modules of {CONFIG_FILE} names {target!r}, but no lora_A/lora_B for it")  # fmt: skip
    if not lora:
        raise BadFileError(weights, None, "holds no lora_A/lora_B weights")
    return AdapterWeights(
        lora={n: (a, b) for n, (a, b) in lora.items()},
        rank=cfg["rank"],
        alpha=cfg["alpha"],
        dropout=cfg["dropout"],
        task_type=cfg["task_type"],
        extra=extra,
        modules_to_save=cfg["modules_to_save"],
        fan_in_fan_out=cfg["fan_in_fan_out"],
        base_model=cfg["base_model"],
        target_modules=tuple(cfg["targets"]) if isinstance(cfg["targets"], list) else (),
    )
