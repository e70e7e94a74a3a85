"""What the report reads: typed records of evaluation and training metrics (JSON objects), and the
per-item results of each evaluation (`qlora.eval.items`) for paired comparisons.

Evaluation and training stages write these records; the report stage only reads them. Nothing in a
regenerated table is typed in except the paper's reference columns (`paper.py`).

Record files hold one record or a list of records, each {"kind": "eval" | "train", ...}:
- eval: task, metric, model, quant, method, dataset, value, n, ci_low, ci_high (`EvalRecord.to_json`);
  files written before issue 11 have no "metric" (the task's default is used) and the main run's
  records say quant "main" (read as an unknown data type, None).
- train: model, quant, method, bits_per_param, weight_mb, adapter_mb, peak_mb, peak_kind, steps,
  tokens_per_s, losses.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from qlora.config import Method  # noqa: F401  (re-exported: the rows of the tables)
from qlora.eval.items import ItemResults
from qlora.eval.result import EvalResult, Score, Task
from qlora.report.labels import DataTypeLabel

LEGACY_MAIN = "main"  # the quant label of the main run's records before issue 11


class PeakKind(enum.Enum):
    """What a training record's peak memory measures."""

    CUDA_MAX_ALLOCATED = "cuda_max_allocated"  # torch.cuda.max_memory_allocated
    CPU_PEAK_RSS = "cpu_peak_rss"  # the process' peak resident set (Python and libraries included)


def _parse(kind: type[enum.Enum], value, what: str):
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        for member in kind:
            if member.value.lower() == value.lower():
                return member
    raise ValueError(f"{what} must be one of {[m.value for m in kind]}, got {value!r}")


def _check_variant(v) -> None:
    if not isinstance(v, str) or (v and not re.fullmatch(r"[a-z0-9_]+", v)):
        raise ValueError(f"variant must be '' or a lower-case name of letters, digits and _, got {v!r}")


def _check_name(what: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EvalKey:
    """Which cell of a table a record fills: task, model, method and the base's data type."""

    task: Task
    model: str
    method: Method
    quant: DataTypeLabel | None
    seed: int | None = None
    variant: str = ""


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One measured number and who was measured.

    Attributes:
        model: the evaluated base model's name.
        quant: the base's data type (a `DataTypeLabel`; its text form is parsed); None only for the
            main run's records written before issue 11.
        method: how the model was obtained (`qlora.config.Method`; its value is parsed).
        dataset: what it was measured on.
        score: task, metric, value, n and 95% interval (`qlora.eval.result.Score`).
        seed: the training seed, for rows trained once per seed (None otherwise).
        variant: a row trained otherwise than the table's (e.g. "attention": adapters on attention only, "r8":
            rank 8 — findings f, g); "" for the table's own rows.
    """

    model: str
    quant: DataTypeLabel | None
    method: Method
    dataset: str
    score: Score
    seed: int | None = None
    variant: str = ""

    def __post_init__(self) -> None:
        _check_name("model", self.model)
        _check_name("dataset", self.dataset)
        if self.quant is not None:
            object.__setattr__(self, "quant", DataTypeLabel.parse(self.quant))
        object.__setattr__(self, "method", _parse(Method, self.method, "method"))
        if not isinstance(self.score, Score):
            raise TypeError(f"score must be a Score, got {type(self.score).__name__}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")
        _check_variant(self.variant)

    @classmethod
    def of(cls, result: EvalResult | Score, *, model: str, quant: DataTypeLabel | str, method: Method, dataset: str,
           seed: int | None = None, variant: str = "") -> "EvalRecord":  # fmt: skip
        """The record of an evaluator's result."""
        score = result.score if isinstance(result, EvalResult) else result
        return cls(model, quant, method, dataset, score, seed, variant)

    @property
    def task(self) -> Task:
        return self.score.task

    @property
    def metric(self):
        return self.score.metric

    @property
    def value(self) -> float:
        return self.score.value

    @property
    def n(self) -> int:
        return self.score.n

    @property
    def ci_low(self) -> float | None:
        return self.score.ci_low

    @property
    def ci_high(self) -> float | None:
        return self.score.ci_high

    @property
    def key(self) -> EvalKey:
        return EvalKey(self.task, self.model, self.method, self.quant, self.seed, self.variant)

    @property
    def stderr(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / (2 * 1.959964)

    def to_json(self) -> dict:
        return {"task": self.task.value, "metric": self.metric.value, "model": self.model,
                "quant": None if self.quant is None else self.quant.value, "method": self.method.value,
                "dataset": self.dataset, "value": self.value, "n": self.n, "ci_low": self.ci_low, "ci_high": self.ci_high,
                **({} if self.seed is None else {"seed": self.seed}), **({"variant": self.variant} if self.variant else {})}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict) -> "EvalRecord":
        """Raises ValueError naming the missing or unknown key or the bad value."""
        required = {"task", "model", "quant", "method", "dataset", "value", "n"}
        known = required | {"metric", "ci_low", "ci_high", "seed", "variant"}
        if set(d) - known or required - set(d):
            raise ValueError(f"EvalRecord keys: unknown {sorted(set(d) - known)}, missing {sorted(required - set(d))}; "
                             f"expected {sorted(known)}")  # fmt: skip
        task = Task.parse(d["task"])
        score = Score(task, d.get("metric") or task.default_metric, d["value"], d["n"], d.get("ci_low"), d.get("ci_high"))
        quant = None if d["quant"] in (None, LEGACY_MAIN) else d["quant"]
        return cls(d["model"], quant, d["method"], d["dataset"], score, d.get("seed"), d.get("variant", ""))


