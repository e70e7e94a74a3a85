"""reports/findings.md: does each of the QLoRA paper's claims hold here, per model (issue 12 §4)?

Each claim gets, per model, one verdict — holds, does not hold, or inconclusive — with the paired
statistic, its 95% interval, n and the smallest effect the sample could have detected, so that an
"inconclusive" says how much more data would be needed and a "does not hold" on a small model reads
as the result it is. The rules:

- "A beats B" (claims a, d): holds when the paired interval lies wholly on A's better side, does not
  hold when it lies wholly on B's better side, else inconclusive (`paired.superiority`).
- "A matches B" (claims b, c): holds when the whole interval lies within the stated margin, does not
  hold when it lies wholly outside it, else inconclusive (`paired.equivalence`).
- A claim with several parts holds when every part holds, does not hold when any part does not hold,
  else is inconclusive; a part not measured is inconclusive.
- (e) is accounting, not sampling: the stored bits per parameter and weights of the training records.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from qlora.config import Method
from qlora.eval.result import Metric, Task
from qlora.report import labels as L
from qlora.report.labels import DataTypeLabel
from qlora.report.paired import Effect, PairedComparison, Verdict, equivalence, superiority, t_interval
from qlora.eval.items import ItemResults
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"margin {f.name} must be a number in (0, 1), got {v!r}")

    def for_metric(self, metric: Metric) -> float:
        if metric.is_accuracy:
            return self.accuracy
        return {Metric.PERPLEXITY: self.perplexity, Metric.ROUGE_L_F: self.rouge_l, Metric.NLL: self.nll}[metric]

    def describe(self) -> str:
        return (f"perplexity ±{100 * self.perplexity:g}% (claim b); after fine-tuning (claim c): accuracy ±{100 * self.accuracy:g} pp, "
                f"RougeL ±{100 * self.rouge_l:g} points, held-out NLL ±{self.nll:g} nats per token")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Part:
    """One comparison (or accounting check) behind a verdict."""

    label: str
    verdict: Verdict
    comparison: PairedComparison | None = None
    detail: str = ""  # what was measured, where there is no paired comparison (or why there is none)


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


def _part(label: str, row: Evaluation | None, ref: Evaluation | None, rule, stats: StatsConfig) -> Part:
    if row is None or ref is None:
        missing = " and ".join(name for name, e in (("row", row), ("reference", ref)) if e is None)
        return Part(label, Verdict.INCONCLUSIVE, detail=f"not measured ({missing} missing)")
    if row.items is None or ref.items is None:
        return Part(label, Verdict.INCONCLUSIVE, detail="no per-item results to pair")
    c = stats.compare(row, ref)
    verdict = rule(c)
    spread = _over_seeds(row, ref, c, stats)
    if spread is not None:  # rows trained once per seed: the verdict must also survive run-to-run noise
        over_seeds, k = spread
        stat, ci, _ = _statistic(over_seeds)
        label += f" (per-seed mean over {k} seeds: {stat.split(' (')[0]}, t interval {ci})"
        if rule(over_seeds) is not verdict:
            verdict = Verdict.INCONCLUSIVE
    return Part(label, verdict, c)


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
    item-level interval is conditional on the trained models; this one includes run-to-run noise)."""
    rows, refs = split_seeds(row.items), split_seeds(ref.items)
    if rows is None or refs is None or rows.keys() != refs.keys() or c.effect is Effect.RATIO:
        return None
    effects = [stats.compare(Evaluation(row.record, rows[s]), Evaluation(ref.record, refs[s])).estimate for s in rows]
    mean, low, high = t_interval(effects, stats.confidence)
    return dataclasses.replace(c, estimate=mean, ci_low=low, ci_high=high, p_value=None), len(effects)


def _finding(claim: Claim, model: str, parts: list[Part]) -> Finding:
    return Finding(claim, model, combine([p.verdict for p in parts]), tuple(parts))


