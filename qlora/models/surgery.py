"""Model surgery: swap a transformers model's linear layers for `QLoRALinear` (paper §4: all linear
layers but the output head need adapters to match 16-bit full fine-tuning).

Works on any transformers model whose linear layers are `nn.Linear` or GPT-2's `Conv1D`
(weight stored (in, out)); tested on LlamaForCausalLM, BERT sequence classifiers and GPT-2.
Afterwards only the adapters (and a classification head, which is trained in full) require grad;
norm layers are kept in fp32 (as peft's `prepare_model_for_kbit_training`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from qlora.config import Checkpointing, LoRAConfig, QuantConfig, SurgeryConfig, Targets
from qlora.nn.linear import QLoRALinear
from qlora.nn.lora import layer_generator

# Output heads: never quantized, never adapted. A classification head is trained in full.
LM_HEADS = ("lm_head",)
CLASSIFICATION_HEADS = ("classifier", "score", "qa_outputs")
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "attention.output.dense", "c_attn",
                   "attn.c_proj", "out_proj", "qkv_proj", "Wqkv")  # fmt: skip
MLP_NAMES = ("gate_proj", "up_proj", "down_proj", "intermediate.dense", "output.dense", "c_fc", "mlp.c_proj", "fc1", "fc2")


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _is_head(name: str) -> bool:
    parts = name.split(".")
    return any(p in LM_HEADS + CLASSIFICATION_HEADS for p in parts)


def _selected(name: str, lora: LoRAConfig) -> bool:
    def has(suffixes):
        return any(name == s or name.endswith("." + s) for s in suffixes)

    if lora.targets is Targets.ALL_LINEAR:
        return True
    if lora.targets is Targets.ATTENTION:
        return has(ATTENTION_NAMES) and not has(("intermediate.dense",)) and not (name.endswith("output.dense") and ".attention." not in name)
    if lora.targets is Targets.MLP:
        return has(MLP_NAMES) and ".attention." not in name
    return has(lora.target_names)


def linear_modules(model: nn.Module) -> list[str]:
    """Names of the linear layers `prepare_model` quantizes: every nn.Linear / Conv1D but the heads."""
    return [name for name, module in model.named_modules()
            if (isinstance(module, nn.Linear) or _is_conv1d(module)) and not _is_head(name)]  # fmt: skip


def select_targets(names: list[str], lora: LoRAConfig) -> list[str]:
    """The layers among `names` that get adapters under `lora.targets`.

    Raises:
        ValueError: nothing is selected, or (targets NAMES) a target name matches no layer — naming it.
    """
    chosen = [n for n in names if _selected(n, lora)]
    if lora.targets is Targets.NAMES:
        unmatched = [t for t in lora.target_names if not any(n == t or n.endswith("." + t) for n in names)]
        if unmatched:
            raise ValueError(f"lora.target_names {unmatched} match no linear layer (layers end in: "
                             f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n in names}))})")  # fmt: skip
    if not chosen:
        raise ValueError(f"lora.targets={lora.targets.name} matches no linear layer (layers end in: "
                         f"{', '.join(sorted({n.rsplit('.', 1)[-1] for n in names}))})")  # fmt: skip
    return chosen


def target_modules(model: nn.Module, lora: LoRAConfig) -> list[str]:
    """Names of the linear layers that get adapters (all of `linear_modules` are quantized)."""
    return select_targets(linear_modules(model), lora)


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """Parameter counts and weight storage of a prepared model (bytes)."""

    total_params: int
    trainable_params: int
    replaced_layers: int  # linear layers quantized (all but the heads)
    adapted_layers: int  # of those, the ones with an adapter (`LoRAConfig.targets`)
    weight_bytes_before: int  # all weights and buffers before surgery
    weight_bytes_after: int  # frozen storage after surgery (packed codes + constants + everything else)
    quantized_params: int  # elements of the quantized linear weights
    quantized_bytes: int  # their storage

    @property
    def quantized_bits_per_param(self) -> float:
        return 8 * self.quantized_bytes / self.quantized_params if self.quantized_params else 0.0

    @property
    def bits_per_param(self) -> float:
        """Storage bits per parameter of the whole frozen model (embeddings, norms, head included)."""
        return 8 * self.weight_bytes_after / self.total_params


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_report(model: nn.Module, before_bytes: int | None = None) -> ModelReport:
    """Parameter counts and storage of a (prepared) model.

    Args:
        model: any module; its `QLoRALinear` layers count with their packed storage.
        before_bytes: storage before surgery (`prepare_model` measures it); None: the same as after.
    """
    qlayers = [m for m in model.modules() if isinstance(m, QLoRALinear)]
    adapter_ids = {id(p) for m in qlayers for p in m.adapter_params()}
    quantized_params = sum(m.in_features * m.out_features for m in qlayers)
    quantized_bytes = sum(m.weight.storage_bytes() for m in qlayers)
    packed_ids = {id(t) for m in qlayers for t in (*m.buffers(), *m.quantized_parameters())}
    other = [p for p in model.parameters() if id(p) not in adapter_ids | packed_ids] + [b for b in model.buffers() if id(b) not in packed_ids]
    after = quantized_bytes + _bytes(other)
    total = quantized_params + sum(p.numel() for p in model.parameters() if id(p) not in adapter_ids | packed_ids)
    return ModelReport(
        total_params=total,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        replaced_layers=len(qlayers),
        adapted_layers=sum(1 for m in qlayers if m.lora_a is not None),
        weight_bytes_before=before_bytes if before_bytes is not None else after,
        weight_bytes_after=after,
        quantized_params=quantized_params,
        quantized_bytes=quantized_bytes,
    )


def prepare_model(model: nn.Module, config: SurgeryConfig | QuantConfig, lora: LoRAConfig | None = None) -> ModelReport:
    """Quantizes every targeted linear layer in place and adds adapters; freezes everything else.

    Args:
        model: a transformers model (modified in place).
        config: a `SurgeryConfig` (quant, lora, checkpointing); or, as a shorthand, a `QuantConfig` with
            the adapters in `lora` (None: no adapters — inference of the quantized model) and no
            gradient checkpointing. `DataType.BF16`: plain LoRA on a 16-bit base.
        lora: only with the `QuantConfig` shorthand.

    Returns:
        ModelReport: parameters and storage before and after.

    Raises:
        TypeError: config is neither a SurgeryConfig nor a QuantConfig, or `lora` is given with a SurgeryConfig.
        ValueError: no layer matched the target setting, or checkpointing on a model without support.
    """
    if isinstance(config, QuantConfig):
        config = SurgeryConfig(config, lora or LoRAConfig(rank=0))
    elif not isinstance(config, SurgeryConfig):
        raise TypeError(f"config must be a SurgeryConfig (or a QuantConfig), got {type(config).__name__}")
    elif lora is not None:
        raise TypeError("lora goes inside the SurgeryConfig; the separate argument is only for the QuantConfig shorthand")
    quant, lora = config.quant, config.lora
    before = _bytes(model.parameters()) + _bytes(model.buffers())
    names = linear_modules(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layer to quantize")
    adapted = set(select_targets(names, lora)) if lora.rank else set()
    for p in model.parameters():
        p.requires_grad = False
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        new = QLoRALinear.from_linear(old, quant, lora if name in adapted else None, transposed=_is_conv1d(old))
        new.train(old.training)
        setattr(parent, child, new)
        if name in adapted:
            # Note: adapter init per layer. A is drawn from a generator seeded by the global seed and the
            # layer's name, not from the global RNG stream: a LoRA BF16 row and a QLoRA row, whose loaders
            # consume the RNG differently, start from the same adapters for the same seed.
            new.reset_adapter(layer_generator(torch.initial_seed(), name))
    # a classification head is new: it trains in full (PEFT's modules_to_save)
    for name, module in model.named_modules():
        if name.split(".")[-1] in CLASSIFICATION_HEADS:
            for p in module.parameters():
                p.requires_grad = True
    for module in model.modules():
        if "norm" in type(module).__name__.lower():
            module.float()
    if config.checkpointing is not Checkpointing.OFF:
        _enable_checkpointing(model, reentrant=config.checkpointing is Checkpointing.REENTRANT)
    from qlora.models.saving import attach_save_pretrained  # late import: saving imports this module

    attach_save_pretrained(model)  # model.save_pretrained(dir) -> qlora.save_pretrained (it fails otherwise)
    return model_report(model, before)


def _enable_checkpointing(model: nn.Module, *, reentrant: bool) -> None:
    # Reentrant checkpointing only backpropagates into a checkpointed block if one of its tensor inputs
    # requires grad; with a frozen embedding none does, and the adapters inside would get no gradient.
    # So the embedding's output is made to require grad (what transformers' enable_input_require_grads
    # and peft's prepare_model_for_kbit_training do).
    if not hasattr(model, "gradient_checkpointing_enable"):
        raise ValueError(f"{type(model).__name__} is not a transformers model: it has no gradient checkpointing")
    if reentrant:
        model.enable_input_require_grads()
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _merged_module(module: QLoRALinear, dtype: torch.dtype) -> nn.Module:
    """A plain layer with the merged weight deq(W) + s·B·A; Conv1D again when the original was one."""
    merged = module.to_linear(dtype)
    if module.from_conv1d:
        from transformers.pytorch_utils import Conv1D

        conv = Conv1D(module.out_features, module.in_features).to(dtype)
        with torch.no_grad():
            conv.weight.copy_(merged.weight.t())
            conv.bias.copy_(merged.bias if merged.bias is not None else torch.zeros_like(conv.bias))
        merged = conv
    merged.train(module.training)
    return merged


def merge_model(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replaces every QLoRALinear by a plain nn.Linear with the merged weight deq(W) + s·B·A (in place).

    GPT-2's Conv1D layers come back as Conv1D (weight (in, out)), so the model saves in its own layout.
    `merge_and_unload` does the same on a copy and leaves `model` as it is.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, QLoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _merged_module(module, dtype))
    return model


def merge_and_unload(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A NEW model in which every QLoRALinear is a plain layer holding deq(W) + s·B·A (PEFT's
    `merge_and_unload`, which however works in place); `model` and its adapters stay unchanged.

    Everything else is deep-copied and cast to `dtype` too, so the copy is one dtype throughout: it runs
    as it is (a bf16 linear after fp32 norms fails a matmul's dtype check) and `save_pretrained` writes
    `dtype` weights, as `qlora merge` does. The quantized layers are not copied: their merged replacements
    are built from the originals and put in place of the copies, so the copy never holds a second set of
    quantized buffers. `merged.save_pretrained(dir)` is transformers' own, with files of normal permissions.

    Args:
        model: a prepared model (a model without QLoRALinear layers is simply copied).
        dtype: the dtype of every floating tensor of the copy (merged weights computed in fp32, rounded once).
    """
    import copy

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    memo = {id(m): _merged_module(m, dtype) for m in model.modules() if isinstance(m, QLoRALinear)}
    merged = copy.deepcopy(model, memo).to(dtype)
    from qlora.models.saving import attach_plain_save_pretrained  # late import: saving imports this module

    merged.__dict__.pop("save_pretrained", None)  # qlora.save_pretrained's hook: a plain model saves as usual,
    return attach_plain_save_pretrained(merged)  # with normal file permissions
