"""reports/findings.md: does each of the QLoRA paper's claims hold here, per model (issue 12 §4)?

Each claim gets, per model, one verdict — holds, does not hold, or inconclusive — with the paired
statistic, its 95% interval, n and the smallest effect the sample could have detected, so that an
"inconclusive" says how much more data would be needed and a "does not hold" on a small model reads
as the result it is. The rules:

- "A beats B" (claims a, d): holds when the paired interval lies wholly on A's better side, does not
  hold when it lies wholly on B's better side, else inconclusive (`paired.superiority`).
- "A matches B" (claims b, c): holds when the whole interval lies within the stated margin, does not
  hold when it lies wholly outside it, else inconclusive (`paired.equivalence`).
- Fine-tuning claims (c, d) compare gains, each row's improvement over its own untuned base on the same
  items (`qlora.report.gains`): (c) holds on held-out NLL when QLoRA NF4 + DQ recovers at least
  `Margins.gain_share` of LoRA BF16's gain (`paired.at_least`); its MMLU and RougeL parts are differences
  in differences within the margins; (d) is a difference in differences. Without untuned bases the tuned
  rows are compared directly (and the report says so).
- Every equivalence or share part states the n that 80% power would need at its margin.
- Within a claim and model, the parts' decisions are corrected for multiplicity (Holm, from the
  normal-approximation p-value of each part's interval); a decided part that does not survive it is
  inconclusive.
- Classification runs that do not beat the majority class are failed runs, reported and left out
  (`qlora.report.failures`).
- A claim with several parts holds when every part holds, does not hold when any part does not hold,
  else is inconclusive; a part not measured is inconclusive.
- (e) is accounting, not sampling: the stored bits per parameter and weights of the training records.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

from scipy import stats

from qlora.config import Method
from qlora.eval.result import Metric, Task
from qlora.report import labels as L
from qlora.quant.dtypes import DataType
from qlora.report.labels import DataTypeLabel
from qlora.eval.items import ItemResults
from qlora.report.failures import ClassifierRun
from qlora.report.gains import gain_difference, gain_items, gain_share, over_seeds, reference_gain
from qlora.report.paired import Effect, PairedComparison, Verdict, at_least, broadcast_seeds, equivalence, superiority, t_interval
from qlora.report.records import EvalRecord, Evaluation, TrainRecord
from qlora.report.tables import StatsConfig, as_evaluations, find

PAPER_BITS_NF4_DQ = 4.127  # paper §3: 4 + 8/64 + 32/(64 * 256) = 4.127 bits per parameter
FINETUNE_TASKS = (Task.ROUGE_L, Task.HELDOUT_NLL, Task.MMLU, Task.CLASSIFICATION)
_UNITS = {Task.PERPLEXITY: "windows", Task.HELDOUT_NLL: "examples", Task.ROUGE_L: "prompts", Task.MMLU: "questions",
          Task.MMLU_ZERO_SHOT: "questions", Task.CLASSIFICATION: "examples"}  # fmt: skip


class Claim(enum.Enum):
    TUNING = "0"
    A = "a"
    B = "b"
    C = "c"
    D = "d"
    E = "e"
    F = "f"
    G = "g"
    J = "j"
    K = "k"
    L = "l"

    @property
    def text(self) -> str:
        return {
            Claim.TUNING: "Fine-tuning worked: LoRA BF16 beats the untuned model on held-out instruction NLL (issue 12 §3; "
                          "a precondition for (c) and (d))",
            Claim.A: "NF4 beats FP4 (E2M1 and E3M0) and Int4 in perplexity (Table 2)",
            Claim.B: "Double quantization costs no quality: NF4 + DQ matches NF4 in perplexity",
            Claim.C: "4-bit QLoRA with NF4 + DQ matches 16-bit LoRA after fine-tuning (Tables 3 and 4)",
            Claim.D: "FP4 trails NF4 + DQ after fine-tuning (Tables 3 and 4)",
            Claim.E: "NF4 + DQ stores 4.127 bits per parameter, and 4-bit storage shrinks the frozen weights (memory table)",
            Claim.F: "Adapters on every linear layer are needed: attention-only adapters fall short (paper Fig. 2)",
            Claim.G: "Rank matters little once every linear layer has adapters: ranks 8 and 16 recover >= 90% of rank 64's "
                     "gain (paper Fig. 3)",
            Claim.J: "NF4 represents zero exactly (its asymmetric construction): a weight of 0 round-trips",
            Claim.K: "8-bit floats (FP8 E4M3, E5M2; blockwise absmax like Int8) match Int8 and beat NF4 in perplexity",
            Claim.L: "NF4 stays the best 4-bit format of the ones since the paper (NVFP4, MXFP4, AF4) in perplexity, and an "
                     "E4M4 absmax in double quantization costs nothing",
        }[self]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Margins:
    """Equivalence margins: the differences counted as "no difference" (stated in the report).

    Attributes:
        perplexity: relative, for claim (b): ratios within 1 ± this (paper: DQ costs no quality).
        accuracy: percentage points / 100 (MMLU, classification), claim (c).
        rouge_l: RougeL F points / 100, claim (c).
        nll: nats per response token, claim (c) (0.01 nats ≈ 1% perplexity).
    """

    perplexity: float = 0.005
    accuracy: float = 0.01
    rouge_l: float = 0.01
    nll: float = 0.01
    gain_share: float = 0.9  # claim (c): QLoRA recovers at least this share of LoRA's fine-tuning gain

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"margin {f.name} must be a number in (0, 1), got {v!r}")

    def for_metric(self, metric: Metric) -> float:
        if metric.is_accuracy:
            return self.accuracy
        return {Metric.PERPLEXITY: self.perplexity, Metric.ROUGE_L_F: self.rouge_l, Metric.NLL: self.nll, Metric.CONTENT_NLL: self.nll}[metric]

    def describe(self) -> str:
        return (f"perplexity ±{100 * self.perplexity:g}% (claim b); after fine-tuning (claim c): QLoRA NF4 + DQ recovers at least "
                f"{100 * self.gain_share:g}% of LoRA BF16's held-out NLL gain over its untuned base; differences in differences "
                f"of accuracy ±{100 * self.accuracy:g} pp, RougeL ±{100 * self.rouge_l:g} points (tuned rows compared directly "
                f"where there is no untuned base: held-out NLL ±{self.nll:g} nats per token)")  # fmt: skip


class Test(enum.Enum):
    """The decision rule of a part (for the multiplicity correction and the power statement)."""

    SUPERIORITY = "superiority"
    EQUIVALENCE = "equivalence"  # bound: the margin
    AT_LEAST = "at least"  # bound: the least effect (a share of the gain)


@dataclasses.dataclass(frozen=True)
class Part:
    """One comparison (or accounting check) behind a verdict."""

    label: str
    verdict: Verdict
    comparison: PairedComparison | None = None
    detail: str = ""  # what was measured, where there is no paired comparison (or why there is none)
    test: Test | None = None
    bound: float | None = None
    counts: bool = True  # False: shown beside the deciding parts, not part of the verdict

    @property
    def p_value(self) -> float | None:
        """The normal-approximation p-value of the part's decision (None: undecided or no comparison)."""
        c = self.comparison
        if c is None or self.test is None or self.verdict is Verdict.INCONCLUSIVE or c.se <= 0:
            return None
        est = math.log(c.estimate) if c.effect is Effect.RATIO else c.estimate
        null = 0.0 if c.effect is Effect.RATIO else c.null
        tail = lambda z: float(stats.norm.sf(z))  # noqa: E731
        if self.test is Test.SUPERIORITY:
            return 2 * tail(abs(est - null) / c.se)
        if self.test is Test.AT_LEAST:
            return tail((est - self.bound) / c.se if self.verdict is Verdict.HOLDS else (self.bound - est) / c.se)
        margin = math.log(1 + self.bound) if c.effect is Effect.RATIO else self.bound
        if self.verdict is Verdict.HOLDS:  # TOST: both one-sided tests
            return max(tail((est - (null - margin)) / c.se), tail(((null + margin) - est) / c.se))
        return tail((abs(est - null) - margin) / c.se)

    @property
    def needed(self) -> str:
        """For an equivalence or share part: the n that 80% power at its bound needs, beside the n used."""
        c = self.comparison
        if c is None or self.test not in (Test.EQUIVALENCE, Test.AT_LEAST) or c.se <= 0:
            return ""
        z = float(stats.norm.ppf(0.5 + c.confidence / 2))
        # equivalence: both one-sided tests at the interval's level when the true difference is 0; a share: one
        # one-sided test when the true share is 1 (the paper's claim) against the bound
        if self.test is Test.EQUIVALENCE:
            distance, power_z = (math.log(1 + self.bound) if c.effect is Effect.RATIO else self.bound), float(stats.norm.ppf(0.9))
        else:
            distance, power_z = c.null - self.bound, float(stats.norm.ppf(0.8))
        unit, used = (c.cluster_unit, c.clusters) if c.clusters else (_UNITS[c.task], c.n)
        need = math.ceil(used * ((z + power_z) * c.se / distance) ** 2)
        return f"80% power at this margin needs ~{need:,} {unit} (used {used:,})"