def assess(evals: Sequence[Evaluation | EvalRecord], trains: Sequence[TrainRecord], *, margins: Margins = Margins(),
           stats: StatsConfig = StatsConfig()) -> list[Finding]:  # fmt: skip
    """The verdict of every claim for every model that has records for it (claim order, then model)."""
    evals = as_evaluations(evals)
    out: list[Finding] = []

    def ev(task: Task, method: Method, quant: DataTypeLabel, model: str) -> Evaluation | None:
        return find(evals, task, method, quant, model)

    ppl_models = sorted({e.record.model for e in evals if e.record.task is Task.PERPLEXITY})
    tuned_models = sorted({e.record.model for e in evals if e.record.task in FINETUNE_TASKS and e.record.method is not Method.NONE})
    for model in sorted({e.record.model for e in evals if e.record.task is Task.HELDOUT_NLL}):
        out.append(_finding(Claim.TUNING, model, [_part("LoRA BF16 vs untuned", ev(Task.HELDOUT_NLL, Method.LORA, L.BF16, model),
                                                        ev(Task.HELDOUT_NLL, Method.NONE, L.BF16, model), superiority, stats)]))  # fmt: skip
    for model in ppl_models:
        nf4 = ev(Task.PERPLEXITY, Method.NONE, L.NF4, model)
        out.append(_finding(Claim.A, model, [_part(f"NF4 vs {q.display}", nf4, ev(Task.PERPLEXITY, Method.NONE, q, model), superiority, stats)
                                             for q in (L.FP4, L.FP4_E3M0, L.INT4)]))  # fmt: skip
    for model in ppl_models:
        rule = lambda c: equivalence(c, margins.perplexity)  # noqa: E731
        out.append(_finding(Claim.B, model, [_part("NF4 + DQ vs NF4", ev(Task.PERPLEXITY, Method.NONE, L.NF4_DQ, model),
                                                   ev(Task.PERPLEXITY, Method.NONE, L.NF4, model), rule, stats)]))  # fmt: skip
    for model in tuned_models:
        parts = []
        for task in FINETUNE_TASKS:
            row, ref = ev(task, Method.QLORA, L.NF4_DQ, model), ev(task, Method.LORA, L.BF16, model)
            if row or ref:
                metric = (row or ref).record.metric
                parts.append(_part(f"{task.value}: QLoRA NF4 + DQ vs LoRA BF16", row, ref,
                                   lambda c, m=metric: equivalence(c, margins.for_metric(m)), stats))  # fmt: skip
        out.append(_finding(Claim.C, model, parts))
    for model in tuned_models:
        parts = []
        for task in FINETUNE_TASKS:
            row, ref = ev(task, Method.QLORA, L.NF4_DQ, model), ev(task, Method.QLORA, L.FP4, model)
            if row or ref:
                parts.append(_part(f"{task.value}: QLoRA NF4 + DQ vs QLoRA FP4", row, ref, superiority, stats))
        out.append(_finding(Claim.D, model, parts))
    for model in sorted({t.model for t in trains}):
        out.append(_finding(Claim.E, model, _accounting([t for t in trains if t.model == model])))
    return out


def _accounting(trains: Sequence[TrainRecord]) -> list[Part]:
    nf4 = [t for t in trains if t.quant == L.NF4_DQ]
    bf16 = [t for t in trains if t.quant == L.BF16 and t.method is Method.LORA]
    if not nf4:
        return [Part("bits per parameter of NF4 + DQ", Verdict.INCONCLUSIVE, detail="no NF4 + DQ training record")]
    bits = nf4[0].bits_per_param
    ok = Verdict.HOLDS if abs(bits - PAPER_BITS_NF4_DQ) < 5e-4 else Verdict.DOES_NOT_HOLD
    parts = [Part("bits per parameter of NF4 + DQ", ok, detail=f"{bits:.6g} stored bits/param (paper: {PAPER_BITS_NF4_DQ})")]
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
    if c.metric is Metric.NLL:
        return f"{c.estimate:+.4f} nats/token", f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]", f"±{c.mde:.4f} nats/token"
    unit = "pp" if c.metric.is_accuracy else "RougeL points"
    stat = f"{100 * c.estimate:+.2f} {unit}"
    if c.p_value is not None:
        stat += f" (McNemar p = {c.p_value:.3g}, discordant {c.discordant[0]}/{c.discordant[1]})"
    return stat, f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]", f"±{100 * c.mde:.2f} {unit}"


def _part_row(p: Part) -> str:
    if p.comparison is None:
        return f"| {p.label} | {p.detail} | – | – | – | **{p.verdict.value}** |"
    c = p.comparison
    stat, ci, mde = _statistic(c)
    return f"| {p.label} | {stat} | {ci} | {c.n:,} {_UNITS[c.task]} | {mde} | **{p.verdict.value}** |"


def render(found: Sequence[Finding], *, profile: str, margins: Margins = Margins(), stats: StatsConfig = StatsConfig()) -> str:
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
             margins: Margins = Margins(), stats: StatsConfig = StatsConfig()) -> str:  # fmt: skip
    """reports/findings.md's text: `assess` then `render`.

    Args:
        evals: the evaluations (records with their per-item results; records alone give "inconclusive").
        trains: the training records (claim e).
        profile: the name of the profile that produced the data (stated in the report).
    """
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must name the profile that produced the data, got {profile!r}")
    return render(assess(evals, trains, margins=margins, stats=stats), profile=profile, margins=margins, stats=stats)
