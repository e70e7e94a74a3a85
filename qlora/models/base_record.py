"""Which base an adapter was trained on, recorded beside it and checked before it loads anywhere.

A LoRA adapter only means something on the weights it was trained against. PEFT's `adapter_config.json`
names the base (`base_model_name_or_path`) but nothing checks it, so an adapter for another model used to
fail deep inside loading (a shape error listing every module, after quantizing the whole base) or, for a
base of the same shapes, load silently. Here the adapter folder also holds `qlora_base.json`:

- `name`: the base as the user can name it again (a conf/model option such as "smollm2", a hub id, or the
  path given), never a cache folder;
- `hidden_size`, `num_layers`, `model_type`: from the base's config, so a wrong base is refused from
  its config.json alone, before any weight is read;
- `fingerprint`: sha256 over a fixed sample of the weights that stay in floating point whatever the
  quantization (16 evenly spaced rows of the input embedding and every normalisation layer's
  parameters), each rounded to bf16 first, so that the float folder, its 4-bit checkpoint (which stores
  them in bf16) and a model loaded in fp32 or bf16 all give the same value. Two bases of the same
  shapes but different weights (e.g. a base model and its instruction-tuned version) differ here:
  loading warns.

Adapters without the file (made by PEFT, or before it existed) are still checked layer by layer
against the base's shapes (`check_adapter_fits`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from qlora.readers import get, read_json

BASE_FILE = "qlora_base.json"
_SAMPLE_ROWS = 16


@dataclasses.dataclass(frozen=True)
class BaseRecord:
    """The base an adapter was trained on (see the module doc). Dimensions are None where the config
    does not state them."""

    name: str | None
    model_type: str | None
    hidden_size: int | None
    num_layers: int | None
    fingerprint: str

    def describe(self) -> str:
        """`'smollm2' (llama, hidden size 576, 30 layers)`."""
        return f"{self.name!r} ({_dims_text(self.model_type, self.hidden_size, self.num_layers)})"


def config_dims(config: dict) -> tuple[str | None, int | None, int | None]:
    """(model_type, hidden size, number of layers) of a config.json dict (a multimodal config's text part)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = next((text[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(text.get(k), int)), None)
    layers = next((text[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(text.get(k), int)), None)
    model_type = config.get("model_type")
    return (model_type if isinstance(model_type, str) else None), hidden, layers


def _dims_text(model_type: str | None, hidden: int | None, layers: int | None) -> str:
    parts = [model_type or "model", f"hidden size {hidden if hidden is not None else '?'}", f"{layers if layers is not None else '?'} layers"]
    return ", ".join(parts)


def fingerprint(model: nn.Module) -> str:
    """sha256 over bf16-rounded samples of the weights that are never quantized (see the module doc).

    Args:
        model: a transformers model, prepared or plain, on any device (the samples are copied to the CPU);
            a sharded one inside `qlora.distributed.gathered`.

    Raises:
        ValueError: a parameter is still sharded (a DTensor).
    """
    digest = hashlib.sha256()

    def whole(tensor: torch.Tensor) -> torch.Tensor:
        if hasattr(tensor, "full_tensor"):  # gathering is a collective: every rank must take part, not the one saving
            raise ValueError("fingerprint of a sharded (FSDP2) model: call it inside qlora.distributed.gathered(model)")
        return tensor.detach()

    def add(tensor: torch.Tensor) -> None:
        t = whole(tensor).to("cpu", torch.bfloat16).contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.int16).numpy().tobytes())

    embedding = whole(model.get_input_embeddings().weight)
    rows = torch.linspace(0, embedding.shape[0] - 1, min(_SAMPLE_ROWS, embedding.shape[0])).round().long()
    add(embedding[rows.to(embedding.device)])
    for module in model.modules():  # normalisation layers, in module order
        if "norm" in type(module).__name__.lower():
            for _, p in sorted(module.named_parameters(recurse=False)):
                add(p)
    return digest.hexdigest()


def base_record(model: nn.Module, name: str | None) -> BaseRecord:
    """The record of `model` as the base of an adapter trained on it, `name` being how to name it again."""
    model_type, hidden, layers = config_dims(model.config.to_dict())
    return BaseRecord(name, model_type, hidden, layers, fingerprint(model))


def write_base_record(directory: str | Path, record: BaseRecord) -> Path:
    """Writes `directory/qlora_base.json` (sorted keys, so equal records give equal bytes)."""
    path = Path(directory) / BASE_FILE
    path.write_text(json.dumps(dataclasses.asdict(record), indent=2, sort_keys=True) + "\n")
    return path


