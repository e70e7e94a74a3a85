"""The Table 2 figure: each data type's perplexity ratio to BF16 with its paired interval, one panel per model.

Apart from plots.py (which stage analysis's figures import too) so that a new report figure leaves the measured
analyses' inputs unchanged."""

from __future__ import annotations

from pathlib import Path

from qlora.eval.result import Task
from qlora.report.labels import DataTypeLabel
from qlora.report.plots import _save, plt


def perplexity_ratios(table2_data) -> dict[str, list[tuple[str, float, float, float]]]:
    """model -> [(data type, ratio to BF16, 95% low, 95% high)] in Table 2's row order, from Table 2's numbers
    (its CSV frame: the paired bootstrap over the same windows); BF16 itself and rows without a ratio are left out."""
    out: dict[str, list[tuple[str, float, float, float]]] = {}
    if "vs_bf16_estimate" not in getattr(table2_data, "columns", ()):
        return out
    for row in table2_data.to_dict("records"):
        if row["task"] != Task.PERPLEXITY.value or row["vs_bf16_estimate"] != row["vs_bf16_estimate"]:  # NaN: no ratio
            continue
        label = DataTypeLabel.parse(row["quant"]).display
        out.setdefault(row["model"], []).append((label, row["vs_bf16_estimate"], row["vs_bf16_ci_low"], row["vs_bf16_ci_high"]))
    return out


def perplexity_ratio_to_bf16(table2_data, path: str | Path) -> Path:
    """Each data type's perplexity ratio to BF16 on the same windows with its paired 95% interval, one panel per
    model (log scale: x1.1 and /1.1 look alike); the line at 1 is BF16."""
    ratios = perplexity_ratios(table2_data)
    models = sorted(ratios) or [""]
    fig, axes = plt.subplots(1, len(models), figsize=(1 + 4.5 * len(models), 4.5), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        rows = ratios.get(model, [])
        if rows:
            names, values, lows, highs = zip(*rows)
            ax.errorbar(range(len(rows)), values, yerr=[[v - lo for v, lo in zip(values, lows)], [hi - v for v, hi in zip(values, highs)]],
                        fmt="o", capsize=4, color="#4c72b0")  # fmt: skip
            ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no perplexity ratios", ha="center", va="center", transform=ax.transAxes)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(model, fontsize=9)
    axes[0][0].set_ylabel("perplexity / BF16's (same windows; log scale)")
    fig.suptitle("Perplexity ratio to BF16 by data type, with paired bootstrap 95% intervals (Table 2)", fontsize=10)
    return _save(fig, Path(path))
