"""PNG figures of the report: loss curves per data type, accuracy with error bars, memory bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qlora.atomic import atomic_file  # noqa: E402
from qlora.eval.result import Task  # noqa: E402
from qlora.report.records import EvalRecord, TrainRecord  # noqa: E402


def _save(fig, path: Path) -> Path:
    try:
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def loss_curves(trains: Sequence[TrainRecord], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in trains:
        ax.plot(range(1, len(t.losses) + 1), t.losses, label=f"{t.model} {t.method.value} {t.quant.display}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss by data type")
    if trains:
        ax.legend(fontsize=7)
    return _save(fig, Path(path))


def loss_curves_csv(trains: Sequence[TrainRecord]) -> str:
    """`step,loss,data_type` rows of every curve (long format): one DVC plot colours them by data type
    (template .dvc/plots/by_data_type.json)."""
    lines = ["step,loss,data_type"]
    for t in trains:
        label = f"{t.method.value} {t.quant}"  # the text form (nf4_dq): display names hold commas
        lines += [f"{i},{loss},{label}" for i, loss in enumerate(t.losses, start=1)]
    return "\n".join(lines) + "\n"


CHANCE = {Task.MMLU: 0.25, Task.MMLU_ZERO_SHOT: 0.25}  # four answer choices


def accuracy_bars(evals: Sequence[EvalRecord], task: Task | str, path: str | Path) -> Path:
    task = Task.parse(task)
    rows = [r for r in evals if r.task is task]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r.method.value}\n{r.quant.display if r.quant else 'main'}" for r in rows]
    values = [100 * r.value for r in rows]
    errors = [[100 * (r.value - r.ci_low) for r in rows], [100 * (r.ci_high - r.value) for r in rows]] if rows and all(
        r.ci_low is not None for r in rows) else None  # fmt: skip
    ax.bar(range(len(rows)), values, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(f"{task.value} (%)")
    ax.set_title(f"{task.value} with 95% intervals")
    if task in CHANCE:
        ax.axhline(100 * CHANCE[task], color="#c44e52", linestyle="--", linewidth=1, label=f"chance ({100 * CHANCE[task]:.0f}%)")
        ax.legend(fontsize=8)
    return _save(fig, Path(path))


def memory_bars(trains: Sequence[TrainRecord], path: str | Path) -> Path:
    """Frozen-weight and adapter storage of each training row, one panel per model (their scales differ)."""
    models = sorted({t.model for t in trains}) or [""]
    fig, axes = plt.subplots(1, len(models), figsize=(4 + 3.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [t for t in trains if t.model == model]
        weights = [t.weight_mb for t in rows]
        ax.bar(range(len(rows)), weights, label="frozen weights")
        ax.bar(range(len(rows)), [t.adapter_mb for t in rows], bottom=weights, label="adapter (+ head)")
        ax.set_xticks(range(len(rows)), [f"{t.method.value}\n{t.quant.display}" for t in rows], fontsize=8)
        ax.set_ylabel("MB")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Stored weights and adapters by data type, per model (MB; peak training memory: reports/memory.md)", fontsize=10)
    return _save(fig, Path(path))
