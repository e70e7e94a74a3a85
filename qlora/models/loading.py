"""Building models: the base from its source, and a QLoRA model from a quantized checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from qlora.config import ComputeDtype, LoRAConfig, ModelKind
from qlora.models.bnb_checkpoint import load_quantized_checkpoint
from qlora.models.peft_format import AdapterWeights, TaskType
from qlora.models.surgery import CLASSIFICATION_HEADS
from qlora.nn.linear import QLoRALinear

_AUTO = {ModelKind.CAUSAL_LM: AutoModelForCausalLM, ModelKind.SEQ_CLS: AutoModelForSequenceClassification}


def load_base(path: str | Path, kind: ModelKind, *, num_labels: int | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers model from a folder or hub id (a new classification head when num_labels is given)."""
    kwargs = {"dtype": dtype}
    if kind is ModelKind.SEQ_CLS:
        if num_labels is None:
            raise ValueError("a sequence-classification base needs num_labels")
        kwargs["num_labels"] = num_labels
    return _AUTO[kind].from_pretrained(str(path), **kwargs)


def load_quantized_model(directory: str | Path, kind: ModelKind = ModelKind.CAUSAL_LM, *, lora: LoRAConfig | None = None,
                         compute_dtype: ComputeDtype = ComputeDtype.AUTO, dtype: torch.dtype = torch.float32) -> nn.Module:  # fmt: skip
    """A model whose quantized linear layers come straight from a checkpoint folder (no re-quantizing).

    Reads our folders and those transformers + bitsandbytes save for 4-bit models. The model is built
    from config.json, its other tensors loaded, and each quantized weight wrapped in a QLoRALinear
    (with fresh adapters when `lora` has a rank). Everything but the adapters is frozen.
    """
    config_dict, quantized, tensors = load_quantized_checkpoint(directory)
    config_dict = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**config_dict)
    model = _AUTO[kind].from_config(config, dtype=dtype)
    for name, q in quantized.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        bias = tensors.pop(f"{name}.bias", None)
        if (bias is None) != (getattr(old, "bias", None) is None):
            raise ValueError(f"{directory}: {name}'s bias in the checkpoint does not match the model")
        new = QLoRALinear(q, bias, lora=lora, compute_dtype=compute_dtype)
        new.train(old.training)
        setattr(parent, child, new)
    qlora_buffers = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, QLoRALinear) for b, _ in m.named_buffers()}
    qlora_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, QLoRALinear) for p, _ in m.named_parameters()}
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # size mismatches: name the file and the keys
        raise ValueError(f"{directory}: tensors do not match the model's config: {' '.join(str(e).split())}") from None
    missing = [k for k in missing if k not in qlora_buffers and k not in qlora_params]
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{directory}: checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for p in model.parameters():
        p.requires_grad = False
    for m in model.modules():
        if isinstance(m, QLoRALinear):
            for p in m.adapter_params():
                p.requires_grad = True
    return model


def adapter_weights(model: nn.Module, lora: LoRAConfig, task: TaskType, base_model: str | None = None) -> AdapterWeights:
    """The trained adapters (and a classification head) of a prepared model, for `save_peft_adapter`."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear) and m.lora_a is not None}
    extra, heads = {}, []
    if task is TaskType.SEQ_CLS:
        for name, module in model.named_modules():
            if name.split(".")[-1] in CLASSIFICATION_HEADS:
                heads.append(name)
                extra.update({f"{name}.{k}": v.detach() for k, v in module.state_dict().items()})
    return AdapterWeights(
        lora={n: (m.lora_a.detach(), m.lora_b.detach()) for n, m in layers.items()},
        rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, task_type=task, extra=extra,
        modules_to_save=tuple(heads), base_model=base_model,
    )  # fmt: skip


def load_adapter_into(model: nn.Module, adapter: AdapterWeights) -> None:
    """Copies a loaded adapter into a prepared model's QLoRALinear layers (and heads)."""
    for name, (a, b) in adapter.lora.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the adapter targets {name!r}, which this model does not have (an adapter for another base?)") from None
        if not isinstance(module, QLoRALinear) or module.lora_a is None:
            raise ValueError(f"{name} is not an adapted QLoRALinear in this model")
        if module.lora_a.shape != a.shape or module.lora_b.shape != b.shape:
            raise ValueError(f"{name}: adapter shapes {tuple(a.shape)}, {tuple(b.shape)} do not match the model's "
                             f"{tuple(module.lora_a.shape)}, {tuple(module.lora_b.shape)}")  # fmt: skip
        with torch.no_grad():
            module.lora_a.copy_(a)
            module.lora_b.copy_(b)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in adapter.extra.items():
            if key not in state:
                raise ValueError(f"adapter tensor {key!r} has no counterpart in the model")
            state[key].copy_(value)


def quantize_checkpoint(base_dir: str | Path, kind: ModelKind, quant: "QuantConfig", out_dir: str | Path) -> Path:
    """Quantizes a base model folder to `quant` and writes the checkpoint folder (+ tokenizer files).

    Quantized types: the transformers + bitsandbytes layout (`bnb_checkpoint`). BF16: a plain
    transformers folder with bf16 weights (what "BF16" means in the paper's tables).
    """
    import shutil

    from qlora.config import QuantConfig  # noqa: F401  (annotation)
    from qlora.models.bnb_checkpoint import save_quantized_checkpoint
    from qlora.models.surgery import prepare_model
    from qlora.quant.dtypes import DataType

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    model = load_base(base_dir, kind) if kind is ModelKind.CAUSAL_LM else load_base(base_dir, kind, num_labels=2)
    if quant.dtype is DataType.BF16:
        tmp = out_dir.with_name(f".{out_dir.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.to(torch.bfloat16).save_pretrained(tmp)
    else:
        prepare_model(model, quant, None)
        quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
        state = model.state_dict()
        tied = getattr(model.config, "tie_word_embeddings", False)
        others = {k: v for k, v in state.items()
                  if (k.rsplit(".", 1)[0] not in quantized or k.endswith(".bias")) and not (tied and k == "lm_head.weight")}  # fmt: skip
        tmp = save_quantized_checkpoint(out_dir.with_name(f".{out_dir.name}.tmp"), model.config.to_dict(), quantized, others)
    for f in base_dir.iterdir():  # tokenizer and generation files
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "config.json":
            shutil.copy2(f, tmp / f.name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_for_training(checkpoint_dir: str | Path, kind: ModelKind, quant: "QuantConfig", lora: LoRAConfig | None, *,
                      num_labels: int | None = None) -> nn.Module:  # fmt: skip
    """A model ready to train or evaluate from a `quantize_checkpoint` folder (adapters fresh)."""
    import json

    from qlora.models.surgery import prepare_model

    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    if "quantization_config" in config:
        return load_quantized_model(checkpoint_dir, kind, lora=lora, compute_dtype=quant.compute_dtype)
    model = load_base(checkpoint_dir, kind, num_labels=num_labels)
    prepare_model(model, quant, lora)
    return model
