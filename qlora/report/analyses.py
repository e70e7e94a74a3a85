"""The findings sections (h) and (i), decided from stage `analysis`'s results (metrics/analysis/*.json).

- (h) "Memory goes to activations, not adapters" (paper §4): exact byte counts of a training step's parts
  per configuration (`qlora.train.memory_breakdown`); no sampling, so no interval: the rule is checked in
  every configuration. Holds when, in every configuration, the adapters with their gradients and optimizer
  state take less than `ADAPTER_SHARE` of the step's peak, the activations are the largest part without
  gradient checkpointing, and checkpointing cuts the activations' peak; does not hold when any of these
  fails somewhere.
- (i) "Outliers grow with model size" (paper §3): per-model means of the share of weights beyond 6 sigma
  of their block, against size (`qlora.report.size_trend`). Holds when the slope over models per tenfold
  parameters has its 95% bootstrap interval above 0 and so does every within-family difference (larger
  minus smaller model of one architecture); does not hold when either interval lies below 0; otherwise
  (or with no family measured at two sizes) inconclusive.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

from qlora.report.findings import combine
from qlora.report.paired import Verdict

ADAPTER_SHARE = 0.10  # (h): "adapters are a small part": adapters + gradients + optimizer state below this share of the peak
MB = 2**20
_PPM = 1e6


class AnalysisClaim(enum.Enum):
    H = "h"
    I = "i"  # noqa: E741

    @property
    def text(self) -> str:
        return {
            AnalysisClaim.H: "Memory goes to activations, not adapters: adapters are a small part of a training step's memory, "
                             "activations the largest, and gradient checkpointing cuts them (paper §4)",
            AnalysisClaim.I: "Outliers grow with model size: the share of outlier weights rises with the parameter count (paper §3)",
        }[self]  # fmt: skip


def _row(label: str, stat: str, interval: str, n: str, mde: str, verdict: Verdict, counts: bool = True) -> str:
    v = f"**{verdict.value}**" if counts else f"({verdict.value}; not counted)"
    return f"| {label} | {stat} | {interval} | {n} | {mde} | {v} |"


_HEAD = ["| comparison | statistic | 95% interval | n | smallest detectable | verdict |", "|---|---|---|---|---|---|"]


def _where(c: Mapping) -> str:
    return f"r = {c['rank']}, T = {c['seq_len']}, checkpointing {c['checkpointing']}"


def memory_section(result: Mapping) -> tuple[Verdict, list[str]]:
    """(verdict, markdown lines) of claim (h) from metrics/analysis/memory.json."""
    configs = list(result["configurations"])
    if not configs:
        return Verdict.INCONCLUSIVE, ["No configuration was measured."]
    n = f"{len(configs)} configurations"
    adapter = [(c["adapters"] + c["gradients"] + c["optimizer_state"]) / c["peak"] for c in configs]
    worst = max(range(len(configs)), key=adapter.__getitem__)
    v_adapter = Verdict.HOLDS if adapter[worst] < ADAPTER_SHARE else Verdict.DOES_NOT_HOLD
    off = [c for c in configs if c["checkpointing"] == "off"]
    lead = [c["activations_peak"] / max(c["weights"], c["adapters"], c["gradients"], c["optimizer_state"]) for c in off]
    v_lead = Verdict.INCONCLUSIVE if not off else Verdict.HOLDS if min(lead) > 1 else Verdict.DOES_NOT_HOLD
    with_ck = {(c["rank"], c["seq_len"]): c for c in configs if c["checkpointing"] != "off"}
    cut = [(with_ck[(c["rank"], c["seq_len"])]["activations_peak"] / c["activations_peak"], c) for c in off if (c["rank"], c["seq_len"]) in with_ck]
    v_cut = Verdict.INCONCLUSIVE if not cut else Verdict.HOLDS if max(r for r, _ in cut) < 1 else Verdict.DOES_NOT_HOLD
    exact = f"– (exact byte counts; {result['micro_batches']} micro-batches per configuration agreed to {max(c['spread'] for c in configs):,} bytes)"
    lines = [*_HEAD,
             _row(f"adapters + their gradients + optimizer state < {100 * ADAPTER_SHARE:g}% of the step's peak, in every configuration",
                  f"largest share {100 * adapter[worst]:.1f}% ({_where(configs[worst])}); smallest {100 * min(adapter):.1f}%", exact, n, "–",
                  v_adapter)]  # fmt: skip
    if off:
        i = min(range(len(off)), key=lead.__getitem__)
        lines.append(_row("activations (at their peak, incl. activation gradients) the largest part without checkpointing, in every "
                          "configuration", f"activations / largest other part: smallest x{lead[i]:.2f} ({_where(off[i])})", "–",
                          f"{len(off)} configurations", "–", v_lead))  # fmt: skip
    if cut:
        ratio, c = max(cut, key=lambda rc: rc[0])
        lines.append(_row("gradient checkpointing cuts the activations' peak, in every configuration",
                          f"with / without: largest x{ratio:.3f} ({_where(c)}); smallest x{min(r for r, _ in cut):.3f}", "–",
                          f"{len(cut)} pairs", "–", v_cut))  # fmt: skip
    ranks = sorted({c["rank"] for c in configs})
    if len(ranks) > 1:
        by = {(c["rank"], c["seq_len"], c["checkpointing"]): c for c in configs}
        growth = [(by[(ranks[-1], t, m)]["peak"] - by[(ranks[0], t, m)]["peak"]) / by[(ranks[0], t, m)]["peak"]
                  for (r, t, m) in by if r == ranks[0] and (ranks[-1], t, m) in by]  # fmt: skip
        lines.append(_row(f"more adapters cost: step peak at r = {ranks[-1]} over r = {ranks[0]}", f"+{100 * min(growth):.1f}% to "
                          f"+{100 * max(growth):.1f}%", "–", f"{len(growth)} pairs", "–", Verdict.INCONCLUSIVE, counts=False))  # fmt: skip
    verdict = combine([v_adapter, v_lead, v_cut])
    lines += ["", "| r | T | checkpointing | weights | adapters | gradients | optimizer state | activations saved | activations peak | "
              "step peak (MB) | adapters + grads + optimizer | activations |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c, share in zip(configs, adapter):
        lines.append(f"| {c['rank']} | {c['seq_len']} | {c['checkpointing']} | {c['weights'] / MB:,.1f} | {c['adapters'] / MB:,.1f} | "
                     f"{c['gradients'] / MB:,.1f} | {c['optimizer_state'] / MB:,.1f} | {c['activations_saved'] / MB:,.1f} | "
                     f"{c['activations_peak'] / MB:,.1f} | {c['peak'] / MB:,.1f} | {100 * share:.1f}% | "
                     f"{100 * c['activations_peak'] / c['peak']:.1f}% |")  # fmt: skip
    return verdict, lines


def _est(e: Mapping | None, scale: float = 1.0, fmt: str = "{:+.3g}") -> tuple[str, str, str]:
    """(value, interval, smallest detectable) of an estimate dict as text."""
    if not e or not _finite(e.get("value")):
        return "–", "–", "–"
    f = fmt.format
    return f(scale * e["value"]), f"[{f(scale * e['low'])}, {f(scale * e['high'])}]", f"±{abs(scale * e['mde']):.3g}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _above_zero(e: Mapping | None) -> Verdict:
    if not e or not (_finite(e.get("low")) and _finite(e.get("high"))):
        return Verdict.INCONCLUSIVE
    return Verdict.HOLDS if e["low"] > 0 else Verdict.DOES_NOT_HOLD if e["high"] < 0 else Verdict.INCONCLUSIVE


def outliers_section(result: Mapping) -> tuple[Verdict, list[str]]:
    """(verdict, markdown lines) of claim (i) from metrics/analysis/outliers.json."""
    models = list(result["models"])
    measured = [m for m in models if m["measured"]]
    trends = result.get("trends") or {}
    share = trends.get("outlier_share") or {}
    layers = sum((share.get("layers") or {}).values())
    n_models = f"{len(measured)} models, {layers:,} layers (resampled within each model)"
    parts: list[Verdict] = []
    slope = share.get("slope_per_decade")
    v = _above_zero(slope) if slope else Verdict.INCONCLUSIVE
    parts.append(v)
    stat, ci, mde = _est(slope, _PPM)
    lines = [*_HEAD, _row(f"slope of the models' mean outlier share per tenfold parameters (outliers per million weights; "
                          f"{len(measured)} models)", stat if slope else "not measured (fewer than two models)", ci, n_models, mde, v)]  # fmt: skip
    within = share.get("within_family") or {}
    if not within:
        parts.append(Verdict.INCONCLUSIVE)
        lines.append(_row("within a family: the larger model's mean outlier share minus the smaller's",
                          "not measured: no family measured at two sizes (Qwen2.5-Coder-1.5B needs `python scripts/assets.py install "
                          "--findings`)", "–", "–", "–", Verdict.INCONCLUSIVE))  # fmt: skip
    for pair, est in within.items():
        v = _above_zero(est)
        parts.append(v)
        stat, ci, mde = _est(est, _PPM)
        big, small = pair.split(" - ")
        lines.append(_row(f"within a family: {pair}, mean outliers per million weights", stat, ci,
                          f"{share['layers'][big]} + {share['layers'][small]} layers", mde, v))  # fmt: skip
    rho = share.get("spearman")
    if rho:
        stat, ci, _ = _est(rho, fmt="{:+.2f}")
        lines.append(_row("Spearman's rank correlation of the models' mean outlier share with size", stat, ci, f"{len(measured)} models", "–",
                          _above_zero(rho), counts=False))  # fmt: skip
    for key, label, scale in (("excess_kurtosis", "slope of the mean excess kurtosis per tenfold parameters", 1.0),
                              ("absmax_spread", "slope of the mean absmax spread (max / median block absmax) per tenfold parameters", 1.0),
                              ("tensor_outlier_share", "slope of the share beyond 6 sigma of the whole matrix, per million weights", _PPM)):  # fmt: skip
        est = (trends.get(key) or {}).get("slope_per_decade")
        if est:
            stat, ci, mde = _est(est, scale)
            lines.append(_row(label, stat, ci, n_models, mde, _above_zero(est), counts=False))
    verdict = combine(parts)
    lines += ["", "| model | architecture | parameters (linear weights) | layers | source formats of those weights | outliers per million weights "
              "(mean, 95% interval) | excess kurtosis (mean) | absmax spread (mean) |", "|---|---|---:|---:|---|---|---:|---:|"]  # fmt: skip
    for m in models:
        if not m["measured"]:
            lines.append(f"| {m['model']} | – | – | – | – | not measured: {m['reason'].split(';')[0]} | – | – |")
            continue
        means = m["means"]
        o = means["outlier_share"]
        formats = ", ".join(f"{k} x{v}" for k, v in m["source_types"].items())
        lines.append(f"| {m['model']} | {m['architecture']} | {m['linear_parameters']:,} | {m['linear_weights']} | {formats} | "
                     f"{_PPM * o['value']:.3g} [{_PPM * o['low']:.3g}, {_PPM * o['high']:.3g}] | {means['excess_kurtosis']['value']:.3g} | "
                     f"{means['absmax_spread']['value']:.3g} |")  # fmt: skip
    return verdict, lines


def analyses_markdown(results: Mapping[str, Mapping]) -> str:
    """The findings sections of the analyses in `results` (by name: "memory", "outliers"), "" when none.

    Args:
        results: the parsed metrics/analysis/<name>.json of each analysis that ran.
    """
    out: list[str] = []
    if "memory" in results:
        r = results["memory"]
        verdict, lines = memory_section(r)
        out += ["", f"## ({AnalysisClaim.H.value}) {AnalysisClaim.H.text}", "", f"### {r['model']}: {verdict.value}", "",
                f"Measured by stage `analysis@memory`: one training step of QLoRA {r['quant']} on {r['model']} ({r['device']}, compute "
                f"{r['compute_dtype']}; micro-batch of {r['micro_batch_size']} sequence(s) of T tokens; LoRA alpha {r['lora_alpha']:g}, "
                f"dropout {r['lora_dropout']:g}, targets {r['lora_targets']}; {r['optimizer']}), gradient checkpointing off and "
                f"{r['checkpointing']}. Weights, adapters, gradients and optimizer state are the bytes of their tensors; activations "
                "are the bytes of every storage the forward and backward allocate, followed op by op (a torch dispatch mode, "
                "`qlora.train.live_bytes`) until freed: *saved* is what is alive when the forward has returned the loss, *peak* the "
                "most alive at once (saved activations, activation gradients, blocks recomputed under checkpointing, temporaries). "
                "The step's peak is their sum. Token ids are random: the bytes depend on the shapes only. "
                f"Rule: holds when in every configuration adapters + gradients + optimizer state are below {100 * ADAPTER_SHARE:g}% of "
                "the peak, activations are the largest part without checkpointing, and checkpointing cuts them; does not hold when "
                "any fails. The plot: `reports/analysis_memory.png`.", "", *lines]  # fmt: skip
    if "outliers" in results:
        r = results["outliers"]
        verdict, lines = outliers_section(r)
        measured = [m["model"] for m in r["models"] if m["measured"]]
        out += ["", f"## ({AnalysisClaim.I.value}) {AnalysisClaim.I.text}", "", f"### {', '.join(measured) or 'no model'}: {verdict.value}", "",
                f"Measured by stage `analysis@outliers`: every linear weight of the transformer blocks (embeddings and output head left "
                f"out), read from each model's GGUF file and de-quantized tensor by tensor. Per weight matrix: the share of weights "
                f"beyond {r['sigmas']:g} standard deviations of the mean of their block of {r['block_size']} (the quantizer's block), "
                "excess kurtosis, and the absmax spread (max / median block absmax). Size: parameters in those linear weights. "
                "Per model the mean over its layers; the trend is the least-squares slope of the means on log10 size, and every "
                "interval a stratified bootstrap over layers: it says how well these models' means are known, not how models in "
                "general behave — with models from different families, size and family are confounded, so the within-family "
                "comparison is required too. **Caveat: the weights were 4–5-bit at the source** (the GGUF formats per model are "
                "listed): block-quantized weights keep each block's extremes but flatten the rest onto a grid, which changes "
                "kurtosis and outlier counts; no 16-bit checkpoint of these models is available offline. "
                "Rule: holds when the slope and every within-family difference have intervals above 0; does not hold when one "
                "lies below 0; otherwise inconclusive. The plot: `reports/analysis_outliers.png`.", "", *lines]  # fmt: skip
    return "\n".join(out) + ("\n" if out else "")


def load_results(files: Sequence) -> dict[str, dict]:
    """{analysis name: parsed JSON} of the files that exist (name: the file's stem)."""
    import json
    from pathlib import Path

    return {Path(f).stem: json.loads(Path(f).read_text()) for f in files if Path(f).is_file()}
