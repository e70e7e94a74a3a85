"""`qlora info`: what a checkpoint or adapter folder holds — data type, bits per parameter, sizes.

Sizes are in MiB (2**20 bytes), and their keys say so (`files_mib`, `weight_mib`, ...).

Reads only what is on disk: the JSON configs and the safetensors headers (shapes and dtypes), plus the
quantization state of a 4-bit folder (read through `qlora.models.bnb_checkpoint`, so a folder that
lies gives the same named error as when loading it).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def _header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor: (dtype, shape)} from a safetensors header, without reading the tensors."""
    from qlora.readers import BadFileError

    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if size <= 0 or size > path.stat().st_size - 8:
            raise BadFileError(path, None, "not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadFileError(path, None, f"not a safetensors file ({e})") from None
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def _tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(_header(f))
    return out


def _files_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20


def describe(path: str | Path) -> dict:
    """A summary of a folder: `kind` "adapter", "quantized model" or "model", and what it holds.

    Raises:
        FileNotFoundError: no such folder, or it holds neither an adapter nor a model.
        BadFileError (ValueError): a file that is not what it claims (names the file and the key).
    """
    from qlora.models.loading import QUANT_FILE, read_quant_config
    from qlora.quant.dtypes import bits_per_param
    from qlora.readers import read_json

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    info: dict = {"path": str(folder), "files_mib": round(_files_mib(folder), 3)}
    if (folder / "adapter_config.json").is_file():
        config = read_json(folder / "adapter_config.json", "adapter config")
        tensors = _tensors(folder)
        params = sum(math.prod(s) for _, s in tensors.values())
        info.update(kind="adapter", peft_type=config.get("peft_type"), task_type=config.get("task_type"),
                    base_model=config.get("base_model_name_or_path"), rank=config.get("r"), alpha=config.get("lora_alpha"),
                    dropout=config.get("lora_dropout"), target_modules=_targets(config.get("target_modules")),
                    adapter_params=params, adapter_mib=round(sum(math.prod(s) * _DTYPE_BYTES.get(d, 4) for d, s in tensors.values()) / 2**20, 3))  # fmt: skip
        quant = read_quant_config(folder) if (folder / QUANT_FILE).is_file() else None
        if quant is not None:
            info.update(_quant_info(quant, bits_per_param))
        return info
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: neither an adapter (adapter_config.json) nor a model (config.json)")
    config = read_json(folder / "config.json", "model config")
    info.update(architecture=(config.get("architectures") or ["?"])[0], model_type=config.get("model_type"))
    quant = read_quant_config(folder)
    if quant is None or not quant.dtype.is_quantized:  # a plain folder (BF16: `qlora quantize ... quant=bf16`)
        if quant is not None:
            info.update(_quant_info(quant, bits_per_param))
        tensors = _tensors(folder)
        counts = Counter()
        for d, s in tensors.values():
            counts[d] += math.prod(s)
        info.update(kind="model", params=sum(counts.values()), tensor_dtypes={d.lower(): n for d, n in sorted(counts.items())},
                    weight_mib=round(sum(n * _DTYPE_BYTES.get(d, 4) for d, n in counts.items()) / 2**20, 3),
                    bits_per_param=round(8 * sum(n * _DTYPE_BYTES.get(d, 4) for d, n in counts.items()) / max(1, sum(counts.values())), 3))  # fmt: skip
        if (folder / "adapter" / "adapter_config.json").is_file():
            info["adapter"] = describe(folder / "adapter")
        return info
    from qlora.models.bnb_checkpoint import load_quantized_checkpoint

    info.update(kind="quantized model", **_quant_info(quant, bits_per_param))
    checkpoint = load_quantized_checkpoint(folder)
    q_params = sum(q.numel for q in checkpoint.quantized.values())
    q_bytes = sum(q.storage_bytes() for q in checkpoint.quantized.values())
    other = list(checkpoint.tensors.values())
    info.update(quantized_layers=len(checkpoint.quantized), quantized_params=q_params,
                stored_bits_per_param=round(8 * q_bytes / q_params, 4) if q_params else 0.0,
                quantized_mib=round(q_bytes / 2**20, 3), other_params=sum(t.numel() for t in other),
                other_mib=round(sum(t.numel() * t.element_size() for t in other) / 2**20, 3))  # fmt: skip
    if (folder / "adapter" / "adapter_config.json").is_file():
        info["adapter"] = describe(folder / "adapter")
    return info


def _targets(modules) -> str | None:
    """`down_proj, gate_proj, ...` as PEFT's name suffixes say it; full names as `14 modules: down_proj, ...`
    (the distinct layer names) rather than every one of them."""
    if not isinstance(modules, list):
        return modules
    names = sorted({str(m).rsplit(".", 1)[-1] for m in modules})
    if all("." not in str(m) for m in modules):
        return ", ".join(names)
    return f"{len(modules)} modules: {', '.join(names)}"


def _quant_info(quant, bits_per_param) -> dict:
    bits = bits_per_param(quant.dtype, quant.block_size, quant.double_quant) if quant.dtype.is_quantized else 16.0
    return {"data_type": quant.dtype.value, "double_quant": quant.double_quant, "block_size": quant.block_size,
            "compute_dtype": quant.compute_dtype.value, "bits_per_param": round(bits, 4)}  # fmt: skip


def format_info(info: dict, indent: str = "") -> str:
    """The summary as aligned `key: value` lines (nested folders indented)."""
    width = max(len(k) for k in info)
    lines = []
    for key, value in info.items():
        if isinstance(value, dict) and key == "adapter":
            lines.append(f"{indent}{key}:")
            lines.append(format_info(value, indent + "  "))
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        lines.append(f"{indent}{key.ljust(width)}  {value}")
    return "\n".join(lines)
