"""PNG figures of stage `analysis`: the memory of a training step by part (claim h) and weight outliers
against model size (claim i)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from qlora.report.plots import _save, plt

MEMORY_PARTS = (  # (field of a configuration row, legend, colour): bottom to top
    ("weights", "frozen weights (quantized base, embeddings, norms)", "#4c72b0"),
    ("adapters", "adapters", "#dd8452"),
    ("gradients", "adapter gradients", "#c44e52"),
    ("optimizer_state", "optimizer state", "#8172b3"),
    ("activations_peak", "activations at their peak (incl. activation gradients)", "#55a868"),
)


def memory_breakdown_bars(rows: Sequence[Mapping], path: str | Path, *, title: str) -> Path:
    """Stacked bars, one per configuration: each part of a training step's peak memory (MB).

    Args:
        rows: configurations with `rank`, `seq_len`, `checkpointing` and the byte counts of `MEMORY_PARTS`;
            one panel per checkpointing setting, bars in the order given.
    """
    settings = list(dict.fromkeys(r["checkpointing"] for r in rows)) or ["off"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 + 4 * len(settings), 4.8), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        panel = [r for r in rows if r["checkpointing"] == setting]
        bottom = [0.0] * len(panel)
        for field, label, colour in MEMORY_PARTS:
            heights = [r[field] / 2**20 for r in panel]
            ax.bar(range(len(panel)), heights, bottom=bottom, label=label, color=colour)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xticks(range(len(panel)), [f"r={r['rank']}\nT={r['seq_len']}" for r in panel], fontsize=7)
        ax.set_title(f"gradient checkpointing: {setting}", fontsize=9)
        ax.set_ylabel("MB")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def outliers_vs_size(models: Sequence[Mapping], layers: Sequence[Mapping], path: str | Path, *, statistic: str = "outlier_share",
                     label: str = "outliers per million weights", scale: float = 1e6) -> Path:  # fmt: skip
    """Per-layer values (dots) and per-model means with their bootstrap intervals against parameter count.

    Args:
        models: measured models with `model`, `linear_parameters`, and `means[statistic]` = {value, low, high}.
        layers: per-layer rows with `model` and `statistic`.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(models):
        size = m["linear_parameters"]
        ys = [scale * r[statistic] for r in layers if r["model"] == m["model"]]
        ax.scatter([size] * len(ys), ys, s=6, alpha=0.25, color="#4c72b0")
        est = m["means"][statistic]
        ax.errorbar([size], [scale * est["value"]], yerr=[[scale * (est["value"] - est["low"])], [scale * (est["high"] - est["value"])]],
                    fmt="o", color="#c44e52", capsize=4, markersize=6)  # fmt: skip
        ax.annotate(m["model"], (size, scale * est["value"]), textcoords="offset points", xytext=(6, 6 if i % 2 else -12), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("parameters in the blocks' linear weights (log)")
    ax.set_ylabel(label)
    ax.set_title("Weight outliers by model size: layers (dots), model means with 95% bootstrap intervals", fontsize=9)
    return _save(fig, Path(path))