def read_base_record(directory: str | Path) -> BaseRecord | None:
    """The record of an adapter folder, or None when it has none (a PEFT adapter).

    Raises:
        BadFileError (ValueError): a record that is not valid JSON or lacks a field, naming the file and key.
    """
    path = Path(directory) / BASE_FILE
    if not path.is_file():
        return None
    data = read_json(path, "adapter base record")
    return BaseRecord(
        name=get(data, "name", path, str, none_ok=True),
        model_type=get(data, "model_type", path, str, none_ok=True),
        hidden_size=get(data, "hidden_size", path, int, none_ok=True),
        num_layers=get(data, "num_layers", path, int, none_ok=True),
        fingerprint=get(data, "fingerprint", path, str),
    )


def _layer_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear layer (nn.Linear, GPT-2's Conv1D, a QLoRALinear)."""
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.weight.shape[0]), int(module.nf)
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    return None


def check_adapter_fits(adapter_dir: str | Path, lora: dict[str, tuple[torch.Tensor, torch.Tensor]], base: str | Path, config: dict,
                       skeleton: Callable[[], nn.Module], *, target_modules: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Refuses, in one line naming both bases, an adapter whose layers the base does not have or whose
    shapes differ — from the base's config alone, before any weight is read or quantized.

    Args:
        adapter_dir: the adapter folder (its `qlora_base.json`, if any, names the base it was trained on).
        lora: the adapter's module name -> (A (r, in), B (out, r)).
        base: the base as the caller named it (for the message).
        config: the base's config.json.
        skeleton: builds the base model from `config` (parameters on the meta device are fine); called
            only when the recorded dimensions agree or there is no record (building it first imports
            the model's transformers code: seconds in a fresh process).
        target_modules: adapter_config.json's list; PEFT's name suffixes (["q_proj", ...]) name layers of
            the base, each of which must have weights in the adapter (full names are checked in the file).

    Raises:
        ValueError: the adapter does not fit the base, or lacks weights for layers its suffixes name.
    """
    record = read_base_record(adapter_dir)
    model_type, hidden, layers = config_dims(config)
    base_text = f"{str(base)!r} ({_dims_text(model_type, hidden, layers)})"
    mismatch = (f"the adapter was trained on {record.describe()}, not on {base_text}" if record is not None
                else f"the adapter does not fit {base_text}")  # fmt: skip
    if record is not None and (record.hidden_size, record.num_layers) != (hidden, layers) and None not in (record.hidden_size, hidden):
        raise ValueError(f"{adapter_dir}: {mismatch}: load it onto its own base")
    model = skeleton()
    modules = dict(model.named_modules())
    missing, misfit = [], []
    for name, (a, b) in sorted(lora.items()):
        shape = _layer_shape(modules[name]) if name in modules else None
        if shape is None:
            missing.append(name)
        elif shape != (a.shape[1], b.shape[0]):
            misfit.append(f"{name}: adapter {a.shape[1]}->{b.shape[0]}, base {shape[0]}->{shape[1]}")
    if missing or misfit:
        example = f"e.g. {missing[0]} is not a linear layer of the base" if missing else f"e.g. {misfit[0]}"
        raise ValueError(f"{adapter_dir}: {mismatch}: {len(missing) + len(misfit)} of its {len(lora)} layers do not fit "
                         f"({example}); load it onto its own base")  # fmt: skip
    if target_modules and all("." not in t for t in target_modules):
        from qlora.models.surgery import linear_modules

        lacking = [n for n in linear_modules(model) if n.rsplit(".", 1)[-1] in target_modules and n not in lora]
        if lacking:
            raise ValueError(f"{adapter_dir}: target_modules {list(target_modules)} name {len(lacking)} layers of {base_text} "
                             f"that the adapter has no weights for (e.g. {lacking[0]})")  # fmt: skip


def warn_if_other_base(adapter_dir: str | Path, model: nn.Module, base: str | Path) -> bool:
    """Warns (UserWarning) when the adapter's recorded base has other weights than `model`'s, although
    the shapes fit; returns whether it warned (False also when the adapter has no record)."""
    record = read_base_record(adapter_dir)
    if record is None or record.fingerprint == fingerprint(model):
        return False
    warnings.warn(f"{adapter_dir}: the adapter was trained on {record.describe()}, whose weights differ from {str(base)!r}'s "
                  "(same shapes, so it loads; its updates were learned for the other weights)", UserWarning, stacklevel=3)  # fmt: skip
    return True