@dataclasses.dataclass(frozen=True)
class Finding:
    claim: Claim
    model: str
    verdict: Verdict
    parts: tuple[Part, ...]


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """All hold: holds; any does not hold: does not hold; else inconclusive."""
    if verdicts and all(v is Verdict.HOLDS for v in verdicts):
        return Verdict.HOLDS
    if any(v is Verdict.DOES_NOT_HOLD for v in verdicts):
        return Verdict.DOES_NOT_HOLD
    return Verdict.INCONCLUSIVE


def _part(label: str, row: Evaluation | None, ref: Evaluation | None, rule, stats: StatsConfig, test: Test | None = None,
          bound: float | None = None) -> Part:  # fmt: skip
    if row is None or ref is None:
        missing = " and ".join(name for name, e in (("row", row), ("reference", ref)) if e is None)
        return Part(label, Verdict.INCONCLUSIVE, detail=f"not measured ({missing} missing)")
    if row.items is None or ref.items is None:
        return Part(label, Verdict.INCONCLUSIVE, detail="no per-item results to pair")
    c = stats.compare(row, ref, strict=row.record.task is not Task.CLASSIFICATION)  # failed runs leave seeds out
    verdict = rule(c)
    spread = _over_seeds(row, ref, c, stats)
    if spread is not None:  # rows trained once per seed: the verdict must also survive run-to-run noise
        label, verdict = _decided_over_seeds(label, verdict, rule, *spread, stats.confidence)
    return Part(label, verdict, c, test=test, bound=bound)


