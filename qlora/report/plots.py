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


GAP_PAIRS = (  # (label, row, reference): the gaps behind claims (c) and (d)
    ("(c) QLoRA NF4 + DQ - LoRA BF16", ("qlora", "nf4_dq"), ("lora", "bf16")),
    ("(d) QLoRA NF4 + DQ - QLoRA FP4", ("qlora", "nf4_dq"), ("qlora", "fp4")),
)


def validation_gaps(trains: Sequence[TrainRecord]) -> list[tuple[str, str, int | None, int, float]]:
    """(pair, model, seed, step, gap) rows: the validation NLL of a row minus its reference's at each step
    both validated, seed by seed (negative: the row is ahead). Rows without validation give none."""
    by = {(t.model, t.method.value, t.quant.value, t.seed): t for t in trains if t.val_steps}
    out = []
    for label, row, ref in GAP_PAIRS:
        for (model, method, quant, seed), t in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][3] or 0)):
            if (method, quant) != row or (model, *ref, seed) not in by:
                continue
            r = by[(model, *ref, seed)]
            ref_at = dict(zip(r.val_steps, r.val_nll))
            out += [(label, model, seed, s, v - ref_at[s]) for s, v in zip(t.val_steps, t.val_nll) if s in ref_at]
    return out


def validation_gaps_csv(trains: Sequence[TrainRecord]) -> str:
    lines = ["pair,model,seed,step,gap"]
    lines += [f"{pair},{model},{'' if seed is None else seed},{step},{gap}" for pair, model, seed, step, gap in validation_gaps(trains)]
    return "\n".join(lines) + "\n"


def gap_vs_step(trains: Sequence[TrainRecord], path: str | Path) -> Path:
    """Each gap of claims (c) and (d) on validation NLL against the training step, one line per seed and model."""
    rows = validation_gaps(trains)
    fig, axes = plt.subplots(1, len(GAP_PAIRS), figsize=(11, 4), sharey=True)
    for ax, (label, _, _) in zip(axes, GAP_PAIRS):
        lines: dict = {}
        for pair, model, seed, step, gap in rows:
            if pair == label:
                lines.setdefault((model, seed), []).append((step, gap))
        for (model, seed), points in sorted(lines.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            steps, gaps = zip(*sorted(points))
            ax.plot(steps, gaps, marker="o", label=f"{model} seed {seed}")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("optimizer step")
        if lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no validation during training\n(eval.val_every = 0)", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel("validation NLL gap (nats/token; < 0: row ahead)")
    return _save(fig, Path(path))
