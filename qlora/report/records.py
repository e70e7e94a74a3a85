"""What the report reads: typed records of evaluation and training metrics (one JSON object each).

Evaluation and training stages write these records; the report stage only reads them. Nothing in a
regenerated table is typed in except the paper's reference columns (`paper.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path

from qlora.config import Method  # noqa: F401  (re-exported: the rows of the tables)


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One measured number.

    Attributes:
        task: "perplexity", "mmlu", "classification" or "rougeL".
        model: the evaluated base model's name.
        quant: the base's data type label (bf16, int8, int4, fp4, fp4_e3m0, nf4, nf4_dq).
        method: how the model was obtained.
        dataset: what it was measured on.
        value: perplexity, or a score in [0, 1] (accuracy, RougeL F-measure).
        n: examples (or tokens, for perplexity).
        ci_low / ci_high: 95% interval of `value`, when it has one.
    """

    task: str
    model: str
    quant: str
    method: Method
    dataset: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def stderr(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / (2 * 1.959964)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["method"] = self.method.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "EvalRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown EvalRecord field(s) {sorted(unknown)}; expected {sorted(fields)}")
        return cls(**{**d, "method": Method(d["method"])})


@dataclasses.dataclass(frozen=True)
class TrainRecord:
    """Memory and speed of one training run (the `memory` table and the loss-curve plot)."""

    model: str
    quant: str
    method: Method
    bits_per_param: float
    weight_mb: float
    adapter_mb: float
    peak_mb: float
    peak_kind: str  # "cuda_max_allocated" or "cpu_peak_rss"
    steps: int
    tokens_per_s: float
    losses: tuple[float, ...]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["method"], d["losses"] = self.method.value, list(self.losses)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainRecord":
        return cls(**{**d, "method": Method(d["method"]), "losses": tuple(d["losses"])})


def load_records(paths: Iterable[str | Path]) -> tuple[list[EvalRecord], list[TrainRecord]]:
    """Reads JSON files holding one record or a list of records ({"kind": "eval"|"train", ...})."""
    evals, trains = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for item in data if isinstance(data, list) else [data]:
            kind = item.pop("kind", None)
            if kind == "eval":
                evals.append(EvalRecord.from_json(item))
            elif kind == "train":
                trains.append(TrainRecord.from_json(item))
            else:
                raise ValueError(f"{path}: record kind must be 'eval' or 'train', got {kind!r}")
    return evals, trains


def dump_records(records: Iterable[EvalRecord | TrainRecord]) -> list[dict]:
    return [{"kind": "eval" if isinstance(r, EvalRecord) else "train", **r.to_json()} for r in records]


def differs_beyond_noise(a: EvalRecord, b: EvalRecord, z: float = 1.959964) -> bool | None:
    """Whether two scores differ by more than their combined 95% noise (None when unknown)."""
    if a.stderr is None or b.stderr is None:
        return None
    return abs(a.value - b.value) > z * math.sqrt(a.stderr**2 + b.stderr**2)