MAX_SEEDS = 50


def _decided_over_seeds(label: str, verdict: Verdict, rule, seeded: PairedComparison, k: int, confidence: float) -> tuple[str, Verdict]:
    """`label` with the per-seed mean and its t interval over the `k` seeds (`seeded`), and the verdict, which
    must also follow from that interval, else it is inconclusive. Then the label says how many seeds would decide
    at this mean and spread (a point estimate of what more seeds would show, not a power calculation)."""
    stat, ci, _ = _statistic(seeded)
    note = ""
    if rule(seeded) is not verdict:
        sd = (seeded.ci_high - seeded.estimate) * math.sqrt(k) / float(stats.t.ppf(0.5 + confidence / 2, k - 1))
        need = next((n for n in range(k + 1, MAX_SEEDS + 1)
                     if rule(_t_spread(seeded, sd * float(stats.t.ppf(0.5 + confidence / 2, n - 1)) / math.sqrt(n))) is verdict),
                    None)  # fmt: skip
        note = (f"; at this mean and spread {need} seeds would decide" if need else
                f"; at this mean and spread no number of seeds up to {MAX_SEEDS} would decide")  # fmt: skip
        verdict = Verdict.INCONCLUSIVE
    return f"{label} (per-seed mean over {k} seeds: {stat.split(' (')[0]}, t interval {ci}{note})", verdict


def _t_spread(c: PairedComparison, half: float) -> PairedComparison:
    return dataclasses.replace(c, ci_low=c.estimate - half, ci_high=c.estimate + half)


def split_seeds(items: ItemResults) -> dict[int, ItemResults] | None:
    """The items of a row pooled over seeds (`records.pool_seeds` prefixes ids with "s<seed>:"), by
    seed; None when the items are not pooled from two or more seeds. (Here, not in records.py: the
    evaluation stages depend on records.py, the report alone on this module.)"""
    groups: dict[int, list] = {}
    for item in items.items:
        head, sep, _ = item.id.partition(":")
        if not sep or not head.startswith("s") or not head[1:].isdigit():
            return None
        groups.setdefault(int(head[1:]), []).append(item)
    if len(groups) < 2:
        return None
    return {seed: ItemResults(items.task, tuple(group)) for seed, group in sorted(groups.items())}


def _over_seeds(row: Evaluation, ref: Evaluation, c: PairedComparison, stats: StatsConfig) -> tuple[PairedComparison, int] | None:
    """The paired effect per training seed, and its mean with a t interval over the seeds (the
    item-level interval is conditional on the trained models; this one includes run-to-run noise). A reference
    evaluated once (an untuned base) is compared with every seed of the row."""
    rows, refs = (split_seeds(items) for items in broadcast_seeds(row.items, ref.items))
    if rows is None or refs is None or rows.keys() != refs.keys() or c.effect is Effect.RATIO:
        return None
    effects = [stats.compare(Evaluation(row.record, rows[s]), Evaluation(ref.record, refs[s])).estimate for s in rows]
    mean, low, high = t_interval(effects, stats.confidence)
    return dataclasses.replace(c, estimate=mean, ci_low=low, ci_high=high, p_value=None), len(effects)


ALPHA = 0.05


def holm(parts: list[Part]) -> list[Part]:
    """Holm's step-down correction over the decided parts that count: in order of p-value, the j-th of m
    must have p <= ALPHA / (m - j + 1) (and every earlier one too); a decided part that fails is inconclusive."""
    decided = sorted((i for i, p in enumerate(parts) if p.counts and p.p_value is not None), key=lambda i: parts[i].p_value)
    m, out, stopped = len(decided), list(parts), False
    for j, i in enumerate(decided):
        stopped = stopped or parts[i].p_value > ALPHA / (m - j)
        if stopped:
            p = parts[i]
            out[i] = dataclasses.replace(p, verdict=Verdict.INCONCLUSIVE,
                                         label=f"{p.label} ({p.verdict.value} at its own level; not after Holm over {m} parts, "
                                               f"p = {p.p_value:.2g})")  # fmt: skip
    return out


