"""The report: Tables 2, 3, 4 and the memory table (markdown + CSV) with paired comparisons on the same
items, the findings (a verdict per claim of the paper), plots and the metrics summary — from this run's
metrics and per-item files only (the paper's numbers sit in adjacent columns)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, ENCODER, PipelineConfig
from qlora.pipeline.tracking import Tracking


@dataclasses.dataclass(frozen=True)
class ReportJob:
    profile: str
    causal_model_name: str
    findings_path: Path
    metric_files: tuple[Path, ...]  # the records of this pipeline's rows (base, train, eval): required
    optional_files: tuple[Path, ...]  # the untuned model's evaluation: read when present
    main_files: tuple[Path, ...]  # the main run's training and evaluation records: read when present
    analysis_files: tuple[Path, ...] = ()  # stage analysis's results (findings h, i): read when present
    robustness_path: Path = Path("reports/source_noise_robustness.json")  # shown beside (a), (b) when present
    shipping_path: Path = Path("reports/shipping_costs.json")  # claim (m), when present

    def run(self, tracking: Tracking) -> list[Path]:
        import time

        from qlora.atomic import write_json, write_text
        from qlora.data.mmlu import load_mmlu
        from qlora.report.analyses import analyses_markdown, load_results
        from qlora.report.failures import split_failed
        from qlora.report.findings import findings
        from qlora.report.mmlu_checks import identical_choices, mmlu_checks, render_checks
        from qlora.report.robustness import robustness_section
        from qlora.report.shipping import shipping_section
        from qlora.report.plots import accuracy_bars, gap_vs_step, loss_curves, loss_curves_csv, memory_bars, validation_gaps_csv
        from qlora.report.ratio_plot import perplexity_ratio_to_bf16
        from qlora.report.records import attach_items, load_records, pool_seeds
        from qlora.report.summary import metrics_summary
        from qlora.report.tables import memory_table, table2, table3, table4, write_table

        started = time.time()
        m, r = paths.METRICS, paths.REPORTS
        present = {*m.glob("base/*.json"), *m.glob("train/*.json"), *m.glob("eval/*.json"), *m.glob("main/*.json")}
        for stale in sorted(present - {*self.metric_files, *self.optional_files, *self.main_files}):
            print(f"report: ignoring {stale}: not a row of this pipeline's params (left by a removed row?)")
        for stale in sorted(set(m.glob("analysis/*.json")) - set(self.analysis_files)):
            print(f"report: ignoring {stale}: not an analysis of this pipeline's params (ablation.analyses)")
        missing = [str(f) for f in self.metric_files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"report: missing records {', '.join(missing)}: run their stages first (dvc repro)")
        records, trains = load_records([*self.metric_files, *(f for f in self.optional_files if f.is_file())])
        kept, checked = split_failed(attach_items(records, [paths.ITEMS / "base", paths.ITEMS / "eval"]))
        evals = pool_seeds(kept)
        written: list[Path] = []
        tables = [table2(evals, profile=self.profile), table3(evals, profile=self.profile), table4(evals, profile=self.profile),
                  memory_table(trains, profile=self.profile)]  # fmt: skip
        for t in tables:
            written += write_table(t, r)
        text = (findings(evals, trains, profile=self.profile, checked=checked) + render_checks(mmlu_checks(evals, identical_choices(load_mmlu())))
                + analyses_markdown(load_results(self.analysis_files))
                + robustness_section(self.robustness_path) + shipping_section(self.shipping_path))
        written.append(write_text(self.findings_path, text))
        written += [loss_curves([t for t in trains if t.model == self.causal_model_name], r / "loss_curves.png"),
                    accuracy_bars([e.record for e in evals], "mmlu", r / "accuracy_mmlu.png"),
                    accuracy_bars([e.record for e in evals], "classification", r / "accuracy_classification.png"),
                    memory_bars(trains, r / "memory.png"),
                    write_text(r / "loss_by_data_type.csv", loss_curves_csv([t for t in trains if t.model == self.causal_model_name])),
                    perplexity_ratio_to_bf16(tables[0].data, r / "perplexity_ratio.png"),
                    gap_vs_step(trains, r / "gap_vs_step.png"), write_text(r / "gap_vs_step.csv", validation_gaps_csv(trains))]  # fmt: skip
        main_evals, main_trains = load_records([f for f in self.main_files if f.is_file()])
        write_json(m / "summary.json", metrics_summary([e.record for e in evals], trains, main_evals, main_trains))
        write_text(r / "README.md", f"# Regenerated tables (profile `{self.profile}`)\n\n" + "\n".join(t.to_markdown() for t in tables))
        tracking.log("report", params={"profile": self.profile}, tags={"stage": "report"}, artifacts=[*written, m / "summary.json"],
                     metrics={"eval_records": len(evals), "train_records": len(trains), "files": len(written)}, started=started)  # fmt: skip
        return written


def plan_report(params: PipelineConfig) -> ReportJob:
    """Reads exactly the records of the rows in `params.ablation` (and the main run): a file in metrics/
    from a row that has since been removed never reaches a table."""
    a = params.ablation
    rows = [(CAUSAL, key) for key in a.causal] + [(ENCODER, key) for key in a.encoder]
    files = ([paths.base_metrics(model, quant) for model in a.base_models for quant in a.base_quants]
             + [paths.train_metrics(role, key) for role, key in rows]
             + [paths.eval_metrics(role, key) for role, key in rows])  # fmt: skip
    untuned = tuple(paths.eval_metrics(CAUSAL, paths.untuned_run(q)) for q in a.untuned_quants)  # dvc.yaml runs these; a library user need not
    main = (paths.train_metrics(CAUSAL, paths.MAIN), paths.eval_metrics(CAUSAL, paths.MAIN))
    analyses = tuple(paths.analysis_metrics(name) for name in a.analyses)  # stage analysis runs these; a library user need not
    return ReportJob(params.profile, params.models[CAUSAL].name, Path(params.findings_path), tuple(files), untuned, main, analyses,
                     Path(params.robustness_path), Path(params.shipping_path))  # fmt: skip
