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
    return _save(fig, Path(path))


def memory_bars(trains: Sequence[TrainRecord], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{t.method.value}\n{t.quant.display}" for t in trains]
    weights = [t.weight_mb for t in trains]
    adapters = [t.adapter_mb for t in trains]
    ax.bar(range(len(trains)), weights, label="frozen weights")
    ax.bar(range(len(trains)), adapters, bottom=weights, label="adapter")
    ax.set_xticks(range(len(trains)), labels, fontsize=8)
    ax.set_ylabel("MB")
    ax.set_title("Weight storage by data type")
    ax.legend()
    return _save(fig, Path(path))