def _finding(claim: Claim, model: str, parts: list[Part]) -> Finding:
    parts = holm(parts)
    return Finding(claim, model, combine([p.verdict for p in parts if p.counts]), tuple(parts))


def assess(evals: Sequence[Evaluation | EvalRecord], trains: Sequence[TrainRecord], *, margins: Margins = Margins(),
           stats: StatsConfig = StatsConfig()) -> list[Finding]:  # fmt: skip
    """The verdict of every claim for every model that has records for it (claim order, then model)."""
    evals = as_evaluations(evals)
    out: list[Finding] = []

    def ev(task: Task, method: Method, quant: DataTypeLabel, model: str) -> Evaluation | None:
        return find(evals, task, method, quant, model)

    ppl_models = sorted({e.record.model for e in evals if e.record.task is Task.PERPLEXITY})
    tuned_models = sorted({e.record.model for e in evals if e.record.task in FINETUNE_TASKS and e.record.method is not Method.NONE})
    nll_models = sorted({e.record.model for e in evals if e.record.task is Task.HELDOUT_NLL})
    for model in nll_models:
        parts = []
        for method, quant in ((Method.LORA, L.BF16), (Method.QLORA, L.NF4_DQ), (Method.QLORA, L.FP4)):
            tuned = ev(Task.HELDOUT_NLL, method, quant, model)
            if tuned is None:
                continue
            base = ev(Task.HELDOUT_NLL, Method.NONE, quant, model) or ev(Task.HELDOUT_NLL, Method.NONE, L.BF16, model)
            own = base is not None and base.record.quant == quant
            label = f"{_row_name(method, quant)} vs untuned {(quant if own else L.BF16).display}"
            parts.append(_part(label, tuned, base, superiority, stats, Test.SUPERIORITY))
        out.append(_finding(Claim.TUNING, model, parts))
    for model in ppl_models:
        nf4 = ev(Task.PERPLEXITY, Method.NONE, L.NF4, model)
        out.append(_finding(Claim.A, model, [_part(f"NF4 vs {q.display}", nf4, ev(Task.PERPLEXITY, Method.NONE, q, model), superiority,
                                                   stats, Test.SUPERIORITY) for q in (L.FP4, L.FP4_E3M0, L.INT4)]))  # fmt: skip
    for model in ppl_models:
        rule = lambda c: equivalence(c, margins.perplexity)  # noqa: E731
        out.append(_finding(Claim.B, model, [_part("NF4 + DQ vs NF4", ev(Task.PERPLEXITY, Method.NONE, L.NF4_DQ, model),
                                                   ev(Task.PERPLEXITY, Method.NONE, L.NF4, model), rule, stats, Test.EQUIVALENCE,
                                                   margins.perplexity)]))  # fmt: skip
    for model in tuned_models:
        out.append(_finding(Claim.C, model, _claim_c(ev, model, margins, stats)))
    for model in tuned_models:
        out.append(_finding(Claim.D, model, _claim_d(ev, model, stats)))
    variants = {(e.record.model, e.record.variant) for e in evals if e.record.variant}
    for model in tuned_models:
        if (model, "attention") in variants:
            out.append(_finding(Claim.F, model, _claim_f(evals, model, margins, stats)))
        if any((model, f"r{r}") in variants for r in (8, 16)):
            out.append(_finding(Claim.G, model, _claim_g(evals, model, margins, stats)))
    for model in ppl_models:
        present = {e.record.quant for e in evals if e.record.model == model and e.record.task is Task.PERPLEXITY}
        if present & {L.FP8_E4M3, L.FP8_E5M2}:
            ppl = lambda q: ev(Task.PERPLEXITY, Method.NONE, q, model)  # noqa: E731
            rule = lambda c: equivalence(c, margins.perplexity)  # noqa: E731
            out.append(_finding(Claim.K, model, [
                *(_part(f"{q.display} vs Int8 (within ±{100 * margins.perplexity:g}%)", ppl(q), ppl(L.INT8), rule, stats, Test.EQUIVALENCE,
                        margins.perplexity) for q in (L.FP8_E4M3, L.FP8_E5M2) if q in present),
                *(_part(f"{q.display} vs NF4", ppl(q), ppl(L.NF4), superiority, stats, Test.SUPERIORITY)
                  for q in (L.FP8_E4M3, L.FP8_E5M2) if q in present)]))  # fmt: skip
        if present & {L.NVFP4, L.MXFP4, L.AF4, L.NF4_DQ_E4M4}:
            ppl = lambda q: ev(Task.PERPLEXITY, Method.NONE, q, model)  # noqa: E731
            parts = [_part(f"NF4 (block 64) vs {q.display} (block {q.block_size})", ppl(L.NF4), ppl(q), superiority, stats,
                           Test.SUPERIORITY) for q in (L.NVFP4, L.MXFP4, L.AF4) if q in present]  # fmt: skip
            if L.NF4_DQ_E4M4 in present:
                parts.append(_part(f"NF4 + DQ (E4M4) vs NF4 (within ±{100 * margins.perplexity:g}%)", ppl(L.NF4_DQ_E4M4), ppl(L.NF4),
                                   lambda c: equivalence(c, margins.perplexity), stats, Test.EQUIVALENCE, margins.perplexity))  # fmt: skip
            out.append(_finding(Claim.L, model, parts))
    if ppl_models:
        out.append(_finding(Claim.J, "(the data types)", _zero_round_trip(sorted(
            {e.record.quant for e in evals if e.record.task is Task.PERPLEXITY and e.record.quant is not None and e.record.quant.dtype.is_quantized},
            key=lambda q: q.value))))  # fmt: skip
    for model in sorted({t.model for t in trains}):
        out.append(_finding(Claim.E, model, _accounting([t for t in trains if t.model == model])))
    return out


