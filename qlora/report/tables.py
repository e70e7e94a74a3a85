"""The paper's Tables 2, 3, 4 and the memory table, filled with this run's records.

Each table has the paper's row order and its published numbers in adjacent columns; our models are
far smaller, so what compares is the ordering of rows and the size of gaps, not absolute values.
A score whose difference from the table's reference row is within the combined 95% noise is marked
"≈" — differences smaller than the noise are not findings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from qlora.report import paper
from qlora.report.records import EvalRecord, Method, TrainRecord, differs_beyond_noise

QUANT_LABELS = {
    "bf16": "BF16", "int8": "Int8", "int4": "Int4", "fp4": "FP4 (E2M1, bnb grid)",
    "fp4_e3m0": "FP4 (E3M0)", "nf4": "NF4", "nf4_dq": "NF4 + DQ",
}  # fmt: skip
TABLE3_ROWS = (
    (Method.FULL, "bf16", "BF16 (full fine-tune)"),
    (Method.LORA, "bf16", "LoRA BF16"),
    (Method.QLORA, "int8", "QLoRA Int8"),
    (Method.QLORA, "fp4", "QLoRA FP4"),
    (Method.QLORA, "nf4_dq", "QLoRA NF4+DQ"),
)
TABLE4_ROWS = (
    (Method.NONE, "bf16", "untuned (BF16)"),
    (Method.LORA, "bf16", "BFloat16"),
    (Method.QLORA, "fp4", "Float4"),
    (Method.QLORA, "nf4_dq", "NFloat4 + DQ"),
)
TABLE2_ORDER = ("bf16", "int4", "fp4", "fp4_e3m0", "nf4", "nf4_dq")


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


def _pct(r: EvalRecord) -> str:
    ci = f" ± {50 * (r.ci_high - r.ci_low):.1f}" if r.ci_low is not None else ""
    return f"{100 * r.value:.1f}{ci} (n={r.n:,})"


def _find(evals: Sequence[EvalRecord], **match) -> list[EvalRecord]:
    return [r for r in evals if all(getattr(r, k) == v for k, v in match.items())]


def _fmt_paper(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def table2(evals: Sequence[EvalRecord]) -> Table:
    """Perplexity by data type (quantization alone, no training) for each causal model."""
    ppl = [r for r in evals if r.task == "perplexity" and r.method is Method.NONE]
    models = sorted({r.model for r in ppl})
    rows, data = [], []
    for q in TABLE2_ORDER:
        row = {"data type": QUANT_LABELS[q]}
        for m in models:
            found = _find(ppl, model=m, quant=q)
            row[f"{m} perplexity"] = f"{found[0].value:.2f}" if found else "–"
            if found:
                data.append({"model": m, "quant": q, "perplexity": found[0].value, "tokens": found[0].n,
                             "paper_mean_pile_cc": paper.TABLE2_PERPLEXITY.get(q)})  # fmt: skip
        row["paper: mean Pile-CC perplexity"] = _fmt_paper(paper.TABLE2_PERPLEXITY.get(q))
        rows.append(row)
    datasets = sorted({f"{r.dataset} ({r.n:,} tokens)" for r in ppl})
    notes = (
        f"Ours: {', '.join(models) or 'no causal model'} on {', '.join(datasets) or '–'}; every linear layer but the head "
        "quantized, block 64, no training.",
        "Paper: mean over OPT, BLOOM, LLaMA, Pythia 125M–13B on Pile Common Crawl (Table 2).",
    )
    return Table("table2", "Table 2 — perplexity by data type", pd.DataFrame(rows), pd.DataFrame(data), notes)


def _scored_table(name, title, evals, row_keys, columns, paper_cols, notes) -> Table:
    """Rows (method, quant, label); columns (header, task, model|None); paper_cols {header: {key: value}}."""
    rows, data = [], []
    reference = {}
    for method, quant, label in row_keys:
        row = {"method": label}
        for header, task in columns:
            found = _find(evals, task=task, method=method, quant=quant)
            if not found:
                row[header] = "–"
                continue
            r = found[0]
            ref = reference.setdefault(header, r)
            mark = " ≈" if ref is not r and differs_beyond_noise(r, ref) is False else ""
            row[header] = _pct(r) + mark
            data.append({"method": method.value, "quant": quant, "column": header, "model": r.model, "dataset": r.dataset,
                         "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n,
                         "within_noise_of_first_row": ref is not r and differs_beyond_noise(r, ref) is False})  # fmt: skip
        for header, values in paper_cols.items():
            row[header] = _fmt_paper(values.get((method.value, quant)))
        rows.append(row)
    return Table(name, title, pd.DataFrame(rows), pd.DataFrame(data), tuple(notes))


def _columns(evals: Sequence[EvalRecord], task: str, label: str) -> list[tuple[str, str]]:
    found = sorted({(r.model, r.dataset) for r in evals if r.task == task})
    return [(f"{label}: {d} ({m})", task) for m, d in found[:1]] if found else [(f"{label}", task)]


def table3(evals: Sequence[EvalRecord]) -> Table:
    """GLUE-style accuracy of the encoder and RougeL of the causal model, per training method."""
    columns = _columns(evals, "classification", "accuracy %") + _columns(evals, "rougeL", "RougeL %")
    paper_cols = {f"paper: {c}": {k: v[i] for k, v in paper.TABLE3.items()} for i, c in enumerate(paper.TABLE3_COLUMNS)}
    notes = [
        "Ours: accuracy of the embedded encoder on a BIG-bench classification task (GLUE is not available offline) and "
        "RougeL-L F-measure of the embedded causal LM on held-out Natural Instructions subtasks; ± is the 95% interval.",
        "≈ marks a score within the combined 95% noise of the first row's.",
        "QLoRA Int8 here is blockwise absmax Int8 (paper Eq. 1); the paper's Int8 rows used LLM.int8().",
        "Paper: RoBERTa-large on GLUE, T5 80M–11B on Super-NaturalInstructions (Table 3).",
    ]
    return _scored_table("table3", "Table 3 — GLUE-style accuracy and Natural Instructions RougeL", evals, TABLE3_ROWS,
                         columns, paper_cols, notes)  # fmt: skip


def table4(evals: Sequence[EvalRecord]) -> Table:
    """5-shot MMLU after instruction tuning, by data type of the base."""
    columns = _columns(evals, "mmlu", "MMLU 5-shot %")
    paper_cols = {"paper: mean 5-shot MMLU (LLaMA 7–65B)": {("lora", k) if k == "bf16" else ("qlora", k): v
                                                          for k, v in paper.TABLE4_MEAN.items()}}  # fmt: skip
    notes = [
        "Ours: the embedded causal LM instruction-tuned on Natural Instructions, MMLU test questions, prediction = argmax "
        "over the answer-letter logits (as the paper's code); ± is the Wilson 95% interval.",
        "≈ marks a score within the combined 95% noise of the first row's (the untuned model).",
        "Paper: LLaMA 7B/13B/33B/65B tuned on Alpaca and FLAN v2, mean of the eight (Table 4).",
    ]
    return _scored_table("table4", "Table 4 — MMLU 5-shot accuracy after instruction tuning", evals, TABLE4_ROWS, columns,
                         paper_cols, notes)  # fmt: skip


def memory_table(trains: Sequence[TrainRecord]) -> Table:
    rows, data = [], []
    for t in sorted(trains, key=lambda t: (t.model, -t.bits_per_param, t.method.value)):
        rows.append({
            "model": t.model, "method": t.method.value, "data type": QUANT_LABELS.get(t.quant, t.quant),
            "bits/param": f"{t.bits_per_param:.3f}", "weights MB": f"{t.weight_mb:,.1f}", "adapter MB": f"{t.adapter_mb:,.1f}",
            f"peak MB": f"{t.peak_mb:,.0f} ({t.peak_kind})", "tokens/s": f"{t.tokens_per_s:,.0f}",
        })  # fmt: skip
        data.append(t.to_json() | {"losses": None})
    notes = (
        f"Paper (LLaMA-7B): base model in 4 bits {paper.MEMORY_7B_BASE_4BIT_MB:,} MB, LoRA parameters "
        f"{paper.MEMORY_7B_LORA_PARAMS_MB} MB.",
        "weights MB counts the stored frozen weights (packed codes + constants + unquantized parts such as embeddings).",
        "On CPU the peak is the process' peak RSS (Python, libraries and data included); on GPU "
        "torch.cuda.max_memory_allocated.",
    )
    return Table("memory", "Memory by data type", pd.DataFrame(rows), pd.DataFrame(data), notes)


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """Writes <name>.md and <name>.csv; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
    write_text_atomic(md, table.to_markdown())
    write_text_atomic(csv, table.data.to_csv(index=False))
    return [md, csv]


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
