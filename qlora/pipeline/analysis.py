"""Stage `analysis@<name>`: the measurements behind claims (h) and (i) of the findings (issue 19).

- `memory` (h): a QLoRA training step of `models.causal` (stored as `analysis.memory.quant`), memory by
  part (`qlora.train.memory_breakdown`) for every LoRA rank x sequence length, with gradient checkpointing
  off and on: metrics/analysis/memory.json (+ .csv) and reports/analysis_memory.png.
- `outliers` (i): weight statistics (`qlora.quant.weight_stats`) of every linear weight of the embedded
  GGUF models, read from their files tensor by tensor (`qlora.data.gguf_weights`), per-model means and the
  trend over size with bootstrap intervals (`qlora.report.size_trend`): metrics/analysis/outliers.json
  (+ .csv, one row per layer) and reports/analysis_outliers.png. A model whose package is not installed
  (the optional Qwen2.5-Coder-1.5B) is recorded as not measured.

The report stage turns the JSON files into the findings' sections (`qlora.report.analyses`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.config import LoRAConfig, ModelSource, QuantConfig
from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, Analysis, MemoryAnalysisConfig, OutlierAnalysisConfig, PipelineConfig
from qlora.pipeline.params import lookup, whole
from qlora.pipeline.tracking import Tracking

# the embedded GGUF models by name in reports (their `general.name` metadata is not uniform)
GGUF_NAMES = {ModelSource.SMOLLM2: "SmolLM2-135M-Instruct", ModelSource.GEMMA3_270M: "Gemma-3-270M",
              ModelSource.QWEN25_CODER_05B: "Qwen2.5-Coder-0.5B-Instruct", ModelSource.QWEN25_CODER_15B: "Qwen2.5-Coder-1.5B-Instruct"}  # fmt: skip
STATISTICS = ("outlier_share", "excess_kurtosis", "absmax_spread", "tensor_outlier_share")
LAYER_FIELDS = ("model", "name", "layer", "kind", "source_type", "numel", *STATISTICS)
MEMORY_FIELDS = ("rank", "seq_len", "checkpointing", "weights", "adapters", "gradients", "optimizer_state", "activations_saved",
                 "activations_peak", "peak", "measured", "spread", "seconds")  # fmt: skip


def _csv(rows: list[dict], fields: tuple[str, ...]) -> str:
    return "\n".join([",".join(fields)] + [",".join(str(r[f]) for f in fields) for r in rows]) + "\n"


@dataclasses.dataclass(frozen=True)
class MemoryAnalysisJob:
    """Claim (h): memory by part of a QLoRA training step, per rank x sequence length x checkpointing."""

    model_name: str
    model_dir: Path
    quant: QuantConfig
    lora: LoRAConfig  # alpha, dropout and targets of the runs; the rank comes from `settings.ranks`
    settings: MemoryAnalysisConfig

    def configurations(self) -> list[tuple[int, str, int]]:
        """(rank, checkpointing value, sequence length) in the order measured: one model load per (rank, checkpointing)."""
        modes = ("off", self.settings.checkpointing.value)
        return [(r, c, t) for r in self.settings.ranks for c in modes for t in self.settings.seq_lens]

    def run(self, tracking: Tracking, cache_dir: Path | None = None) -> dict:
        import time

        import torch

        from qlora.atomic import write_json, write_text
        from qlora.models.pretrained import from_pretrained
        from qlora.optim import AdamWConfig, PagedAdamW
        from qlora.report.analysis_plots import memory_breakdown_bars
        from qlora.train.memory_breakdown import measure_step_memory

        started = time.time()
        s = self.settings
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        compute = self.quant.compute_dtype.resolve(device)
        rows, loaded = [], {}
        for rank, mode, seq_len in self.configurations():
            if (rank, mode) not in loaded:
                loaded.clear()  # one model at a time
                torch.manual_seed(s.seed)
                model = from_pretrained(self.model_dir, quant=self.quant, lora=dataclasses.replace(self.lora, rank=rank),
                                        checkpointing=mode).to(device)  # fmt: skip
                model.config.use_cache = False  # training: no KV cache (as the trainer)
                params = [p for p in model.parameters() if p.requires_grad]
                loaded[(rank, mode)] = (model, PagedAdamW(params, config=AdamWConfig(lr=2e-4)))  # the paper's 32-bit paged AdamW
            model, optimizer = loaded[(rank, mode)]
            g = torch.Generator().manual_seed(s.seed + seq_len)
            vocab = model.get_input_embeddings().num_embeddings
            batches = []
            for _ in range(1 + s.micro_batches):
                ids = torch.randint(0, vocab, (s.micro_batch_size, seq_len), generator=g).to(device)
                batches.append({"input_ids": ids, "labels": ids})
            t0 = time.time()
            b = measure_step_memory(model, batches, optimizer, compute_dtype=compute)
            rows.append({"rank": rank, "seq_len": seq_len, "checkpointing": mode, **b.as_dict(), "seconds": round(time.time() - t0, 2)})
            print(f"analysis memory: r={rank} T={seq_len} checkpointing={mode}: peak {b.peak / 2**20:,.1f} MB, activations "
                  f"{b.activations_peak / 2**20:,.1f} MB, adapters+grads+optimizer {b.adapter_side / 2**20:,.1f} MB", flush=True)  # fmt: skip
        loaded.clear()
        out = {"analysis": Analysis.MEMORY.value, "model": self.model_name, "quant": self.quant.label, "device": device.type,
               "compute_dtype": str(compute).removeprefix("torch."), "micro_batch_size": s.micro_batch_size,
               "micro_batches": s.micro_batches, "checkpointing": s.checkpointing.value, "lora_alpha": self.lora.alpha,
               "lora_dropout": self.lora.dropout, "lora_targets": self.lora.targets.value, "optimizer": "paged AdamW, 32-bit state",
               "configurations": rows, "seconds": round(time.time() - started, 1)}  # fmt: skip
        name = Analysis.MEMORY.value
        write_text(paths.analysis_rows(name), _csv(rows, MEMORY_FIELDS))
        write_json(paths.analysis_metrics(name), out)
        memory_breakdown_bars(rows, paths.analysis_plot(name), title=f"{self.model_name}, QLoRA {self.quant.label}: memory of a training step by part "
                                                          f"(micro-batch {s.micro_batch_size}, {out['compute_dtype']})")  # fmt: skip
        tracking.log("analysis memory", params={"model": self.model_name, "quant.dtype": self.quant.dtype.value},
                     metrics={f"r{r['rank']}_T{r['seq_len']}_{r['checkpointing']}.peak_mb": r["peak"] / 2**20 for r in rows},
                     tags={"stage": "analysis"}, started=started,
                     artifacts=[paths.analysis_metrics(name), paths.analysis_rows(name), paths.analysis_plot(name)])  # fmt: skip
        return out


@dataclasses.dataclass(frozen=True)
class OutlierAnalysisJob:
    """Claim (i): per-layer weight statistics of the embedded GGUF models and their trend over size."""

    settings: OutlierAnalysisConfig

    def run(self, tracking: Tracking, cache_dir: Path | None = None) -> dict:
        import tempfile
        import time

        from qlora.atomic import write_json, write_text
        from qlora.data.gguf_weights import gguf_linear_weights, gguf_summary
        from qlora.data.sources import gguf_path
        from qlora.quant.weight_stats import weight_stats
        from qlora.report.analysis_plots import outliers_vs_size
        from qlora.report.size_trend import size_trend

        started = time.time()
        s = self.settings
        models, layers = [], []
        with tempfile.TemporaryDirectory(prefix="qlora-gguf-") as tmp:
            for source in s.models:
                name = GGUF_NAMES[source]
                try:
                    path = gguf_path(source, cache_dir or tmp)
                except FileNotFoundError as e:
                    print(f"analysis outliers: {name} not measured: {e}", flush=True)
                    models.append({"model": name, "source": source.value, "measured": False, "reason": str(e)})
                    continue
                t0 = time.time()
                summary = gguf_summary(path)
                for w in gguf_linear_weights(path):
                    st = weight_stats(w.values, block_size=s.block_size, sigmas=s.sigmas)
                    layers.append({"model": name, "name": w.name, "layer": w.layer, "kind": w.kind, "source_type": w.source_type,
                                   "numel": st.numel, **{k: getattr(st, k) for k in STATISTICS}})  # fmt: skip
                models.append({"model": name, "source": source.value, "measured": True, "architecture": summary.architecture,
                               "parameters": summary.parameters, "linear_parameters": summary.linear_parameters,
                               "linear_weights": summary.linear_weights, "source_types": summary.source_types,
                               "seconds": round(time.time() - t0, 1)})  # fmt: skip
                print(f"analysis outliers: {name}: {summary.linear_weights} linear weights in {time.time() - t0:.0f} s", flush=True)
        measured = [m for m in models if m["measured"]]
        sizes = {m["model"]: m["linear_parameters"] for m in measured}
        pairs = _family_pairs(measured)
        trends = {}
        for stat in STATISTICS:
            if measured:
                trend = size_trend({m["model"]: [r[stat] for r in layers if r["model"] == m["model"]] for m in measured}, sizes,
                                   pairs=pairs, n_resamples=s.n_resamples, seed=s.seed)  # fmt: skip
                trends[stat] = trend.as_dict()
                for m in measured:
                    m.setdefault("means", {})[stat] = trends[stat]["means"][m["model"]]
        out = {"analysis": Analysis.OUTLIERS.value, "block_size": s.block_size, "sigmas": s.sigmas, "size": "parameters in the blocks' "
               "linear weights (embeddings and output head left out)", "models": models, "trends": trends,
               "seconds": round(time.time() - started, 1)}  # fmt: skip
        name = Analysis.OUTLIERS.value
        write_text(paths.analysis_rows(name), _csv(layers, LAYER_FIELDS))
        write_json(paths.analysis_metrics(name), out)
        outliers_vs_size(measured, layers, paths.analysis_plot(name))
        tracking.log("analysis outliers", params={"models": ",".join(m["model"] for m in models)}, tags={"stage": "analysis"},
                     metrics={f"{m['model']}.outlier_ppm": 1e6 * m["means"]["outlier_share"]["value"] for m in measured},
                     started=started, artifacts=[paths.analysis_metrics(name), paths.analysis_rows(name), paths.analysis_plot(name)])  # fmt: skip
        return out


def _family_pairs(measured: list[dict]) -> list[tuple[str, str]]:
    """(smaller, larger) for consecutive sizes within each architecture (one family)."""
    pairs = []
    for arch in dict.fromkeys(m["architecture"] for m in measured):
        family = sorted((m for m in measured if m["architecture"] == arch), key=lambda m: m["linear_parameters"])
        pairs += [(a["model"], b["model"]) for a, b in zip(family, family[1:])]
    return pairs


def plan_analysis(params: PipelineConfig, name: str) -> MemoryAnalysisJob | OutlierAnalysisJob:
    """The job of `analysis@<name>`, for a name in `ablation.analyses`.

    Raises:
        ConfigError: a name that is not in `ablation.analyses` (or no `Analysis`).
    """
    from qlora.checks import ConfigError

    if name not in params.ablation.analyses:
        raise ConfigError("ablation.analyses", list(params.ablation.analyses), f"a list that includes {name!r} to run analysis {name!r}")
    if name == Analysis.MEMORY.value:
        s = whole(params.analysis.memory)
        return MemoryAnalysisJob(params.models[CAUSAL].name, paths.model_dir(CAUSAL), lookup(params.quants, s.quant, "analysis.memory.quant"),
                                 whole(params.lora), s)  # fmt: skip
    return OutlierAnalysisJob(whole(params.analysis.outliers))
