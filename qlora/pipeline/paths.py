"""Where the pipeline's files live, relative to the working directory of `dvc repro` (one place only).

dvc.yaml declares the same paths; tests/pipeline/test_dvc_contract.py checks that every stage writes
what it declares.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path("artifacts")
METRICS = Path("metrics")
ITEMS = Path("items")  # per-item scores of every evaluation (paired statistics)
REPORTS = Path("reports")

MAIN = "main"  # the main QLoRA run's name (data type `quant`)
UNTUNED = "untuned"  # the causal base without training: runs "untuned_<quant>" (one per ablation.untuned_quants)


def untuned_run(quant: str) -> str:
    """The run name of the causal base stored as `quant`, evaluated without training."""
    return f"{UNTUNED}_{quant}"


def untuned_quant(run: str) -> str | None:
    """The data type of an untuned run's name ("untuned_fp4" -> "fp4"), None for other runs."""
    prefix = f"{UNTUNED}_"
    return run[len(prefix) :] if run.startswith(prefix) and len(run) > len(prefix) else None


def model_dir(key: str) -> Path:
    return ARTIFACTS / "models" / key


def data_dir() -> Path:
    return ARTIFACTS / "data"


def quantized_dir(model: str, quant: str) -> Path:
    return ARTIFACTS / "quantized" / model / quant


def adapter_dir(role: str, run: str) -> Path:
    return ARTIFACTS / "adapters" / role / run


def resume_root(role: str, run: str) -> Path:
    return ARTIFACTS / "resume" / f"{role}_{run}"


def train_metrics(role: str, run: str) -> Path:
    return METRICS / ("main" if run == MAIN else "train") / f"{role}_{run}.json"


def loss_curve(role: str, run: str) -> Path:
    return METRICS / ("main" if run == MAIN else "train") / f"{role}_{run}_loss.csv"


def base_metrics(model: str, quant: str) -> Path:
    return METRICS / "base" / f"{model}_{quant}.json"


def base_items(model: str, quant: str) -> Path:
    """A folder: one per-item file per record of the stage."""
    return ITEMS / "base" / f"{model}_{quant}"


def eval_metrics(role: str, run: str) -> Path:
    if run == MAIN:
        return METRICS / "main" / f"{role}_{run}_eval.json"
    return METRICS / "eval" / f"{role}_{run}.json"


def eval_items(role: str, run: str) -> Path:
    """A folder: one per-item file per record of the stage."""
    return ITEMS / ("main" if run == MAIN else "eval") / f"{role}_{run}"


def seed_dir(row_dir: Path, seed: int) -> Path:
    """An encoder row's folder holds one adapter per seed."""
    return row_dir / f"s{seed}"


def analysis_metrics(name: str) -> Path:
    """Stage `analysis@<name>`'s results (the report's findings sections (h), (i) read them)."""
    return METRICS / "analysis" / f"{name}.json"


def analysis_rows(name: str) -> Path:
    """Stage `analysis@<name>`'s rows: one per configuration (memory) or per layer (outliers)."""
    return METRICS / "analysis" / f"{name}.csv"


def analysis_plot(name: str) -> Path:
    return REPORTS / f"analysis_{name}.png"