def _row_name(method: Method, quant: DataTypeLabel) -> str:
    return f"{'LoRA' if method is Method.LORA else 'QLoRA'} {quant.display}"


def _gain_part(label: str, task: Task, metric: Metric, rows: tuple, kind: str, rule, stats: StatsConfig, test: Test,
               bound: float | None, counts: bool = True) -> Part:  # fmt: skip
    """A part comparing two rows' gains over their own untuned bases (rows: tuned, base, ref tuned, ref base)."""
    if any(e is None or e.items is None for e in rows):
        return Part(label, Verdict.INCONCLUSIVE, detail="not measured (a tuned row, its untuned base or their items missing)",
                    counts=counts)  # fmt: skip
    g = gain_items(*(e.items for e in rows), metric)
    kw = dict(confidence=stats.confidence, n_resamples=stats.n_resamples, seed=stats.seed)
    if kind == "share":
        est, low, high = reference_gain(g, **kw)
        if low <= 0:  # a share of no gain (or of a loss) is not a measurement: nothing to recover
            return Part(label, Verdict.INCONCLUSIVE, counts=counts,
                        detail=f"no gain to share: the reference row's own gain over its untuned base is {est:+.3f} "
                               f"[{low:+.3f}, {high:+.3f}] nats/token ({len(g.ref)} items), its interval reaching 0")  # fmt: skip
    compare = (lambda x: gain_share(x, **kw)) if kind == "share" else (lambda x: gain_difference(x, task, metric, **kw))
    c = compare(g)
    verdict = rule(c)
    spread = over_seeds(g, compare, stats.confidence)
    if spread is not None:
        mean, low, high, k = spread
        label, verdict = _decided_over_seeds(label, verdict, rule, dataclasses.replace(c, estimate=mean, ci_low=low, ci_high=high),
                                             k, stats.confidence)  # fmt: skip
    return Part(label, verdict, c, test=test, bound=bound, counts=counts)


_FINETUNE_METRIC = {Task.HELDOUT_NLL: Metric.CONTENT_NLL, Task.MMLU: Metric.CHOICE_ACCURACY, Task.ROUGE_L: Metric.ROUGE_L_F}


def _has_bases(ev, model: str, quants) -> bool:
    return all(ev(Task.HELDOUT_NLL, Method.NONE, q, model) is not None for q in quants)


def _claim_c(ev, model: str, margins: Margins, stats: StatsConfig) -> list[Part]:
    row, ref = (Method.QLORA, L.NF4_DQ), (Method.LORA, L.BF16)
    parts: list[Part] = []
    if _has_bases(ev, model, (L.NF4_DQ, L.BF16)):
        rows = lambda task: (ev(task, *row, model), ev(task, Method.NONE, L.NF4_DQ, model),  # noqa: E731
                             ev(task, *ref, model), ev(task, Method.NONE, L.BF16, model))
        share = margins.gain_share
        parts.append(_gain_part(f"held-out NLL (template tokens left out): share of LoRA BF16's gain that QLoRA NF4 + DQ "
                                f"recovers (>= {100 * share:g}%)", Task.HELDOUT_NLL, Metric.CONTENT_NLL, rows(Task.HELDOUT_NLL),
                                "share", lambda c: at_least(c, share), stats, Test.AT_LEAST, share))  # fmt: skip
        parts.append(_gain_part("held-out NLL with the template's tokens (shown, not deciding): share of the gain", Task.HELDOUT_NLL,
                                Metric.NLL, rows(Task.HELDOUT_NLL), "share", lambda c: at_least(c, share), stats, Test.AT_LEAST,
                                share, counts=False))  # fmt: skip
        for task in (Task.MMLU, Task.ROUGE_L):
            metric, margin = _FINETUNE_METRIC[task], margins.for_metric(_FINETUNE_METRIC[task])
            if any(ev(task, *r, model) for r in (row, ref)):
                parts.append(_gain_part(f"{task.value}: QLoRA NF4 + DQ's gain - LoRA BF16's gain", task, metric, rows(task), "difference",
                                        lambda c, m=margin: equivalence(c, m), stats, Test.EQUIVALENCE, margin))  # fmt: skip
    else:
        for task in (Task.ROUGE_L, Task.HELDOUT_NLL, Task.MMLU):
            r, f = ev(task, *row, model), ev(task, *ref, model)
            if r or f:
                metric = (r or f).record.metric
                parts.append(_part(f"{task.value}: QLoRA NF4 + DQ vs LoRA BF16 (tuned rows; no untuned base of each)", r, f,
                                   lambda c, m=metric: equivalence(c, margins.for_metric(m)), stats, Test.EQUIVALENCE,
                                   margins.for_metric(metric)))  # fmt: skip
    r, f = ev(Task.CLASSIFICATION, *row, model), ev(Task.CLASSIFICATION, *ref, model)
    if r or f:
        parts.append(_part("classification: QLoRA NF4 + DQ vs LoRA BF16", r, f, lambda c: equivalence(c, margins.accuracy), stats,
                           Test.EQUIVALENCE, margins.accuracy))  # fmt: skip
    return parts


