"""`qlora.save_pretrained`: a prepared model to disk, as an adapter, a 4-bit model, or both.

transformers' own `save_pretrained` cannot save a prepared model: the quantized layers' buffers
(packed codes, absmax, shared codebooks) are not a layout any loader reads, and the codebooks shared
between layers make it fail ("shared tensors"). What users of transformers and PEFT expect instead:
- `Save.ADAPTER`: the adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`,
  `qlora.models.peft_format`), the quantization they were trained on (`qlora_quant.json`) and the base
  (`qlora_base.json`: name, dimensions, a fingerprint of its weights; `qlora.models.base_record`),
  so `qlora.from_pretrained(base, adapter=dir)` rebuilds the same model, and
  `peft.PeftModel.from_pretrained` loads the adapter onto a transformers base;
- `Save.QUANTIZED_MODEL`: the whole 4-bit model in the transformers + bitsandbytes layout
  (`qlora.models.bnb_checkpoint`), which `qlora.from_pretrained(dir)` and, for NF4/FP4,
  `transformers.AutoModelForCausalLM.from_pretrained(dir)` with bitsandbytes installed load.
Both: the model in `directory`, the adapter in `directory/adapter`; `from_pretrained(directory)`
restores the whole prepared model. `attach_save_pretrained` makes
`model.save_pretrained(dir)` of a prepared model do this (HF habit) instead of failing.
"""

from __future__ import annotations

import enum
import functools
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from qlora.atomic import atomic_dir
from qlora.config import ComputeDtype, QuantConfig
from qlora.quant.dtypes import DoubleQuant
from qlora.models.surgery import CLASSIFICATION_HEADS
from qlora.nn.linear import QLoRALinear


ADAPTER_SUBDIR = "adapter"  # where the adapter goes when it is saved beside a whole model


class Save(enum.Flag):
    """What `save_pretrained` writes (combine with `|`)."""

    ADAPTER = enum.auto()  # PEFT adapter + the quantization config
    QUANTIZED_MODEL = enum.auto()  # the whole 4-bit model, bitsandbytes layout


def _layers(model: nn.Module) -> dict[str, QLoRALinear]:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QLoRALinear layer: it is not a prepared model (use its own save_pretrained)")
    return layers


def model_quant_config(model: nn.Module) -> QuantConfig:
    """The QuantConfig the prepared `model`'s layers were quantized with.

    Raises:
        ValueError: not a prepared model, or its layers differ in data type, block size or compute dtype.
    """
    kinds = {(m.weight.dtype, m.weight.double_quant_format, m.weight.block_size, m.compute_dtype) for m in _layers(model).values()}
    if len(kinds) != 1:
        described = sorted((d.value, dq.value if dq else False, b, c.value) for d, dq, b, c in kinds)
        raise ValueError(f"the model's quantized layers differ: {described}")
    dtype, dq, block_size, compute_dtype = kinds.pop()
    return QuantConfig(dtype, dq is not None, block_size, compute_dtype, dq or DoubleQuant.DYNAMIC)


def _adapter(model: nn.Module, base_model: str | None):
    from qlora.models.loading import adapter_weights
    from qlora.models.peft_format import TaskType

    adapted = [m for m in _layers(model).values() if m.lora_a is not None]
    if not adapted:
        raise ValueError("the model has no adapters (LoRA rank 0) to save; save Save.QUANTIZED_MODEL instead")
    configs = {(m.lora_config.rank, m.lora_config.alpha, m.lora_config.dropout) for m in adapted}
    if len(configs) != 1:
        raise ValueError(f"the adapters differ in (rank, alpha, dropout): {sorted(configs)}; PEFT's format holds one setting")
    task = TaskType.SEQ_CLS if any(n.split(".")[-1] in CLASSIFICATION_HEADS for n, _ in model.named_modules()) else TaskType.CAUSAL_LM
    weights = adapter_weights(model, adapted[0].lora_config, task, base_model)
    if any(m.from_conv1d for m in adapted):
        import dataclasses

        weights = dataclasses.replace(weights, fan_in_fan_out=True)
    return weights


