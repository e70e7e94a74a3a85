"""GGUF export: a merged model as one `.gguf` file that llama.cpp-style runtimes (and transformers'
`from_pretrained(dir, gguf_file=...)`) read, written with the `gguf` package's `GGUFWriter`.

Tensor names, metadata keys and tensor types follow llama.cpp's converter (`convert_hf_to_gguf.py`) for
the three architectures the project runs — Llama, Qwen2 and Gemma 3; any other is refused with one line
before anything is loaded:
- names through `gguf.get_tensor_name_map` (`blk.N.attn_q.weight`, `token_embd.weight`, ...); a tied
  head is not written (the runtime reuses `token_embd`);
- Llama's Q and K rows permuted as the converter does (llama.cpp's rotary embedding pairs adjacent
  elements, transformers' the two halves of each head); Gemma 3's norm weights stored as 1 + w (llama.cpp
  multiplies by the stored weight, transformers by 1 + w);
- 1-D tensors, norms and biases in F32; every other weight in the chosen type. Q8_0 and Q4_0 blocks
  (32 values, an fp16 scale) come from `gguf.quants`, the package's port of ggml's reference quantizers;
  a row whose length is not a multiple of 32 falls back to F16 (as the converter does). Q4_0 keeps the
  token embedding and the output head in Q8_0 (llama.cpp's quantizer keeps them at higher precision too —
  Q6_K, which `gguf.quants` cannot write);
- the tokenizer under `tokenizer.ggml.*` (`qlora.models.gguf_vocab`).

What "the merged model" is, per type (the round-trip tests compare exactly this): BF16 and F16 hold
`merge_and_unload(model, dtype).to(dtype)` — every weight deq(W) + s·B·A computed in fp32 and rounded once
to bf16/fp16, the norms too (BF16 is what `export_merged` writes to a folder); Q8_0 and Q4_0 quantize the
fp32 merge. A folder that already holds a plain model is exported as its weights are.

The file is written atomically. An existing file is replaced only when it is an earlier export (it carries
the `qlora.exporter` key) or with `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import enum
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

EXPORTER_KEY = "qlora.exporter"  # a namespaced custom key (GGUF spec): marks files this module wrote


class GGUFType(enum.Enum):
    """The type of the exported weights (llama.cpp's `--outtype` / file type)."""

    BF16 = "bf16"
    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"


@dataclasses.dataclass(frozen=True)
class _Architecture:
    gguf_name: str  # general.architecture
    permute_qk: bool  # Llama: rotary pairs re-ordered for llama.cpp
    norm_shift: float  # Gemma 3: stored norm = shift + w
    space_prefix: bool | None  # tokenizer.ggml.add_space_prefix, where the converter fixes it


# transformers' model_type -> how llama.cpp's converter writes it
ARCHITECTURES = {
    "llama": _Architecture("llama", permute_qk=True, norm_shift=0.0, space_prefix=None),
    "qwen2": _Architecture("qwen2", permute_qk=False, norm_shift=0.0, space_prefix=None),
    "gemma3_text": _Architecture("gemma3", permute_qk=False, norm_shift=1.0, space_prefix=False),
}


@dataclasses.dataclass(frozen=True)
class GGUFExport:
    """What `export_gguf` wrote."""

    path: Path
    type: GGUFType
    architecture: str  # general.architecture
    tensors: int
    tensor_types: dict[str, int]  # ggml type name -> tensors of that type
    parameters: int
    file_bytes: int
    seconds: float


def _rope(config: dict, layer_type: str = "full_attention") -> dict:
    """{rope_type, rope_theta, factor?} of `layer_type` from a transformers 5 (rope_parameters) or 4 config."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and layer_type in params:
        params = params[layer_type]
    if not isinstance(params, dict):
        params = dict(config.get("rope_scaling") or {})
        params.setdefault("rope_type", params.pop("type", "default"))
    out = dict(params)
    if out.get("rope_theta") is None and config.get("rope_theta") is not None:
        out["rope_theta"] = config["rope_theta"]
    out.setdefault("rope_type", "default")
    return out


def check_architecture(config: dict) -> _Architecture:
    """The architecture of a transformers config.json dict, if GGUF export writes it.

    Raises:
        ValueError: another architecture, or settings llama.cpp's file format cannot express (named).
    """
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ValueError(f"GGUF export knows model_type llama, qwen2 and gemma3_text; this model is {model_type!r} "
                         f"({(config.get('architectures') or ['?'])[0]})")  # fmt: skip
    head = (config.get("architectures") or ["ForCausalLM"])[0]
    if not head.endswith("ForCausalLM"):
        raise ValueError(f"GGUF export writes causal LMs; this model is a {head}")
    rope = _rope(config)
    if rope["rope_type"] not in ("default", "linear"):
        raise ValueError(f"rope type {rope['rope_type']!r}: GGUF export writes default and linear rope scaling only")
    if arch.gguf_name == "gemma3":
        local = _rope(config, "sliding_attention")
        if local.get("rope_theta", 10000.0) != 10000.0 or local["rope_type"] != "default":
            raise ValueError(f"gemma3 local rope {local}: llama.cpp fixes it at theta 10000, default type")
        head_dim = config.get("head_dim", 256)
        if config.get("query_pre_attn_scalar", head_dim) != head_dim:
            raise ValueError(f"gemma3 query_pre_attn_scalar {config['query_pre_attn_scalar']} != head_dim {head_dim}: "
                             "llama.cpp scales queries by head_dim")  # fmt: skip
        n = config["num_hidden_layers"]
        default_pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        if config.get("layer_types") not in (None, default_pattern):
            raise ValueError("gemma3 layer_types differ from the 5 local : 1 global pattern llama.cpp assumes")
    return arch


def _write_hparams(writer, arch: _Architecture, config: dict, file_type: int) -> None:
    """The `<arch>.*` keys, as the converter's set_gguf_parameters writes them."""
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = _rope(config)
    if arch.gguf_name == "gemma3":
        writer.add_context_length(config.get("max_position_embeddings", 131072))
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_file_type(file_type)
        writer.add_rope_freq_base(rope.get("rope_theta", 1_000_000.0))
        writer.add_sliding_window(config["sliding_window"])
        writer.add_head_count_kv(config.get("num_key_value_heads", 4))
    else:
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
        if rope.get("rope_theta") is not None:
            writer.add_rope_freq_base(rope["rope_theta"])
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        if config.get("head_dim") is not None:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_file_type(file_type)
        if arch.gguf_name == "llama":
            writer.add_vocab_size(config["vocab_size"])
            writer.add_rope_dimension_count(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Llama's q/k rows from transformers' rotary layout (halves of each head) to llama.cpp's (adjacent pairs).

    Args:
        weight: (heads * head_dim, ...) a q_proj/k_proj weight or bias.
        heads: attention heads for q, key-value heads for k.
    """
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_qtype(gguf_name: str, data_ndim: int, row: int, gtype: GGUFType):
    import gguf

    Q = gguf.GGMLQuantizationType
    if data_ndim <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if gtype is GGUFType.Q4_0 and gguf_name in ("token_embd.weight", "output.weight"):
        qtype = Q.Q8_0
    else:
        qtype = {GGUFType.BF16: Q.BF16, GGUFType.F16: Q.F16, GGUFType.Q8_0: Q.Q8_0, GGUFType.Q4_0: Q.Q4_0}[gtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if row % block == 0 else Q.F16


def _file_type(gtype: GGUFType) -> int:
    import gguf

    F = gguf.LlamaFileType
    return {GGUFType.BF16: F.MOSTLY_BF16, GGUFType.F16: F.MOSTLY_F16, GGUFType.Q8_0: F.MOSTLY_Q8_0, GGUFType.Q4_0: F.MOSTLY_Q4_0}[gtype]


def _add_tensors(writer, model: nn.Module, config: dict, arch: _Architecture, gtype: GGUFType) -> None:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    tied = bool(config.get("tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{name}: no GGUF tensor name for it in the {arch.gguf_name} layout")
        data = tensor.detach().to(_round_to(gtype)).to(torch.float32)
        if arch.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_rotary(data, heads)
        elif arch.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_rotary(data, kv_heads)
        if arch.norm_shift and name.endswith("norm.weight"):
            data = data + arch.norm_shift
        array = data.contiguous().numpy()
        qtype = _tensor_qtype(gguf_name, array.ndim, array.shape[-1], gtype)
        writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def is_previous_export(path: str | Path) -> bool:
    """Whether `path` is a GGUF file this module wrote (it carries `EXPORTER_KEY`)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return False
        import gguf

        return EXPORTER_KEY in gguf.GGUFReader(path).fields
    except (OSError, ValueError):
        return False


def _check_output(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected the path of the .gguf file to write")
    if path.exists() and not overwrite and not is_previous_export(path):
        raise FileExistsError(f"{path} exists and is not a GGUF file written by qlora export; pass overwrite=True "
                              "(--overwrite) to replace it")  # fmt: skip


def _read_config(folder: Path) -> dict:
    from qlora.readers import read_json

    return read_json(folder / "config.json", "model config")


def _load_folder(folder: Path, gtype: GGUFType) -> nn.Module:
    """The merged model of a model folder (plain, or 4-bit with an optional `adapter/`)."""
    from qlora.models.pretrained import ADAPTER_CONFIG, from_pretrained
    from qlora.models.saving import ADAPTER_SUBDIR

    config = _read_config(folder)
    if "quantization_config" in config or (folder / ADAPTER_SUBDIR / ADAPTER_CONFIG).is_file():
        return _merged(from_pretrained(folder), gtype)
    from transformers import AutoModelForCausalLM

    return _merged(AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto"), gtype)


def _adapter_base(adapter: Path) -> str:
    from qlora.readers import read_json

    base = read_json(adapter / "adapter_config.json", "adapter config").get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base_model_name_or_path; pass the merged model or base_model=")
    return base


def _merged(model: nn.Module, gtype: GGUFType) -> nn.Module:
    """The plain model to write: merged (see the module doc) when it has QLoRALinear layers."""
    from qlora.models.surgery import merge_and_unload
    from qlora.nn.linear import QLoRALinear

    if any(isinstance(m, QLoRALinear) for m in model.modules()):
        model = merge_and_unload(model, _round_to(gtype))  # a copy: the caller's model stays as it is
    return model


def _round_to(gtype: GGUFType) -> torch.dtype:
    """What every tensor is rounded to before it is written (16-bit types: the whole merged model, norms too)."""
    return {GGUFType.BF16: torch.bfloat16, GGUFType.F16: torch.float16}.get(gtype, torch.float32)


def _config_of(model: nn.Module) -> dict:
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config.setdefault("tie_word_embeddings", bool(getattr(model.config, "tie_word_embeddings", False)))
    return config


def export_gguf(model_or_folder: nn.Module | str | Path, path: str | Path, type: GGUFType = GGUFType.Q8_0, *,  # noqa: A002
                tokenizer=None, base_model: str | Path | None = None, name: str | None = None,
                overwrite: bool = False) -> GGUFExport:  # fmt: skip
    """Writes a merged model as a GGUF file (see the module doc).

    Args:
        model_or_folder: a prepared model (merged here: `merge_and_unload`), a plain transformers causal LM,
            or a folder: a merged/plain model folder, a 4-bit checkpoint (+ `adapter/`), or a PEFT adapter
            folder (merged into the base its adapter_config.json names, or `base_model`).
        path: the .gguf file to write.
        type: the weights' type.
        tokenizer: the tokenizer's folder, or a tokenizer object (saved to a temporary folder); None: the
            model folder's (for an adapter, the base's). A model object needs one.
        base_model: the base of an adapter folder, where its adapter_config.json names none or another place.
        name: `general.name` (default: the folder's or the config's name).
        overwrite: replace an existing file that is not an earlier export.

    Returns:
        GGUFExport.

    Raises:
        TypeError: `type` is not a GGUFType.
        ValueError: an architecture or setting GGUF export does not write (before anything is loaded);
            a tokenizer it cannot express; a model object without a tokenizer.
        FileExistsError: `path` exists, is not an earlier export, and `overwrite` is False.
    """
    import gguf

    from qlora.atomic import atomic_path
    from qlora.models.gguf_vocab import read_vocab, tokenizer_kind, write_vocab

    if not isinstance(type, GGUFType):
        raise TypeError(f"type must be a GGUFType ({', '.join(t.value for t in GGUFType)}), got {type!r}")
    started = time.time()
    path = Path(path)
    folder = None if isinstance(model_or_folder, nn.Module) else Path(model_or_folder)
    if folder is not None:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such model or adapter folder")
        is_adapter = not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file()
        if is_adapter:
            from qlora.models.pretrained import resolve_model_dir

            base_dir = resolve_model_dir(base_model or _adapter_base(folder))
            config = _read_config(base_dir)
        else:
            config = _read_config(folder)
    else:
        if tokenizer is None:
            raise ValueError("a model object needs tokenizer= (a folder or a tokenizer): a GGUF file carries its tokenizer")
        config = _config_of(model_or_folder)
    arch = check_architecture(config)  # one line, before any weight is loaded
    _check_output(path, overwrite)

    with tempfile.TemporaryDirectory(prefix="qlora-gguf-tok-") as scratch:
        if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
            tokenizer.save_pretrained(scratch)
            tokenizer = Path(scratch)
        if folder is None:
            tokenizer_kind(tokenizer)  # a tokenizer GGUF cannot carry fails before the merge
            model = _merged(model_or_folder, type)
        elif is_adapter:
            from qlora.models.pretrained import from_pretrained

            tokenizer = Path(tokenizer) if tokenizer is not None else (folder if (folder / "tokenizer.json").is_file() else base_dir)
            tokenizer_kind(tokenizer)
            model = _merged(from_pretrained(base_dir, adapter=folder), type)
        else:
            tokenizer = Path(tokenizer) if tokenizer is not None else folder
            tokenizer_kind(tokenizer)
            model = _load_folder(folder, type)
        config = _config_of(model)
        vocab = read_vocab(tokenizer, config["vocab_size"], space_runs_user_defined=arch.gguf_name == "gemma3")

        writer = gguf.GGUFWriter(path=None, arch=arch.gguf_name)
        _add_tensors(writer, model, config, arch, type)
        del model
        total, *_ = writer.get_total_parameter_count()
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or (folder.name if folder is not None else str(config.get("_name_or_path") or "model")))
        writer.add_size_label(gguf.size_label(total, 0, 0, 0))
        _write_hparams(writer, arch, config, _file_type(type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab(writer, vocab, add_space_prefix=arch.space_prefix)
        writer.add_string(EXPORTER_KEY, f"qlora-pipeline {_version()} ({type.value})")
        types = Counter(t.dtype.name for shard in writer.tensors for t in shard.values())
        with atomic_path(path) as tmp:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    return GGUFExport(path, type, arch.gguf_name, sum(types.values()), dict(sorted(types.items())), total,
                      path.stat().st_size, time.time() - started)  # fmt: skip


def _version() -> str:
    from qlora import __version__

    return __version__


__all__ = ["ARCHITECTURES", "EXPORTER_KEY", "GGUFExport", "GGUFType", "check_architecture", "export_gguf", "is_previous_export",
           "permute_rotary"]  # fmt: skip