def _claim_d(ev, model: str, stats: StatsConfig) -> list[Part]:
    row, ref = (Method.QLORA, L.NF4_DQ), (Method.QLORA, L.FP4)
    parts: list[Part] = []
    if _has_bases(ev, model, (L.NF4_DQ, L.FP4)):
        for task in (Task.HELDOUT_NLL, Task.MMLU, Task.ROUGE_L):
            rows = (ev(task, *row, model), ev(task, Method.NONE, L.NF4_DQ, model), ev(task, *ref, model),
                    ev(task, Method.NONE, L.FP4, model))  # fmt: skip
            if rows[0] or rows[2]:
                parts.append(_gain_part(f"{task.value}: QLoRA NF4 + DQ's gain - QLoRA FP4's gain", task, _FINETUNE_METRIC[task], rows,
                                        "difference", superiority, stats, Test.SUPERIORITY, None))  # fmt: skip
    else:
        for task in (Task.ROUGE_L, Task.HELDOUT_NLL, Task.MMLU):
            r, f = ev(task, *row, model), ev(task, *ref, model)
            if r or f:
                parts.append(_part(f"{task.value}: QLoRA NF4 + DQ vs QLoRA FP4 (tuned rows; no untuned base of each)", r, f, superiority,
                                   stats, Test.SUPERIORITY))  # fmt: skip
    r, f = ev(Task.CLASSIFICATION, *row, model), ev(Task.CLASSIFICATION, *ref, model)
    if r or f:
        parts.append(_part("classification: QLoRA NF4 + DQ vs QLoRA FP4", r, f, superiority, stats, Test.SUPERIORITY))
    return parts


def _variant(evals, task: Task, model: str, variant: str) -> Evaluation | None:
    return find(evals, task, Method.QLORA, L.NF4_DQ, model, variant)


def _claim_f(evals, model: str, margins: Margins, stats: StatsConfig) -> list[Part]:
    base = find(evals, Task.HELDOUT_NLL, Method.NONE, L.NF4_DQ, model)
    rows = (_variant(evals, Task.HELDOUT_NLL, model, ""), base, _variant(evals, Task.HELDOUT_NLL, model, "attention"), base)
    parts = [_gain_part("held-out NLL (template tokens left out): all-linear QLoRA NF4 + DQ's gain - attention-only's gain",
                        Task.HELDOUT_NLL, Metric.CONTENT_NLL, rows, "difference", superiority, stats, Test.SUPERIORITY, None)]  # fmt: skip
    lora = (find(evals, Task.HELDOUT_NLL, Method.LORA, L.BF16, model), find(evals, Task.HELDOUT_NLL, Method.NONE, L.BF16, model))
    parts.append(_gain_part(f"held-out NLL: share of LoRA BF16's gain that attention-only QLoRA NF4 + DQ recovers "
                            f"(>= {100 * margins.gain_share:g}%; shown)", Task.HELDOUT_NLL, Metric.CONTENT_NLL, (rows[2], base, *lora),
                            "share", lambda c: at_least(c, margins.gain_share), stats, Test.AT_LEAST, margins.gain_share,
                            counts=False))  # fmt: skip
    return parts


def _claim_g(evals, model: str, margins: Margins, stats: StatsConfig) -> list[Part]:
    base = find(evals, Task.HELDOUT_NLL, Method.NONE, L.NF4_DQ, model)
    full = _variant(evals, Task.HELDOUT_NLL, model, "")
    share = margins.gain_share
    return [_gain_part(f"held-out NLL: share of rank 64's gain that rank {r} recovers (>= {100 * share:g}%)", Task.HELDOUT_NLL,
                       Metric.CONTENT_NLL, (_variant(evals, Task.HELDOUT_NLL, model, f"r{r}"), base, full, base), "share",
                       lambda c: at_least(c, share), stats, Test.AT_LEAST, share)
            for r in (8, 16) if _variant(evals, Task.HELDOUT_NLL, model, f"r{r}") is not None]  # fmt: skip


