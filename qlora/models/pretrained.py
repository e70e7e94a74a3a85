"""`qlora.from_pretrained`: a transformers model with its linear layers quantized while it loads.

Loading a model in full precision and then calling `prepare_model` needs the whole float model in
memory first (Qwen2.5-0.5B: 2.5 GB in fp32) although it ends at a fraction of that. Here the model's
skeleton is built with its parameters on the meta device (no memory; buffers such as rotary tables
are real), and the safetensors file(s) are read one module at a time: each targeted linear weight is
quantized into a `QLoRALinear` as soon as it is read, everything else is materialised as it is. Peak
RAM stays near the quantized model plus one layer (measured in reports/performance.md).

Each module's tensors are read through its own short-lived `safe_open`: safetensors memory-maps the
file, and touched pages of a mapping count towards the process's resident memory until it is closed.

The result equals `load_base` + `prepare_model` bit for bit (same float input to the same quantizer,
same post-processing: frozen base, fp32 norms, trainable classification head). Folders that already
hold a quantized model (transformers + bitsandbytes 4-bit, or ours) are read as they are, without
re-quantizing (`qlora.models.loading.load_quantized_model`); a PEFT adapter folder (ours or PEFT's) is
loaded on top when given, or when the folder holds one in `adapter/` (as `qlora.save_pretrained` writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from qlora.checks import parse_enum
from qlora.config import Checkpointing, LoRAConfig, ModelKind, QuantConfig, Targets
from qlora.models.surgery import CLASSIFICATION_HEADS, _enable_checkpointing, _is_conv1d, linear_modules, select_targets
from qlora.nn.linear import QLoRALinear
from qlora.quant.api import quantize

ADAPTER_CONFIG = "adapter_config.json"


def could_be_hub_id(text: str) -> bool:
    """Whether `text` has a hub id's form (`name` or `org/name`); `../x`, `/abs/x`, `a/b/c` are paths."""
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(p and p[0].isalnum() and ".." not in p and all(c.isalnum() or c in "-_." for c in p) for p in parts)


