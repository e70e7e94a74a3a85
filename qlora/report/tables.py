"""The paper's Tables 2, 3, 4 and the memory table, filled with this run's records.

Each table has the paper's row order and its published numbers in adjacent columns; our models are
far smaller, so what compares is the ordering of rows and the size of gaps, not absolute values.
Every score is compared with the table's reference row on the same items (`qlora.report.paired`):
a comparison cell shows the sign and size of the difference with its 95% interval and n, and is
marked "≈" only where that interval covers no difference. Table 2 compares each data type with BF16
and with FP4 (E2M1), and adds 0-shot MMLU per data type; Tables 3 and 4 compare with LoRA BF16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from qlora.atomic import write_text
from qlora.config import Method
from qlora.eval.result import Metric, Task
from qlora.report import labels as L
from qlora.report import paper
from qlora.report.labels import DataTypeLabel
from qlora.report.paired import N_RESAMPLES, Effect, PairedComparison, compare
from qlora.report.records import EvalRecord, Evaluation, TrainRecord

TABLE2_ORDER = (L.BF16, L.INT4, L.FP4, L.FP4_E3M0, L.NF4, L.NF4_DQ)
TABLE3_ROWS = (
    (Method.NONE, L.BF16, "untuned (BF16)"),
    (Method.FULL, L.BF16, "BF16 (full fine-tune)"),
    (Method.LORA, L.BF16, "LoRA BF16"),
    (Method.QLORA, L.INT8, "QLoRA Int8"),
    (Method.QLORA, L.FP4, "QLoRA FP4"),
    (Method.QLORA, L.NF4_DQ, "QLoRA NF4+DQ"),
)
TABLE4_ROWS = (
    (Method.NONE, L.BF16, "untuned (BF16)"),
    (Method.LORA, L.BF16, "BFloat16"),
    (Method.QLORA, L.FP4, "Float4"),
    (Method.QLORA, L.NF4_DQ, "NFloat4 + DQ"),
)
FINETUNE_REFERENCE = (Method.LORA, L.BF16)
NO_ITEMS = "n/a (no per-item results)"


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """How the paired comparisons are computed (the same for every table and the findings)."""

    confidence: float = 0.95
    n_resamples: int = N_RESAMPLES
    seed: int = 0

    def compare(self, row: Evaluation, ref: Evaluation, *, strict: bool = True) -> PairedComparison:
        """strict=False pairs the shared items only (rows whose failed runs were left out)."""
        return compare(row.items, ref.items, metric=row.record.metric, confidence=self.confidence,
                       n_resamples=self.n_resamples, seed=self.seed, strict=strict)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # file stem: table2, table3, table4, memory
    title: str
    frame: pd.DataFrame  # display strings
    data: pd.DataFrame  # numbers, for the CSV
    notes: tuple[str, ...]

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", self.frame.to_markdown(index=False), ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def as_evaluations(evals: Sequence[Evaluation | EvalRecord]) -> list[Evaluation]:
    """Records without items are wrapped (their comparisons read "n/a")."""
    return [e if isinstance(e, Evaluation) else Evaluation(e) for e in evals]


def find(evals: Sequence[Evaluation], task: Task, method: Method, quant: DataTypeLabel, model: str | None = None,
         variant: str = "") -> Evaluation | None:  # fmt: skip
    """The evaluation of one table cell (of the row `variant`: "" the table's own), None if not measured.

    Raises:
        ValueError: two evaluations for the same cell.
    """
    found = [e for e in evals if e.record.task is task and e.record.method is method and e.record.quant == quant
             and (model is None or e.record.model == model) and e.record.variant == variant]  # fmt: skip
    if len(found) > 1:
        raise ValueError(f"{len(found)} {task.value} records for {model or 'one model'} {method.value} {quant.value}")
    return found[0] if found else None


def _pct(r: EvalRecord) -> str:
    ci = f" ± {50 * (r.ci_high - r.ci_low):.1f}" if r.ci_low is not None else ""
    return f"{100 * r.value:.1f}{ci} (n={r.n:,})"


def format_value(r: EvalRecord) -> str:
    if r.metric is Metric.PERPLEXITY:
        return f"{r.value:.2f}"
    if r.metric.is_nll:
        ci = f" ± {(r.ci_high - r.ci_low) / 2:.3f}" if r.ci_low is not None else ""
        return f"{r.value:.3f}{ci} (n={r.n:,})"
    return _pct(r)


def format_comparison(c: PairedComparison) -> str:
    """"+3.10% [+2.51%, +3.72%], n=64" (ratio), "+4.0 pp [+1.2, +6.8], n=500, p=0.006" (accuracy),
    "+1.3 pts [..]" (RougeL F x 100), "-0.120 nats [..]" (NLL); "≈ (...)" where the interval covers
    no difference."""
    if c.effect is Effect.RATIO:
        est, lo, hi = (100 * (v - 1) for v in (c.estimate, c.ci_low, c.ci_high))
        body = f"{est:+.2f}% [{lo:+.2f}%, {hi:+.2f}%]"
    elif c.metric.is_nll:
        body = f"{c.estimate:+.3f} nats [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
    else:
        unit = "pp" if c.metric.is_accuracy else "pts"
        body = f"{100 * c.estimate:+.1f} {unit} [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]"
    body += f", n={c.n:,}" + (f", p={c.p_value:.2g}" if c.p_value is not None else "")
    return body if c.significant else f"≈ ({body})"


def _comparison_cell(row: Evaluation | None, ref: Evaluation | None, stats: StatsConfig) -> tuple[str, PairedComparison | None]:
    if row is None:
        return "–", None
    if ref is None:
        return "– (no reference)", None
    if row is ref:
        return "reference", None
    if row.items is None or ref.items is None:
        return NO_ITEMS, None
    c = stats.compare(row, ref)
    return format_comparison(c), c


def _comparison_data(name: str, c: PairedComparison | None) -> dict:
    if c is None:
        return {}
    return {f"{name}_estimate": c.estimate, f"{name}_ci_low": c.ci_low, f"{name}_ci_high": c.ci_high, f"{name}_n": c.n,
            f"{name}_p_value": c.p_value, f"{name}_mde": c.mde, f"{name}_covers_no_difference": c.covers_null,
            f"{name}_significant": c.significant}  # fmt: skip


def _record_data(r: EvalRecord) -> dict:
    return {"model": r.model, "method": r.method.value, "quant": r.quant.value, "task": r.task.value, "metric": r.metric.value,
            "dataset": r.dataset, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n}  # fmt: skip


def _fmt_paper(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _profile_note(profile: str | None) -> list[str]:
    return [f"Produced by the `{profile}` profile."] if profile else []


def table2(evals: Sequence[Evaluation | EvalRecord], *, stats: StatsConfig = StatsConfig(), profile: str | None = None) -> Table:
    """Perplexity by data type (quantization alone, no training) and 0-shot MMLU, per causal model."""
    evals = as_evaluations(evals)
    base = [e for e in evals if e.record.method is Method.NONE and e.record.task in (Task.PERPLEXITY, Task.MMLU_ZERO_SHOT)]
    models = sorted({e.record.model for e in base})
    extra = sorted({e.record.quant for e in base if e.record.quant not in TABLE2_ORDER and e.record.quant is not None},
                   key=lambda q: q.value)  # fmt: skip
    fp4 = L.FP4.display
    rows, data = [], []
    for model in models:
        for q in TABLE2_ORDER + tuple(extra):
            ppl, zero = (find(base, task, Method.NONE, q, model) for task in (Task.PERPLEXITY, Task.MMLU_ZERO_SHOT))
            vs_bf16, c_bf16 = _comparison_cell(ppl, find(base, Task.PERPLEXITY, Method.NONE, L.BF16, model), stats)
            vs_fp4, c_fp4 = _comparison_cell(ppl, find(base, Task.PERPLEXITY, Method.NONE, L.FP4, model), stats)
            mmlu_vs, c_mmlu = _comparison_cell(zero, find(base, Task.MMLU_ZERO_SHOT, Method.NONE, L.BF16, model), stats)
            rows.append({
                "model": model, "data type": q.display, "perplexity": format_value(ppl.record) if ppl else "–",
                "vs BF16": vs_bf16, f"vs {fp4}": vs_fp4, "MMLU 0-shot %": _pct(zero.record) if zero else "–",
                "MMLU 0-shot vs BF16": mmlu_vs,
                "paper: mean Pile-CC perplexity": _fmt_paper(paper.TABLE2_PERPLEXITY.get(q.value)),
            })  # fmt: skip
            if ppl:
                data.append(_record_data(ppl.record) | _comparison_data("vs_bf16", c_bf16) | _comparison_data("vs_fp4", c_fp4)
                            | {"paper_mean_pile_cc": paper.TABLE2_PERPLEXITY.get(q.value)})  # fmt: skip
            if zero:
                data.append(_record_data(zero.record) | _comparison_data("vs_bf16", c_mmlu))
    datasets = sorted({f"{e.record.model}: {e.record.dataset} ({e.record.n:,} tokens)" for e in base if e.record.task is Task.PERPLEXITY})
    notes = [
        f"Ours: {', '.join(models) or 'no causal model'}; perplexity on {'; '.join(datasets) or '–'}. Every linear layer "
        "but the head quantized, block 64, no training. The models were dequantized from 4–5-bit GGUF at the source: "
        "BF16 is that dequantized model, not an original 16-bit checkpoint.",
        "vs BF16 / vs FP4: the perplexity ratio to that data type on the same windows (paired bootstrap 95% interval); "
        "MMLU 0-shot (choice log-likelihood) vs BF16: the paired accuracy difference, exact McNemar p. "
        "≈ marks an interval that covers no difference.",
        "Paper: mean over OPT, BLOOM, LLaMA, Pythia 125M–13B on Pile Common Crawl (Table 2).",
    ] + _profile_note(profile)  # fmt: skip
    return Table("table2", "Table 2 — perplexity and 0-shot MMLU by data type", pd.DataFrame(rows), pd.DataFrame(data), tuple(notes))


_LABELS = {Task.CLASSIFICATION: "accuracy %", Task.ROUGE_L: "RougeL %", Task.HELDOUT_NLL: "held-out NLL (nats/token)",
           Task.MMLU: "MMLU 5-shot %"}  # fmt: skip


def _columns(evals: Sequence[Evaluation], tasks: Sequence[Task]) -> list[tuple[str, Task, str | None]]:
    """(header, task, model) per task and model measured; a placeholder column where none was."""
    out = []
    for task in tasks:
        found = sorted({(e.record.model, e.record.dataset) for e in evals if e.record.task is task})
        out += [(f"{_LABELS[task]}: {d} ({m})", task, m) for m, d in found] or [(_LABELS[task], task, None)]
    return out


def _scored_table(name: str, title: str, evals: Sequence[Evaluation], row_keys, tasks, paper_cols, notes,
                  stats: StatsConfig) -> Table:  # fmt: skip
    """Rows (method, quant, label); per task and model a score column and a "vs LoRA BF16" column."""
    rows, data = [], []
    columns = _columns(evals, tasks)
    for method, quant, label in row_keys:
        row = {"method": label}
        for header, task, model in columns:
            e = None if model is None else find(evals, task, method, quant, model)
            row[header] = format_value(e.record) if e else "–"
            ref = None if model is None else find(evals, task, *FINETUNE_REFERENCE, model)
            row[f"{header} vs LoRA BF16"], c = _comparison_cell(e, ref, stats)
            if e:
                data.append(_record_data(e.record) | {"column": header} | _comparison_data("vs_lora_bf16", c))
        for header, values in paper_cols.items():
            row[header] = _fmt_paper(values.get((method.value, quant.value)))
        rows.append(row)
    return Table(name, title, pd.DataFrame(rows), pd.DataFrame(data), tuple(notes))


def table3(evals: Sequence[Evaluation | EvalRecord], *, stats: StatsConfig = StatsConfig(), profile: str | None = None) -> Table:
    """GLUE-style accuracy of the encoder, RougeL and held-out NLL of the causal model, per training method."""
    evals = as_evaluations(evals)
    paper_cols = {f"paper: {c}": {k: v[i] for k, v in paper.TABLE3.items()} for i, c in enumerate(paper.TABLE3_COLUMNS)}
    notes = [
        "Ours: accuracy of the encoder on the classification data named in the column, RougeL F-measure of the causal LM's "
        "greedy generations on held-out instruction tasks, and its NLL per response token on held-out instruction examples; "
        "± is the 95% interval.",
        "Data (embedded defaults; GLUE and Super-NaturalInstructions are not available offline): vader_binary = the "
        "human-rated English sentences of Hutto & Gilbert (2014, ICWSM; `vadersentiment` 3.3.2 sdist, MIT), positive "
        "(mean valence >= +0.5) vs negative (<= -0.5), the neutral ones left out; instruction tasks = the English "
        "single-turn tasks of the OpenAI evals registry (`evals` 3.0.1.post1, MIT; folders under other licences left "
        "out), whole task families held out for the RougeL and NLL columns, as Super-NaturalInstructions evaluates on "
        "unseen tasks.",
        "vs LoRA BF16: the paired difference on the same examples with its 95% interval (accuracy: exact McNemar p, "
        "Newcombe interval; RougeL and NLL: paired bootstrap). ≈ marks an interval that covers no difference.",
        "QLoRA Int8 here is blockwise absmax Int8 (paper Eq. 1); the paper's Int8 rows used LLM.int8().",
        "Paper: RoBERTa-large on GLUE, T5 80M–11B on Super-NaturalInstructions (Table 3).",
    ] + _profile_note(profile)  # fmt: skip
    return _scored_table("table3", "Table 3 — GLUE-style accuracy, held-out-task RougeL and held-out NLL", evals,
                         TABLE3_ROWS, (Task.CLASSIFICATION, Task.ROUGE_L, Task.HELDOUT_NLL), paper_cols, notes, stats)  # fmt: skip


def table4(evals: Sequence[Evaluation | EvalRecord], *, stats: StatsConfig = StatsConfig(), profile: str | None = None) -> Table:
    """5-shot MMLU after instruction tuning, by data type of the base."""
    evals = as_evaluations(evals)
    paper_cols = {"paper: mean 5-shot MMLU (LLaMA 7–65B)": {("lora", k) if k == "bf16" else ("qlora", k): v
                                                          for k, v in paper.TABLE4_MEAN.items()}}  # fmt: skip
    notes = [
        "Ours: the causal LM instruction-tuned on the instruction tasks (Table 3's note), MMLU test questions; prediction = "
        "the choice with the highest log-likelihood per token (the paper's code takes the argmax of the answer-letter "
        "logits: small models prefer one letter whatever the question; the per-item files in items/ also hold the letter "
        "rule with the choices rotated cyclically and averaged, which cancels that preference); fp32 logits, a tie "
        "counts 1/k; "
        "± is the Wilson 95% interval.",
        "vs LoRA BF16: the paired accuracy difference on the same questions, Newcombe 95% interval and exact McNemar p "
        "(a paired bootstrap when ties give fractional credit). ≈ marks an interval that covers no difference.",
        "Paper: LLaMA 7B/13B/33B/65B tuned on Alpaca and FLAN v2, mean of the eight (Table 4).",
    ] + _profile_note(profile)  # fmt: skip
    return _scored_table("table4", "Table 4 — MMLU 5-shot accuracy after instruction tuning", evals, TABLE4_ROWS, (Task.MMLU,),
                         paper_cols, notes, stats)  # fmt: skip


def memory_table(trains: Sequence[TrainRecord], *, profile: str | None = None) -> Table:
    rows, data = [], []
    for t in sorted(trains, key=lambda t: (t.model, -t.bits_per_param, t.method.value)):
        rows.append({
            "model": t.model, "method": t.method.value, "data type": t.quant.display,
            "bits/param": f"{t.bits_per_param:.3f}", "weights MB": f"{t.weight_mb:,.1f}", "adapter MB": f"{t.adapter_mb:,.1f}",
            "peak MB": f"{t.peak_mb:,.0f} ({t.peak_kind.value})", "tokens/s": f"{t.tokens_per_s:,.0f}",
            "compute": t.compute_dtype or "–",
        })  # fmt: skip
        data.append(t.to_json() | {"losses": None})
    notes = [
        f"Paper (LLaMA-7B): base model in 4 bits {paper.MEMORY_7B_BASE_4BIT_MB:,} MB, LoRA parameters "
        f"{paper.MEMORY_7B_LORA_PARAMS_MB} MB.",
        "weights MB counts the stored frozen weights (packed codes + constants + unquantized parts such as embeddings).",
        "On CPU the peak is the process' peak RSS (Python, libraries and data included); on GPU "
        "torch.cuda.max_memory_allocated.",
        "compute: the dtype of forward and backward (ComputeDtype.NATIVE: bfloat16 where the hardware has it natively "
        "— CUDA, CPUs with AVX-512 BF16 or AMX — float32 elsewhere); tokens/s depend on it and on the machine.",
    ] + _profile_note(profile)  # fmt: skip
    return Table("memory", "Memory by data type", pd.DataFrame(rows), pd.DataFrame(data), tuple(notes))


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """Writes <name>.md and <name>.csv atomically; returns the paths."""
    out_dir = Path(out_dir)
    md, csv = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
    write_text(md, table.to_markdown())
    write_text(csv, table.data.to_csv(index=False))
    return [md, csv]