def _zero_round_trip(quants: Sequence[DataTypeLabel]) -> list[Part]:
    """(j) measured, not asserted: a block of N(0, 1) weights with zeros among them, quantized and dequantized."""
    import torch

    from qlora.quant.api import dequantize, quantize

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 256, generator=g)
    w[:, ::7] = 0.0  # zeros among non-zero weights of every block
    w[1] = 0.0  # and a whole row of zeros
    zeros = w == 0
    parts = []
    for q in quants:
        back = dequantize(quantize(w, q.dtype, q.block_size, q.double_quant_format or q.double_quant))
        exact = int((back[zeros] == 0).sum())
        ok = Verdict.HOLDS if exact == int(zeros.sum()) else Verdict.DOES_NOT_HOLD
        # the claim is about NF4; the other data types are shown beside it
        parts.append(Part(f"{q.display}: zeros that come back exactly 0", ok, detail=f"{exact} of {int(zeros.sum())} (block {q.block_size})",
                          counts=q.dtype is DataType.NF4))  # fmt: skip
    return parts


def _accounting(trains: Sequence[TrainRecord]) -> list[Part]:
    nf4 = [t for t in trains if t.quant == L.NF4_DQ]
    bf16 = [t for t in trains if t.quant == L.BF16 and t.method is Method.LORA]
    if not nf4:
        return [Part("bits per parameter of NF4 + DQ", Verdict.INCONCLUSIVE, detail="no NF4 + DQ training record")]
    bits = nf4[0].bits_per_param
    ok = Verdict.HOLDS if abs(bits - PAPER_BITS_NF4_DQ) < 5e-4 else Verdict.DOES_NOT_HOLD
    parts = [Part("bits per parameter of NF4 + DQ", ok, detail=f"{bits:.6g} bits/param counted from the bytes of the checkpoint "
                                                            f"file's codes and block constants (paper: {PAPER_BITS_NF4_DQ})")]
    if bf16:
        ratio = nf4[0].weight_mb / bf16[0].weight_mb
        parts.append(Part("frozen weights, QLoRA NF4 + DQ vs LoRA BF16", Verdict.HOLDS if ratio < 1 else Verdict.DOES_NOT_HOLD,
                          detail=f"{nf4[0].weight_mb:,.1f} MB vs {bf16[0].weight_mb:,.1f} MB (x{ratio:.3f}; unquantized "
                                 f"embeddings and head keep it above {PAPER_BITS_NF4_DQ / 16:.3f}); peak "
                                 f"{nf4[0].peak_mb:,.0f} vs {bf16[0].peak_mb:,.0f} MB ({nf4[0].peak_kind.value})"))  # fmt: skip
    else:
        parts.append(Part("frozen weights, QLoRA NF4 + DQ vs LoRA BF16", Verdict.INCONCLUSIVE, detail="no LoRA BF16 training record"))
    return parts


def _statistic(c: PairedComparison) -> tuple[str, str, str]:
    """(statistic, interval, smallest detectable effect) as text."""
    if c.effect is Effect.RATIO:
        return (f"perplexity ratio {c.estimate:.4f}", f"[{c.ci_low:.4f}, {c.ci_high:.4f}]",
                f"ratio beyond ×{c.mde:.4f} (±{100 * (c.mde - 1):.2f}%)")  # fmt: skip
    if c.effect is Effect.SHARE:
        return (f"recovers {100 * c.estimate:.1f}% of the gain", f"[{100 * c.ci_low:.1f}%, {100 * c.ci_high:.1f}%]",
                f"±{100 * c.mde:.1f} points of share")  # fmt: skip
    if c.metric.is_nll:
        return f"{c.estimate:+.4f} nats/token", f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]", f"±{c.mde:.4f} nats/token"
    unit = "pp" if c.metric.is_accuracy else "RougeL points"
    stat = f"{100 * c.estimate:+.2f} {unit}"
    if c.p_value is not None:
        stat += f" (McNemar p = {c.p_value:.3g}, discordant {c.discordant[0]}/{c.discordant[1]})"
    return stat, f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]", f"±{100 * c.mde:.2f} {unit}"


def _part_row(p: Part) -> str:
    verdict = f"**{p.verdict.value}**" if p.counts else f"({p.verdict.value}; not counted)"
    if p.comparison is None:
        return f"| {p.label} | {p.detail} | – | – | – | {verdict} |"
    c = p.comparison
    stat, ci, mde = _statistic(c)
    n = f"{c.n:,} {_UNITS[c.task]}"
    if c.cluster_unit == "tasks":
        n += f" in {c.clusters} tasks (resampled whole)"
    elif c.cluster_unit is not None:  # questions or examples pooled over training seeds
        n += f" ({c.clusters:,} {c.cluster_unit} x seeds; resampled by {c.cluster_unit[:-1]})"
    if p.needed:
        mde += f"; {p.needed}"
    return f"| {p.label} | {stat} | {ci} | {n} | {mde} | {verdict} |"


