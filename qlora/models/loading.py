"""Building models: the base from its source, and a QLoRA model from a quantized checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from qlora.config import ComputeDtype, LoRAConfig, ModelKind, QuantConfig, Targets
from qlora.models.bnb_checkpoint import check_module_shapes, load_quantized_checkpoint
from qlora.models.peft_format import AdapterWeights, TaskType
from qlora.models.surgery import CLASSIFICATION_HEADS, select_targets
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
    from config.json, its other tensors loaded, and each quantized weight wrapped in a QLoRALinear;
    the layers that `lora.targets` selects get fresh adapters (the others none). Everything but the
    adapters and a classification head (trained in full, as `prepare_model` leaves it) is frozen.

    Raises:
        ValueError: the checkpoint does not match its config, or `lora` targets no layer (or names a
            target that matches none).
    """
    config_dict, quantized, tensors = load_quantized_checkpoint(directory)
    config_dict = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config = AutoConfig.for_model(**config_dict)
    model = _AUTO[kind].from_config(config, dtype=dtype)
    check_module_shapes(directory, quantized, model)
    adapted = set(select_targets(list(quantized), lora)) if lora is not None and lora.rank else set()
    for name, q in quantized.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        bias = tensors.pop(f"{name}.bias", None)
        if (bias is None) != (getattr(old, "bias", None) is None):
            raise ValueError(f"{directory}: {name}'s bias in the checkpoint does not match the model")
        new = QLoRALinear(q, bias, lora=lora if name in adapted else None, compute_dtype=compute_dtype)
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
    for name, m in model.named_modules():
        if isinstance(m, QLoRALinear):
            for p in m.adapter_params():
                p.requires_grad = True
        elif name.split(".")[-1] in CLASSIFICATION_HEADS:  # trained in full, as prepare_model does (PEFT's modules_to_save)
            for p in m.parameters():
                p.requires_grad = True
    return model


def adapter_weights(model: nn.Module, lora: LoRAConfig, task: TaskType, base_model: str | None = None) -> AdapterWeights:
    """The trained adapters (and a classification head) of a prepared model, for `save_peft_adapter`;
    `target_modules` as PEFT writes them (name suffixes, `suffix_targets`)."""
    from qlora.models.peft_format import suffix_targets

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
        target_modules=suffix_targets(list(layers), [n for n, _ in model.named_modules()]),
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


QUANT_FILE = "qlora_quant.json"  # the QuantConfig a checkpoint folder was written with (compute dtype included)


def quant_config_json(quant: QuantConfig) -> dict:
    out = {"dtype": quant.dtype.value, "double_quant": quant.double_quant, "block_size": quant.block_size,
           "compute_dtype": quant.compute_dtype.value}  # fmt: skip
    if quant.double_quant and quant.double_quant_format is not None:  # only written when not the paper's
        out["double_quant_format"] = quant.double_quant_format.value
    return out


def read_quant_config(checkpoint_dir: str | Path) -> QuantConfig | None:
    """The QuantConfig stored with a checkpoint folder: ours (qlora_quant.json), or derived from a
    transformers + bitsandbytes `quantization_config`; None for a plain (unquantized) model folder.

    Raises:
        ValueError: an unreadable or invalid file, naming the file and the key.
    """
    checkpoint_dir = Path(checkpoint_dir)
    ours = checkpoint_dir / QUANT_FILE
    if ours.exists():
        data = _read_json(ours)
        try:
            extra = {"double_quant_format": data["double_quant_format"]} if "double_quant_format" in data else {}
            return QuantConfig(**{k: data[k] for k in ("dtype", "double_quant", "block_size", "compute_dtype")}, **extra)
        except KeyError as e:
            raise ValueError(f"{ours}: missing key {e.args[0]!r}") from None
        except ValueError as e:
            raise ValueError(f"{ours}: {e}") from None
    config = _read_json(checkpoint_dir / "config.json")
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if qc.get("quant_method") == "bitsandbytes" and qc.get("load_in_4bit", qc.get("_load_in_4bit")):
        compute = {"bfloat16": ComputeDtype.BF16, "float16": ComputeDtype.FP16, "float32": ComputeDtype.FP32}.get(
            str(qc.get("bnb_4bit_compute_dtype", "float32")).removeprefix("torch."), ComputeDtype.AUTO)
        try:
            return QuantConfig(qc.get("bnb_4bit_quant_type", "fp4"), bool(qc.get("bnb_4bit_use_double_quant", False)),
                               compute_dtype=compute)  # fmt: skip
        except ValueError as e:
            raise ValueError(f"{checkpoint_dir / 'config.json'}: quantization_config: {e}") from None
    raise ValueError(f"{checkpoint_dir}: quantization_config with quant_method={qc.get('quant_method')!r} and no {QUANT_FILE}: "
                     "expected a qlora checkpoint or a bitsandbytes 4-bit folder")