@dataclasses.dataclass(frozen=True)
class TrainRecord:
    """Memory and speed of one training run (the `memory` table and the loss-curve plot)."""

    model: str
    quant: DataTypeLabel
    method: Method
    bits_per_param: float
    weight_mb: float
    adapter_mb: float
    peak_mb: float
    peak_kind: PeakKind
    steps: int
    tokens_per_s: float
    losses: tuple[float, ...]
    seed: int | None = None
    compute_dtype: str | None = None  # what forward/backward computed in ("bfloat16", "float32"; None: not recorded)
    val_steps: tuple[int, ...] = ()  # steps validated during training (qlora.pipeline.validation)
    val_nll: tuple[float, ...] = ()  # their validation NLL per token, template tokens left out
    chosen_step: int | None = None  # the step whose adapter is the output (lowest validation NLL); None: the last
    variant: str = ""  # as EvalRecord.variant

    def __post_init__(self) -> None:
        _check_name("model", self.model)
        object.__setattr__(self, "quant", DataTypeLabel.parse(self.quant))
        _check_variant(self.variant)
        object.__setattr__(self, "val_steps", tuple(int(s) for s in self.val_steps))
        object.__setattr__(self, "val_nll", tuple(float(x) for x in self.val_nll))
        if len(self.val_steps) != len(self.val_nll):
            raise ValueError(f"{len(self.val_steps)} val_steps for {len(self.val_nll)} val_nll values")
        if self.chosen_step is not None and self.chosen_step not in self.val_steps:
            raise ValueError(f"chosen_step {self.chosen_step} is not a validated step {self.val_steps}")
        object.__setattr__(self, "method", _parse(Method, self.method, "method"))
        object.__setattr__(self, "peak_kind", _parse(PeakKind, self.peak_kind, "peak_kind"))
        for name in ("bits_per_param", "weight_mb", "adapter_mb", "peak_mb", "tokens_per_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        object.__setattr__(self, "losses", tuple(float(x) for x in self.losses))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(quant=self.quant.value, method=self.method.value, peak_kind=self.peak_kind.value, losses=list(self.losses),
                 val_steps=list(self.val_steps), val_nll=list(self.val_nll))
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {"seed": None, "compute_dtype": None, "val_steps": (), "val_nll": (), "chosen_step": None, "variant": "", **d}
        if set(d) != names:
            raise ValueError(f"TrainRecord keys: unknown {sorted(set(d) - names)}, missing {sorted(names - set(d))}")
        return cls(**d)


def load_records(paths: Iterable[str | Path]) -> tuple[list[EvalRecord], list[TrainRecord]]:
    """Reads JSON files holding one record or a list of records ({"kind": "eval"|"train", ...}).

    Raises:
        ValueError: invalid JSON, an unknown kind, or a bad record, naming the file and the record's index.
    """
    evals, trains = [], []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        for i, item in enumerate(data if isinstance(data, list) else [data]):
            where = f"{path}: record {i}"
            if not isinstance(item, dict):
                raise ValueError(f"{where} must be a JSON object, got {type(item).__name__}")
            item = dict(item)
            kind = item.pop("kind", None)
            try:
                if kind == "eval":
                    evals.append(EvalRecord.from_json(item))
                elif kind == "train":
                    trains.append(TrainRecord.from_json(item))
                else:
                    raise ValueError(f"record kind must be 'eval' or 'train', got {kind!r}")
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {e}") from None
    return evals, trains