def _majority_check_lines(checked: Sequence[ClassifierRun]) -> list[str]:
    """The failed classification runs, listed, and the margin by which the others beat the majority class."""
    if not checked:
        return []
    failed = [r for r in checked if r.failed]
    passed = [r for r in checked if not r.failed]
    lines = []
    if failed:
        lines += ["", "## Failed training runs (left out of every comparison)", "",
                  "A classifier that does not beat always answering the majority class learned nothing; its seed is reported "
                  "here and a comparison uses the seeds both rows have.", ""]  # fmt: skip
        lines += [f"- {r.describe()}" for r in failed]
    lines += ["", f"Classification runs checked against the majority class of their test items: {len(checked)}, "
                  f"{len(failed)} failed."]  # fmt: skip
    if passed:
        low = min(passed, key=lambda r: r.accuracy - r.majority)
        lines[-1] += f" The closest of the others: {low.describe()}."
    return lines


def render(found: Sequence[Finding], *, profile: str, margins: Margins = Margins(), stats: StatsConfig = StatsConfig(),
           checked: Sequence[ClassifierRun] = ()) -> str:  # fmt: skip
    """The markdown of reports/findings.md."""
    lines = [
        "# Findings: do the QLoRA paper's claims hold here?",
        "",
        f"Produced by the `{profile}` profile. The causal models were dequantized from 4–5-bit GGUF files at the source "
        "(no 16-bit checkpoint of a small LM is available offline), so \"BF16\" is that dequantized model: every data "
        "type is compared with it, not with an original 16-bit model.",
        "",
        f"How to read: each comparison is paired — the same windows, questions, prompts or examples for both rows — "
        f"with a {100 * stats.confidence:g}% interval (perplexity, NLL, RougeL: paired bootstrap, BCa, "
        f"{stats.n_resamples:,} resamples, seed {stats.seed}; accuracy: exact McNemar test and Newcombe's interval). "
        "\"Smallest detectable\" is the effect this sample had 80% power to detect (two-sided, 5%). "
        "\"A beats B\" holds when the interval lies wholly on A's better side and does not hold when it lies wholly on "
        "B's; \"A matches B\" holds when the interval lies within the margin and does not hold when it lies wholly "
        "outside; otherwise inconclusive at this n. A claim with several parts holds only if all hold. "
        "Rows trained once per seed are paired seed by seed and pooled; their interval is conditional on the trained "
        "models, so the verdict must also follow from the per-seed mean effect's t interval over seeds (shown beside "
        "the comparison), else it is inconclusive. "
        "Fine-tuning claims compare gains: each tuned row's improvement over its own untuned base on the same items "
        "(a difference in differences); held-out examples and prompts are resampled by whole held-out task (a cluster "
        "bootstrap), since items of one task are not independent draws; MMLU questions and classification examples pooled "
        "over seeds are resampled whole (an item's results under the seeds are not independent draws either). Within a claim and model, decided parts are "
        "corrected for multiplicity (Holm). "
        "A \"does not hold\" on a small model is a result, not a bug.",
        "",
        f"Equivalence margins: {margins.describe()}.",
        "",
        "## Summary",
        "",
        "| claim | model | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| ({f.claim.value}) {f.claim.text} | {f.model} | **{f.verdict.value}** |" for f in found]
    lines += _majority_check_lines(checked)
    for claim in Claim:
        of_claim = [f for f in found if f.claim is claim]
        if not of_claim:
            continue
        lines += ["", f"## ({claim.value}) {claim.text}"]
        for f in of_claim:
            lines += ["", f"### {f.model}: {f.verdict.value}", "",
                      f"| comparison | statistic | {100 * stats.confidence:g}% interval | n | smallest detectable | verdict |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            lines += [_part_row(p) for p in f.parts]
    return "\n".join(lines) + "\n"


def findings(evals: Sequence[Evaluation | EvalRecord], trains: Sequence[TrainRecord], *, profile: str,
             margins: Margins = Margins(), stats: StatsConfig = StatsConfig(), checked: Sequence[ClassifierRun] = ()) -> str:  # fmt: skip
    """reports/findings.md's text: `assess` then `render`.

    Args:
        evals: the evaluations (records with their per-item results; records alone give "inconclusive").
        trains: the training records (claim e).
        profile: the name of the profile that produced the data (stated in the report).
    """
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must name the profile that produced the data, got {profile!r}")
    return render(assess(evals, trains, margins=margins, stats=stats), profile=profile, margins=margins, stats=stats, checked=checked)