def _quantized_state(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """({module: QuantizedTensor}, every other tensor) of a prepared model, tied duplicates dropped."""
    layers = _layers(model)
    internal = set()
    for name, m in layers.items():
        internal.update(f"{name}.{b}" for b, _ in m.named_buffers())
        internal.update(f"{name}.{p}" for p, _ in m.named_parameters() if p != "bias")
    others, seen = {}, set()
    for key, value in model.state_dict().items():
        if key in internal:
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if ident in seen:  # a tied weight (lm_head = embed_tokens): saved once, tied again on load
            continue
        seen.add(ident)
        others[key] = value
    return {n: m.weight for n, m in layers.items() if m.weight.dtype.is_quantized}, others


def stored_dtype(quant: QuantConfig) -> torch.dtype:
    """The dtype a quantized checkpoint stores its other floating tensors in (embeddings, norms, head,
    biases): the compute dtype, bf16 unless the config asks for fp16 or fp32 (AUTO and NATIVE compute
    in bf16 wherever that is fast). fp32 would double their size for values the matmuls round anyway:
    SmolLM2's fp32 embedding alone is 108 MiB of a 164 MiB "4-bit" folder."""
    return {ComputeDtype.FP16: torch.float16, ComputeDtype.FP32: torch.float32}.get(quant.compute_dtype, torch.bfloat16)


def _move_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        shutil.move(str(f), dst / f.name)
    src.rmdir()


def save_pretrained(model: nn.Module, directory: str | Path, *, what: Save | None = None, tokenizer=None,
                    base_model: str | None = None, dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """Writes a prepared model's adapter and/or its whole 4-bit form to `directory`, atomically.

    Args:
        model: a model prepared by `qlora.prepare_model` or loaded by `qlora.from_pretrained`.
        directory: the folder to write (replaced if it exists).
        what: `Save.ADAPTER`, `Save.QUANTIZED_MODEL` or both; None: the quantized model, plus the
            adapter when the model has one.
        tokenizer: saved alongside when given (anything with `save_pretrained`).
        base_model: the base as it can be named again (a conf/model option, hub id or path), recorded
            in the adapter config for PEFT and in `qlora_base.json`.
        dtype: the dtype of the quantized model's other floating tensors (embeddings, norms, head,
            biases); None: `stored_dtype` of its quantization (bf16 unless its compute dtype is fp16/fp32).

    Returns:
        `directory` as a Path.

    Raises:
        ValueError: not a prepared model; Save.ADAPTER on a model without adapters; a BF16 base
            (16-bit LoRA) asked to be saved as a quantized model.
    """
    from qlora.models.base_record import base_record, write_base_record
    from qlora.models.bnb_checkpoint import save_quantized_checkpoint
    from qlora.models.loading import QUANT_FILE, quant_config_json
    from qlora.models.peft_format import save_peft_adapter

    quant = model_quant_config(model)
    if what is None:
        what = Save.QUANTIZED_MODEL | (Save.ADAPTER if any(m.lora_a is not None for m in _layers(model).values()) else Save(0))
    if not isinstance(what, Save) or not what:
        raise ValueError(f"what must be Save.ADAPTER, Save.QUANTIZED_MODEL or both, got {what!r}")
    adapter = _adapter(model, base_model) if Save.ADAPTER in what else None
    if Save.QUANTIZED_MODEL in what and not quant.dtype.is_quantized:
        raise ValueError("a BF16 base is not a quantized model: save Save.ADAPTER, or export_merged for a 16-bit folder")
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype!r}")
    dtype = dtype or stored_dtype(quant)
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        if Save.QUANTIZED_MODEL in what:
            quantized, others = _quantized_state(model)
            others = {k: v.to(dtype) if v.is_floating_point() else v for k, v in others.items()}
            cd = torch.bfloat16 if quant.compute_dtype is ComputeDtype.AUTO else quant.compute_dtype.resolve("cpu")
            config = model.config.to_dict()
            config["architectures"] = [type(model).__name__]
            config["dtype"] = str(dtype).removeprefix("torch.")  # what transformers loads the other tensors as
            _move_files(save_quantized_checkpoint(tmp / "model", config, quantized, others, compute_dtype=cd), tmp)
            if getattr(model, "generation_config", None) is not None and model.can_generate():
                model.generation_config.save_pretrained(tmp)
        record = json.dumps(quant_config_json(quant), indent=2, sort_keys=True) + "\n"
        (tmp / QUANT_FILE).write_text(record)
        if adapter is not None:
            # beside a model, in a subfolder: a root-level adapter_config.json makes transformers treat the
            # folder as an adapter of another base
            adapter_dir = tmp / ADAPTER_SUBDIR if Save.QUANTIZED_MODEL in what else tmp
            save_peft_adapter(tmp / "_adapter", adapter)
            adapter_dir.mkdir(exist_ok=True)
            _move_files(tmp / "_adapter", adapter_dir)
            (adapter_dir / QUANT_FILE).write_text(record)
            write_base_record(adapter_dir, base_record(model, base_model))  # checked when it loads onto a base
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return directory


def _plain_save(model: nn.Module, save_directory: str | Path, **kwargs):
    """transformers' own `save_pretrained`, then normal permissions on the files it wrote (safetensors
    creates them owner-only, 0600); other files of the folder are left as they are."""
    from qlora.atomic import normal_permissions

    directory = Path(save_directory)

    def stamps() -> dict[Path, tuple[int, int]]:
        if not directory.is_dir():
            return {}
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.rglob("*") if p.is_file() and not p.is_symlink()}

    before = stamps()
    result = type(model).save_pretrained(model, save_directory, **kwargs)
    for path, stamp in stamps().items():
        if before.get(path) != stamp:
            normal_permissions(path)
    return result


def attach_plain_save_pretrained(model: nn.Module) -> nn.Module:
    """Makes `model.save_pretrained(dir, ...)` of a plain (e.g. merged) model transformers' own, with
    output files of normal permissions."""
    model.save_pretrained = functools.partial(_plain_save, model)
    return model


def _save_method(self: nn.Module, save_directory: str | Path, *, what: Save | None = None, tokenizer=None,
                 base_model: str | None = None, dtype: torch.dtype | None = None, **kwargs) -> Path | None:  # fmt: skip
    """`model.save_pretrained(dir)` of a prepared model: `qlora.save_pretrained` (see there)."""
    if not any(isinstance(m, QLoRALinear) for m in self.modules()):  # merged back to plain layers
        return _plain_save(self, save_directory, **kwargs)
    if kwargs:
        raise TypeError(f"save_pretrained of a prepared (quantized) model takes what=, tokenizer=, base_model=, dtype=; "
                        f"not {sorted(kwargs)} (see qlora.save_pretrained)")  # fmt: skip
    return save_pretrained(self, save_directory, what=what, tokenizer=tokenizer, base_model=base_model, dtype=dtype)


def attach_save_pretrained(model: nn.Module) -> nn.Module:
    """Makes `model.save_pretrained(dir, what=...)` call `qlora.save_pretrained` (for this instance)."""
    # a partial, not a bound method: it survives pickling and deep copies (re-bound to the copy)
    model.save_pretrained = functools.partial(_save_method, model)
    return model