def dump_records(records: Iterable[EvalRecord | TrainRecord]) -> list[dict]:
    return [{"kind": "eval" if isinstance(r, EvalRecord) else "train", **r.to_json()} for r in records]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A record with the per-item results behind it (None where they were not kept)."""

    record: EvalRecord
    items: ItemResults | None = None

    def __post_init__(self) -> None:
        if self.items is not None and self.items.task is not self.record.task:
            raise ValueError(f"items of task {self.items.task.value} for a {self.record.task.value} record")


def items_filename(key: EvalKey | EvalRecord) -> str:
    """The per-item file name of a record: "<task>__<model>__<method>__<quant>[__<variant>][__s<seed>].json"."""
    key = key.key if isinstance(key, EvalRecord) else key
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", key.model)
    quant = LEGACY_MAIN if key.quant is None else key.quant.value
    variant = f"__{key.variant}" if key.variant else ""
    seed = "" if key.seed is None else f"__s{key.seed}"
    return f"{key.task.value}__{model}__{key.method.value}__{quant}{variant}{seed}.json"


def attach_items(records: Sequence[EvalRecord], items_dirs: str | Path | Sequence[str | Path] | None) -> list[Evaluation]:
    """Each record with its per-item results from `<dir>/items_filename(record)` in one of `items_dirs`
    (searched recursively), or None where no such file exists (e.g. records written before per-item results).

    Raises:
        ValueError: two files of the same name (one record's items written twice).
    """
    dirs = [] if items_dirs is None else [items_dirs] if isinstance(items_dirs, (str, Path)) else list(items_dirs)
    found: dict[str, Path] = {}
    for d in dirs:
        for path in sorted(Path(d).rglob("*.json")):
            if path.name in found:
                raise ValueError(f"per-item results {path.name} found twice: {found[path.name]} and {path}")
            found[path.name] = path
    out = []
    for r in records:
        path = found.get(items_filename(r))
        out.append(Evaluation(r, ItemResults.load(path) if path is not None else None))
    return out


def pool_seeds(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """Rows trained once per seed become one evaluation: the value is the mean over seeds with a
    t interval over seeds (n = seeds x items), the items are pooled with ids prefixed by their seed, so
    a paired test against a reference (pooled the same way) compares each seed with the same seed.

    Evaluations without a seed pass through unchanged.
    """
    import statistics

    from scipy import stats as scipy_stats

    groups: dict[EvalKey, list[Evaluation]] = {}
    out: list[Evaluation] = []
    for e in evaluations:
        if e.record.seed is None:
            out.append(e)
        else:
            groups.setdefault(dataclasses.replace(e.record.key, seed=None), []).append(e)
    for key, members in groups.items():
        members = sorted(members, key=lambda e: e.record.seed)
        values = [m.record.value for m in members]
        mean = statistics.fmean(values)
        if len(values) > 1:
            half = scipy_stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
            low, high = mean - half, mean + half
        else:
            low, high = members[0].record.ci_low, members[0].record.ci_high
        first = members[0].record
        score = Score(first.task, first.metric, mean, sum(m.record.n for m in members), low, high)
        record = EvalRecord(first.model, first.quant, first.method, first.dataset, score, variant=first.variant)
        items = None
        if all(m.items is not None for m in members):
            items = ItemResults.concat([m.items.with_prefix(f"s{m.record.seed}:") for m in members])
        out.append(Evaluation(record, items))
    return out


def differs_beyond_noise(a: EvalRecord, b: EvalRecord, z: float = 1.959964) -> bool | None:
    """Whether two scores differ by more than their combined 95% noise (None when unknown); unpaired:
    `qlora.report.paired` compares the same items and is what the tables use when items exist."""
    if a.stderr is None or b.stderr is None:
        return None
    return abs(a.value - b.value) > z * math.sqrt(a.stderr**2 + b.stderr**2)
