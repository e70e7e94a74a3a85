"""Quantizing a base model folder to one data type (a checkpoint folder in the bitsandbytes layout)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.config import Method, ModelConfig, QuantConfig
from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, PipelineConfig
from qlora.pipeline.params import lookup, whole
from qlora.pipeline.tracking import Tracking, base_row, quant_params  # noqa: F401 (quant_params: re-exported)


@dataclasses.dataclass(frozen=True)
class QuantizeJob:
    model_key: str
    model: ModelConfig
    quant_name: str  # a key of `quants`, or "main"
    quant: QuantConfig

    def run(self, tracking: Tracking) -> Path:
        import time

        from qlora.models.loading import load_for_training, quantize_checkpoint
        from qlora.models.surgery import model_report
        from qlora.quant.dtypes import bits_per_param

        started = time.time()
        out = quantize_checkpoint(paths.model_dir(self.model_key), self.model.kind, self.quant,
                                  paths.quantized_dir(self.model_key, self.quant_name))  # fmt: skip
        size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
        bits = bits_per_param(self.quant.dtype, self.quant.block_size, self.quant.double_quant) if self.quant.dtype.is_quantized else 16.0
        # the frozen weights as training holds them (the memory table's weight MB): on disk, a BF16 folder keeps
        # embeddings in bf16 and a 4-bit one in fp32, so file sizes do not compare across data types
        report = model_report(load_for_training(out, self.model.kind, self.quant, None))
        sizes = {"weight_mb": report.weight_bytes_after / 2**20, "linear_weight_mb": report.quantized_bytes / 2**20,
                 "checkpoint_mb": size / 2**20}  # fmt: skip
        tracking.log(f"quantize {self.model_key} {self.quant_name}",
                     params={"model": self.model.name, "method": Method.NONE.value, **quant_params(self.quant)},
                     metrics={"bits_per_param": bits, **sizes}, started=started,
                     tags={"stage": "quantize", "model": self.model.name, "quant": self.quant.label},
                     row=base_row(self.model_key, self.model.name, self.quant_name, self.quant),
                     row_metrics={"bits_per_param": bits, "weight_mb": sizes["weight_mb"], "linear_weight_mb": sizes["linear_weight_mb"]},
                     config=self)  # fmt: skip
        return out


def plan_quantize(params: PipelineConfig, model_key: str, quant_name: str) -> QuantizeJob:
    if quant_name == paths.MAIN:
        return QuantizeJob(CAUSAL, lookup(params.models, CAUSAL, "models"), paths.MAIN, whole(params.quant))
    return QuantizeJob(model_key, lookup(params.models, model_key, "models"), quant_name, lookup(params.quants, quant_name, "quants"))