def resolve_model_dir(path_or_hub_id: str | Path) -> Path:
    """A local folder as is; a hub id through the Hugging Face cache (downloads only when online).

    Raises:
        FileNotFoundError: a path that is not a folder, or a hub id not available here.
    """
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if path.exists() or not could_be_hub_id(str(path_or_hub_id)):
        raise FileNotFoundError(f"{path_or_hub_id}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
        return Path(snapshot_download(str(path_or_hub_id), allow_patterns=patterns))
    except Exception as e:  # offline misses and unknown ids end here
        reason = "offline" if type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") else type(e).__name__
        raise FileNotFoundError(f"{path_or_hub_id}: no such model folder, and no hub id available here ({reason})") from None


def from_pretrained(path_or_hub_id: str | Path, *, quant: QuantConfig | None = None, lora: LoRAConfig | None = None,
                    kind: ModelKind = ModelKind.CAUSAL_LM, num_labels: int | None = None, adapter: str | Path | None = None,
                    checkpointing: Checkpointing = Checkpointing.OFF, dtype: torch.dtype = torch.float32,
                    progress: bool = False) -> nn.Module:  # fmt: skip
    """A transformers model whose targeted linear layers are quantized as they load (see the module doc).

    Args:
        path_or_hub_id: a model folder (float safetensors, or a 4-bit one saved by transformers +
            bitsandbytes or by `qlora.save_pretrained`) or a hub id.
        quant: how to store the base; None: as recorded with the adapter or the folder
            (`qlora_quant.json`, or a bitsandbytes `quantization_config`), else NF4+DQ block 64. For a
            folder that is already quantized its storage must match what the folder holds.
        lora: fresh adapters on the layers `lora.targets` selects (None: none, unless an adapter is
            loaded). Every linear layer but the head is quantized whatever the targets (paper §4).
        kind: causal LM or sequence classifier (its head, new or loaded, is trained in full).
        num_labels: for `ModelKind.SEQ_CLS`; None: from the adapter's head, else config.json's labels
            (as transformers: a config saved without labels says 2).
        adapter: a PEFT LoRA adapter folder to load (its rank, alpha and target modules set the
            adapters; `lora` must then be None). One trained on another base is refused before
            anything loads; one from a base of the same shapes but other weights (its `qlora_base.json`
            fingerprint) loads with a UserWarning. None: `path_or_hub_id/adapter` if there is one (as
            `qlora.save_pretrained` writes it beside a whole model) and `lora` is None.
        checkpointing: gradient checkpointing of the blocks, as in `SurgeryConfig` (a `Checkpointing`, or
            its name or value as a string, case-insensitively).
        dtype: the dtype of everything not quantized (embeddings, head, biases), as `load_base`.
        progress: a progress bar over the layers quantized while loading.

    Returns:
        The model in eval mode; only the adapters (and a classification head) require grad.

    Raises:
        ValueError: a bad combination of arguments, an adapter for another base (one line naming both,
            before any quantizing), or a folder whose tensors do not match its config;
            ConfigError (a ValueError) for a `checkpointing` that is no Checkpointing.
        FileNotFoundError: the folder or hub id is not available.
    """
    from qlora.models.loading import QUANT_FILE, read_quant_config
    from qlora.models.peft_format import load_peft_adapter
    from qlora.models.saving import ADAPTER_SUBDIR, attach_save_pretrained

    if quant is not None and not isinstance(quant, QuantConfig):
        raise TypeError(f"quant must be a QuantConfig, got {type(quant).__name__}")
    checkpointing = parse_enum("checkpointing", checkpointing, Checkpointing)  # "off" is OFF, "sometimes" a ConfigError
    if not isinstance(kind, ModelKind):
        raise TypeError(f"kind must be a ModelKind ({[k.value for k in ModelKind]}), got {kind!r}")
    if kind is ModelKind.CAUSAL_LM and num_labels is not None:
        raise ValueError(f"num_labels={num_labels!r} is for kind=ModelKind.SEQ_CLS, not {kind}")
    directory = resolve_model_dir(path_or_hub_id)
    if not (directory / "config.json").is_file():
        hint = " (a PEFT adapter folder: pass its base model as path and this folder as adapter=)" if (directory / ADAPTER_CONFIG).is_file() else ""
        raise FileNotFoundError(f"{directory} has no config.json{hint}")
    if adapter is None and lora is None and (directory / ADAPTER_SUBDIR / ADAPTER_CONFIG).is_file():
        adapter = directory / ADAPTER_SUBDIR
    weights = None
    if adapter is not None:
        if lora is not None:
            raise ValueError(f"pass either lora (fresh adapters) or adapter (a saved one: {adapter}), not both")
        weights = load_peft_adapter(adapter)
        lora = LoRAConfig(rank=weights.rank, alpha=weights.alpha, dropout=weights.dropout, targets=Targets.NAMES,
                          target_names=tuple(sorted(weights.lora)))  # fmt: skip
        if quant is None and (Path(adapter) / QUANT_FILE).is_file():
            quant = read_quant_config(adapter)
    quant = quant or read_quant_config(directory) or QuantConfig()

    config = json.loads((directory / "config.json").read_text())
    if kind is ModelKind.SEQ_CLS and num_labels is None:
        from qlora.models.loading import adapter_num_labels

        num_labels = (adapter_num_labels(weights) if weights is not None else None) or len(config.get("id2label") or {}) or None
        if num_labels is None:
            raise ValueError(f"{directory} has no classification labels (no id2label in config.json): pass num_labels")
    if weights is not None:  # a wrong base is refused from its config, before any weight is read
        from qlora.models.base_record import check_adapter_fits

        check_adapter_fits(adapter, weights.lora, path_or_hub_id, config, lambda: meta_skeleton(config, kind, num_labels),
                           target_modules=weights.target_modules)  # fmt: skip
    if "quantization_config" in config:
        model = _load_quantized(directory, kind, quant, lora, dtype)
    else:
        model = _load_streaming(directory, kind, quant, lora or LoRAConfig(rank=0), num_labels, dtype, progress)
    if weights is not None:
        from qlora.models.base_record import warn_if_other_base
        from qlora.models.loading import load_adapter_into

        load_adapter_into(model, weights)
        warn_if_other_base(adapter, model, path_or_hub_id)
    if checkpointing is not Checkpointing.OFF:
        _enable_checkpointing(model, reentrant=checkpointing is Checkpointing.REENTRANT)
    attach_save_pretrained(model)
    return model.eval()


def _load_quantized(directory: Path, kind: ModelKind, quant: QuantConfig, lora: LoRAConfig | None, dtype: torch.dtype) -> nn.Module:
    from qlora.models.loading import load_quantized_model

    model = load_quantized_model(directory, kind, lora=lora, compute_dtype=quant.compute_dtype, dtype=dtype)
    stored = {(m.weight.dtype, m.weight.double_quant_format, m.weight.block_size) for m in model.modules() if isinstance(m, QLoRALinear)}
    wanted = (quant.dtype, quant.double_quant_mode, quant.block_size)
    if stored and stored != {wanted}:
        dq_text = lambda dq: "False" if dq is None else ("True" if dq.value == "dynamic" else dq.value)  # noqa: E731
        held = ", ".join(f"{d.value} double_quant={dq_text(dq)} block_size={b}" for d, dq, b in sorted(stored, key=str))
        raise ValueError(f"{directory} holds {held}; quant asks for {quant.dtype.value} double_quant={dq_text(quant.double_quant_mode)} "
                         f"block_size={quant.block_size} (pass quant=None to load it as it is)")  # fmt: skip
    return model


def _safetensors_index(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (one file, or the shards of a sharded checkpoint)."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {directory} (pickled .bin checkpoints are not read)")
    index: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            index.update(dict.fromkeys(fh.keys(), f))
    return index


def _read(index: dict[str, Path], keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors `keys` (owned copies), one short-lived mapping per file touched."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(index[key], []).append(key)
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as fh:
            for name in names:
                yield name, fh.get_tensor(name)


def _release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc `malloc_trim`; a no-op elsewhere).

    # Note: glibc serves the per-layer fp32 temporaries (a few MB, below its dynamic mmap threshold)
    # from the heap, and the small quantized buffers allocated between them fragment it, so freed
    # temporaries stay resident: without this, loading SmolLM2 streamed peaked at 0.97 GiB RSS instead
    # of 0.58 GiB. Released pages fault in again when reused, so it runs once per `_TRIM_EVERY` bytes
    # read, not per layer.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
        if _LIBC is not False and not hasattr(_LIBC, "malloc_trim"):
            _LIBC = False
    if _LIBC is not False:
        _LIBC.malloc_trim(0)


_LIBC = None
_TRIM_EVERY = 64 * 2**20  # bytes of float weights read between two `_release_free_heap` calls


def _skeleton(directory: Path, kind: ModelKind, num_labels: int | None, dtype: torch.dtype) -> nn.Module:
    """The model with every parameter on the meta device (buffers real), from config.json."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {"num_labels": num_labels} if kind is ModelKind.SEQ_CLS else {}
    config = AutoConfig.from_pretrained(str(directory), **kwargs)
    auto = AutoModelForCausalLM if kind is ModelKind.CAUSAL_LM else AutoModelForSequenceClassification
    with init_empty_weights(include_buffers=False):
        return auto.from_config(config, dtype=dtype)


def meta_skeleton(config: dict, kind: ModelKind, num_labels: int | None = None) -> nn.Module:
    """The model a config.json dict describes, every parameter on the meta device (no memory, ~0.1 s for
    SmolLM2): its module names and layer shapes, to check an adapter against before loading anything."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    settings = {k: v for k, v in config.items() if k != "quantization_config"}
    if kind is ModelKind.SEQ_CLS and num_labels is not None:
        settings = {k: v for k, v in settings.items() if k not in ("id2label", "label2id")} | {"num_labels": num_labels}
    auto = AutoModelForCausalLM if kind is ModelKind.CAUSAL_LM else AutoModelForSequenceClassification
    with init_empty_weights(include_buffers=True):
        return auto.from_config(AutoConfig.for_model(**settings))


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    module_name, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise KeyError(key)


def _load_streaming(directory: Path, kind: ModelKind, quant: QuantConfig, lora: LoRAConfig, num_labels: int | None,
                    dtype: torch.dtype, progress: bool = False) -> nn.Module:  # fmt: skip
    from tqdm.auto import tqdm

    index = _safetensors_index(directory)
    model = _skeleton(directory, kind, num_labels, dtype)
    expected = dict(model.state_dict(keep_vars=True))  # every parameter and persistent buffer, by key

    # checkpoints of the bare base (e.g. BertModel) lack the task model's prefix ("bert.")
    prefix = getattr(model, "base_model_prefix", "")
    rename = {}
    for key in index:
        if key not in expected and prefix and f"{prefix}.{key}" in expected:
            rename[key] = f"{prefix}.{key}"
    file_key = {rename.get(k, k): k for k in index}

    targets = linear_modules(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layer to quantize")
    adapted = set(select_targets(targets, lora)) if lora.rank else set()
    loaded: set[str] = set()
    read_since_trim = 0
    for name in tqdm(targets, desc=f"quantize {quant.label}", disable=not progress, dynamic_ncols=True):
        module = model.get_submodule(name)
        keys = [f"{name}.weight"] + ([f"{name}.bias"] if getattr(module, "bias", None) is not None else [])
        missing = [k for k in keys if k not in file_key]
        if missing:
            raise ValueError(f"{directory}: no tensor {missing} for the linear layer {name} of {type(model).__name__}")
        tensors = {rename.get(k, k): t.to(dtype) for k, t in _read(index, [file_key[k] for k in keys])}
        weight, transposed = tensors[f"{name}.weight"], _is_conv1d(module)
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise ValueError(f"{directory}: {name}.weight has shape {tuple(weight.shape)}, the config says {tuple(module.weight.shape)}")
        weight = weight.t() if transposed else weight
        new = QLoRALinear(quantize(weight, quant.dtype, quant.block_size, quant.double_quant_mode or False), tensors.get(f"{name}.bias"),
                          lora=lora if name in adapted else None, compute_dtype=quant.compute_dtype)  # fmt: skip
        new.from_conv1d = transposed
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        loaded.update(keys)
        read_since_trim += weight.numel() * weight.element_size()
        del tensors, weight
        if read_since_trim >= _TRIM_EVERY:
            _release_free_heap()
            read_since_trim = 0

    rest = [k for k in file_key if k not in loaded]
    unexpected = [k for k in rest if k not in expected]
    if unexpected:
        raise ValueError(f"{directory}: tensors the model ({type(model).__name__}) does not have: {unexpected[:5]}")
    for key, value in _read(index, [file_key[k] for k in rest]):
        key = rename.get(key, key)
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{directory}: {key} has shape {tuple(value.shape)}, the config says {tuple(expected[key].shape)}")
        _set_tensor(model, key, value.to(dtype) if value.is_floating_point() else value)
        loaded.add(key)

    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    heads = [n for n, _ in model.named_modules() if n.split(".")[-1] in CLASSIFICATION_HEADS]
    for name in heads:  # a new classification head: initialised as transformers does, trained in full
        head = model.get_submodule(name)
        if any(p.is_meta for p in head.parameters()):
            head.to_empty(device="cpu")
            model._init_weights(head)
        for p in head.parameters():
            p.requires_grad = True
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise ValueError(f"{directory}: the checkpoint lacks {still_meta[:5]} ({len(still_meta)} tensors)")
    for module in model.modules():  # as prepare_model: norms in fp32
        if "norm" in type(module).__name__.lower():
            module.float()
    return model
