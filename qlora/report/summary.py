"""One nested dict of every headline number, for `dvc metrics show` / `dvc exp show` / `dvc metrics diff`.

The per-stage records are lists (a stage may score several tasks), which DVC's metrics commands do
not read; this summary is what they compare across experiments:

    {"eval": {task: {model: {"<method>_<quant>": value}}},
     "train": {"peak_mb" | "tokens_per_s" | "final_loss": {model: {"<method>_<quant>": value}}},
     "main": {task: value, "peak_mb": ..., "tokens_per_s": ..., "final_loss": ...}}

"main" is the run whose data type `dvc exp run -S quant=...` changes. Keys are the enums' values
(`Task`, `Method`) and the data-type labels' text form (`DataTypeLabel.value`; "main" for the main
run's records written before issue 11, which do not name their data type), then "_<variant>" for a row
trained otherwise than the table's (e.g. "qlora_nf4_dq_r8").
"""

from __future__ import annotations

from collections.abc import Sequence

from qlora.report.records import LEGACY_MAIN, EvalRecord, TrainRecord

_TRAIN_FIELDS = ("peak_mb", "tokens_per_s", "final_loss")


def _key(method, quant, variant: str) -> str:
    return f"{method.value}_{LEGACY_MAIN if quant is None else quant.value}" + (f"_{variant}" if variant else "")


def _train_values(t: TrainRecord) -> dict[str, float]:
    return {"peak_mb": t.peak_mb, "tokens_per_s": t.tokens_per_s, "final_loss": t.losses[-1] if t.losses else float("nan")}


def metrics_summary(evals: Sequence[EvalRecord], trains: Sequence[TrainRecord],
                    main_evals: Sequence[EvalRecord] = (), main_trains: Sequence[TrainRecord] = ()) -> dict:  # fmt: skip
    """The summary dict (see the module docstring); a duplicate (task, model, method, quant) raises.

    `evals` are one record per row: rows trained once per seed pooled first (`records.pool_seeds`).
    A row's training records, one per seed, are summarised by their mean over seeds.
    """
    out: dict = {"eval": {}, "train": {name: {} for name in _TRAIN_FIELDS}, "main": {}}
    for r in evals:
        row = out["eval"].setdefault(r.task.value, {}).setdefault(r.model, {})
        key = _key(r.method, r.quant, r.variant)
        if key in row:
            raise ValueError(f"two {r.task.value} records for {r.model} {key}")
        row[key] = r.value
    by_row: dict[tuple[str, str], list[TrainRecord]] = {}
    for t in trains:
        by_row.setdefault((t.model, _key(t.method, t.quant, t.variant)), []).append(t)
    for (model, key), members in by_row.items():
        if len({t.seed for t in members}) != len(members):
            raise ValueError(f"two training records for {model} {key} with the same seed")
        values = [_train_values(t) for t in members]
        for name in _TRAIN_FIELDS:
            out["train"][name].setdefault(model, {})[key] = sum(v[name] for v in values) / len(values)
    for r in main_evals:
        out["main"][r.task.value] = r.value
    for t in main_trains:
        out["main"].update(_train_values(t))
    return out
