"""`qlora quantize`, `qlora merge` and `qlora export`: a model -> a 4-bit checkpoint folder; adapter + base ->
a bf16 folder (or, re-quantized, an NF4 one); adapter + base or a merged folder -> a GGUF file.

Quantizing streams the model (`qlora.from_pretrained`: each linear weight quantized as it is read, peak
RAM near the quantized size plus one layer) and writes it with `qlora.save_pretrained` in the
transformers + bitsandbytes layout (NF4/FP4 folders load in transformers with bitsandbytes too); BF16
writes a plain bf16 folder. Merging loads the base quantized exactly as the adapter was trained on
(its `qlora_quant.json`), folds the adapters in and writes a plain transformers folder
(`qlora.models.export.export_merged`); the tokenizer files go along. `MergeTarget.NF4` re-quantizes the
merged weights to NF4+DQ (`export_merged_quantized`), at the cost benchmarks/shipping_costs.py measures.
Exporting GGUF merges the same way and writes one file (`qlora.models.gguf_export`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qlora.config import ModelConfig, ModelKind, QuantConfig
from qlora.pipeline.outputs import OutputKind, mark_output
from qlora.pipeline.tracking import Tracking, quant_params

if TYPE_CHECKING:
    from qlora.models.export import MergeTarget
    from qlora.models.gguf_export import GGUFExport, GGUFType


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**20


@dataclasses.dataclass(frozen=True)
class QuantizeModelJob:
    model: ModelConfig
    quant: QuantConfig
    out_dir: Path

    def run(self, tracking: Tracking, cache_dir: str | Path, *, progress: bool = True) -> dict:
        """Writes `out_dir`; returns {"bits_per_param", "weight_mb", "seconds", "layers"}.

        Raises:
            ConfigError: the model is not a causal LM.
            FileNotFoundError: the model is not available.
        """
        from transformers import AutoTokenizer

        from qlora.models.loading import quantize_checkpoint
        from qlora.models.pretrained import from_pretrained
        from qlora.models.saving import Save, save_pretrained
        from qlora.nn.linear import QLoRALinear
        from qlora.pipeline.user_model import model_folder, model_params
        from qlora.quant.dtypes import bits_per_param

        if self.model.kind is not ModelKind.CAUSAL_LM:
            from qlora.checks import ConfigError

            raise ConfigError("model.kind", self.model.kind.name, "CAUSAL_LM: `qlora quantize` writes causal LMs")
        started = time.time()
        folder = model_folder(self.model, cache_dir)
        if not self.quant.dtype.is_quantized:
            quantize_checkpoint(folder, ModelKind.CAUSAL_LM, self.quant, self.out_dir)  # a plain bf16 folder
            layers = 0
        else:
            model = from_pretrained(folder, quant=self.quant, progress=progress)
            layers = sum(isinstance(m, QLoRALinear) for m in model.modules())
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder))
            except (OSError, ValueError):
                tokenizer = None  # a model folder without a tokenizer: the checkpoint has none either
            save_pretrained(model, self.out_dir, what=Save.QUANTIZED_MODEL, tokenizer=tokenizer)
        mark_output(self.out_dir, OutputKind.QUANTIZED)
        q = self.quant
        out = {"bits_per_param": bits_per_param(q.dtype, q.block_size, q.double_quant) if q.dtype.is_quantized else 16.0,
               "weight_mb": _folder_mb(self.out_dir), "layers": layers, "seconds": time.time() - started}  # fmt: skip
        tracking.log(f"quantize {self.out_dir}", params={**model_params(self.model), **quant_params(q), "out": str(self.out_dir)},
                     metrics=out, tags={"stage": "cli_quantize"}, config=self, started=started)  # fmt: skip
        return out


@dataclasses.dataclass(frozen=True)
class MergeJob:
    base: ModelConfig
    adapter: Path
    out_dir: Path
    into: MergeTarget | None = None  # None: MergeTarget.BF16

    def run(self, tracking: Tracking, cache_dir: str | Path, *, progress: bool = True) -> dict:
        """Writes `out_dir` (bf16 weights, or NF4+DQ for `MergeTarget.NF4`, with the base's tokenizer);
        returns {"weight_mb", "seconds"}."""
        from qlora.models.export import MergeTarget, export_merged, export_merged_quantized, nf4_target
        from qlora.models.pretrained import from_pretrained
        from qlora.models.saving import model_quant_config
        from qlora.pipeline.user_model import model_folder, model_params

        started = time.time()
        folder = model_folder(self.base, cache_dir)
        model = from_pretrained(folder, adapter=self.adapter, progress=progress)
        quant = model_quant_config(model)
        if (self.into or MergeTarget.BF16) is MergeTarget.NF4:
            export_merged_quantized(model, self.out_dir, nf4_target(quant), tokenizer=_tokenizer(folder))
        else:
            export_merged(model, self.out_dir, tokenizer_dir=folder)
        mark_output(self.out_dir, OutputKind.MERGED)
        out = {"weight_mb": _folder_mb(self.out_dir), "seconds": time.time() - started}
        into = (self.into or MergeTarget.BF16).value
        tracking.log(f"merge {self.out_dir}", params={**model_params(self.base), **quant_params(quant), "adapter": str(self.adapter),
                                                     "out": str(self.out_dir), "into": into},
                     metrics=out, tags={"stage": "cli_merge"}, config=self, started=started)  # fmt: skip
        return out


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):
        return None  # a model folder without a tokenizer


@dataclasses.dataclass(frozen=True)
class ExportGGUFJob:
    """An adapter (on `base`) or a model folder -> one GGUF file (`qlora.models.gguf_export.export_gguf`)."""

    source: Path  # a PEFT adapter folder, a merged/plain model folder, or a 4-bit checkpoint folder
    base: ModelConfig | None  # the adapter's base (None: a model folder, or the base the adapter names)
    gguf_type: GGUFType
    out: Path
    overwrite: bool = False

    def run(self, tracking: Tracking, cache_dir: str | Path) -> GGUFExport:
        """Writes `out`; returns what was written.

        Raises:
            ValueError: an architecture GGUF export does not write (before anything loads), or a bad folder.
            FileExistsError: `out` exists, is not an earlier export, and `overwrite` is False.
        """
        from qlora.models.gguf_export import export_gguf
        from qlora.pipeline.user_model import model_folder

        started = time.time()
        base = model_folder(self.base, cache_dir) if self.base is not None else None
        result = export_gguf(self.source, self.out, self.gguf_type, base_model=base, overwrite=self.overwrite)
        tracking.log(f"export gguf {self.source.name}", params={"source": str(self.source), "gguf_type": self.gguf_type.value,
                                                                 "base": str(base or "")},
                     metrics={"file_mb": result.file_bytes / 2**20, "parameters": result.parameters, "seconds": result.seconds},
                     tags={"stage": "cli_export"}, config=self, started=started)  # fmt: skip
        return result


def adapter_base(adapter: str | Path) -> str | None:
    """The base an adapter folder names (`base_model_name_or_path` of its adapter_config.json), or None."""
    from qlora.readers import read_json

    config = read_json(Path(adapter) / "adapter_config.json", "adapter config")
    base = config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None
