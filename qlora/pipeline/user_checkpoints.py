"""`qlora quantize` and `qlora merge`: a model -> a 4-bit checkpoint folder; adapter + base -> a bf16 folder.

Quantizing streams the model (`qlora.from_pretrained`: each linear weight quantized as it is read, peak
RAM near the quantized size plus one layer) and writes it with `qlora.save_pretrained` in the
transformers + bitsandbytes layout (NF4/FP4 folders load in transformers with bitsandbytes too); BF16
writes a plain bf16 folder. Merging loads the base quantized exactly as the adapter was trained on
(its `qlora_quant.json`), folds the adapters in and writes a plain transformers folder
(`qlora.models.export.export_merged`); the tokenizer files go along.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from qlora.config import ModelConfig, ModelKind, QuantConfig
from qlora.pipeline.outputs import OutputKind, mark_output
from qlora.pipeline.tracking import Tracking, quant_params


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

    def run(self, tracking: Tracking, cache_dir: str | Path, *, progress: bool = True) -> dict:
        """Writes `out_dir` (bf16 weights, the base's tokenizer files); returns {"weight_mb", "seconds"}."""
        from qlora.models.export import export_merged
        from qlora.models.pretrained import from_pretrained
        from qlora.models.saving import model_quant_config
        from qlora.pipeline.user_model import model_folder, model_params

        started = time.time()
        folder = model_folder(self.base, cache_dir)
        model = from_pretrained(folder, adapter=self.adapter, progress=progress)
        quant = model_quant_config(model)
        export_merged(model, self.out_dir, tokenizer_dir=folder)
        mark_output(self.out_dir, OutputKind.MERGED)
        out = {"weight_mb": _folder_mb(self.out_dir), "seconds": time.time() - started}
        tracking.log(f"merge {self.out_dir}", params={**model_params(self.base), **quant_params(quant), "adapter": str(self.adapter),
                                                     "out": str(self.out_dir)},
                     metrics=out, tags={"stage": "cli_merge"}, config=self, started=started)  # fmt: skip
        return out


def adapter_base(adapter: str | Path) -> str | None:
    """The base an adapter folder names (`base_model_name_or_path` of its adapter_config.json), or None."""
    from qlora.readers import read_json

    config = read_json(Path(adapter) / "adapter_config.json", "adapter config")
    base = config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None