def _read_json(path: Path) -> dict:
    from qlora.readers import read_json

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return read_json(path)


def quantize_checkpoint(base_dir: str | Path, kind: ModelKind, quant: QuantConfig, out_dir: str | Path, *,
                        num_labels: int | None = None) -> Path:  # fmt: skip
    """Quantizes a base model folder to `quant` and writes the checkpoint folder (+ tokenizer files).

    Quantized types: the transformers + bitsandbytes layout (`bnb_checkpoint`). BF16: a plain
    transformers folder with bf16 weights (what "BF16" means in the paper's tables). Either way the
    folder also holds `qlora_quant.json` (the QuantConfig, compute dtype included), so whoever loads it
    needs nothing else. Written atomically.
    """
    import shutil

    from qlora.atomic import atomic_dir, write_json
    from qlora.models.bnb_checkpoint import save_quantized_checkpoint
    from qlora.models.surgery import prepare_model

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if kind is ModelKind.SEQ_CLS and num_labels is None:
        raise ValueError("quantizing a sequence-classification base needs num_labels")
    model = load_base(base_dir, kind, num_labels=num_labels)
    with atomic_dir(out_dir) as tmp:
        if not quant.dtype.is_quantized:
            model.to(torch.bfloat16).save_pretrained(tmp)
        else:
            prepare_model(model, quant, None)
            quantized = {n: m.weight for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
            state = model.state_dict()
            tied = getattr(model.config, "tie_word_embeddings", False)
            others = {k: v for k, v in state.items()
                      if (k.rsplit(".", 1)[0] not in quantized or k.endswith(".bias")) and not (tied and k == "lm_head.weight")}  # fmt: skip
            # embeddings, norms, head and biases in the compute dtype (bf16 unless asked), as `save_pretrained` stores them:
            # the same tensors as the BF16 row's, so that the data types differ only in their quantized layers
            from qlora.models.saving import stored_dtype

            others = {k: v.to(stored_dtype(quant)) if v.is_floating_point() else v for k, v in others.items()}
            shutil.rmtree(tmp)
            save_quantized_checkpoint(tmp, model.config.to_dict(), quantized, others)
        write_json(tmp / QUANT_FILE, quant_config_json(quant))
        for f in base_dir.iterdir():  # tokenizer and generation files
            if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name not in ("config.json", QUANT_FILE):
                shutil.copy2(f, tmp / f.name)
    return out_dir


def load_for_training(checkpoint_dir: str | Path, kind: ModelKind, quant: QuantConfig | None, lora: LoRAConfig | None, *,
                      num_labels: int | None = None) -> nn.Module:  # fmt: skip
    """A model ready to train or evaluate, with fresh adapters where `lora` targets.

    Args:
        checkpoint_dir: a `quantize_checkpoint` folder (its stored QuantConfig is used), a transformers +
            bitsandbytes 4-bit folder, or a plain model folder (quantized here to `quant`).
        quant: None, or the data type expected: a checkpoint stored otherwise is refused.

    Raises:
        ValueError: `quant` disagrees with the checkpoint's, or a plain folder comes without `quant`.
    """
    from qlora.models.surgery import prepare_model

    stored = read_quant_config(checkpoint_dir)
    if stored is not None and quant is not None and quant_config_json(quant) != quant_config_json(stored):
        differ = {k: (v, quant_config_json(stored)[k]) for k, v in quant_config_json(quant).items() if quant_config_json(stored)[k] != v}
        raise ValueError(f"{checkpoint_dir} was written with another quantization: {', '.join(f'{k}: asked {a!r}, stored {b!r}' for k, (a, b) in differ.items())}")
    if stored is None and quant is None:
        raise ValueError(f"{checkpoint_dir} is a plain model folder: pass the QuantConfig to quantize it with")
    quant = stored or quant
    config = _read_json(Path(checkpoint_dir) / "config.json")
    if "quantization_config" in config:
        return load_quantized_model(checkpoint_dir, kind, lora=lora, compute_dtype=quant.compute_dtype)
    model = load_base(checkpoint_dir, kind, num_labels=num_labels)
    prepare_model(model, quant, lora)
    return model


def adapter_lora_config(adapter: AdapterWeights) -> LoRAConfig:
    """The LoRAConfig an adapter was trained with: its rank and alpha, on exactly the modules it holds
    (dropout 0: for inference)."""
    return LoRAConfig(rank=adapter.rank, alpha=adapter.alpha, dropout=0.0, targets=Targets.NAMES, target_names=tuple(sorted(adapter.lora)))


def adapter_num_labels(adapter: AdapterWeights) -> int | None:
    """The number of classes of an adapter's classification head (None without one)."""
    for key, value in adapter.extra.items():
        parts = key.split(".")
        if parts[-1] == "weight" and any(p in CLASSIFICATION_HEADS for p in parts) and value.dim() == 2:
            if key.endswith("out_proj.weight") or parts[-2] in CLASSIFICATION_HEADS:
                return int(value.shape[0])
    return None


def load_for_inference(checkpoint_dir: str | Path, kind: ModelKind, adapter_dir: str | Path | None = None, *,
                       quant: QuantConfig | None = None) -> nn.Module:  # fmt: skip
    """A model for evaluation in eval mode: the checkpoint, plus an adapter loaded with its own config
    (rank, alpha and target modules from adapter_config.json; the number of classes from its head).

    Raises:
        ValueError: the adapter does not fit the checkpoint: one line naming both bases, before loading
            (an adapter of the same shapes but trained on other weights loads with a UserWarning).
    """
    from qlora.models.peft_format import load_peft_adapter

    adapter = load_peft_adapter(adapter_dir) if adapter_dir is not None else None
    lora = adapter_lora_config(adapter) if adapter is not None else None
    num_labels = adapter_num_labels(adapter) if adapter is not None else None
    if kind is ModelKind.SEQ_CLS and num_labels is None:
        raise ValueError(f"{adapter_dir}: a sequence-classification adapter needs its classification head (none found)")
    if adapter is not None:  # a wrong base is refused from its config, before any weight is read or quantized
        from qlora.models.base_record import check_adapter_fits
        from qlora.models.pretrained import meta_skeleton

        config = _read_json(Path(checkpoint_dir) / "config.json")
        check_adapter_fits(adapter_dir, adapter.lora, checkpoint_dir, config, lambda: meta_skeleton(config, kind, num_labels),
                           target_modules=adapter.target_modules)  # fmt: skip
    model = load_for_training(checkpoint_dir, kind, quant, lora, num_labels=num_labels)
    if adapter is not None:
        from qlora.models.base_record import warn_if_other_base

        load_adapter_into(model, adapter)
        warn_if_other_base(adapter_dir, model, checkpoint_dir)
    return model.eval()
