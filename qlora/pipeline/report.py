"""The report: Tables 2, 3, 4 and the memory table (markdown + CSV), plots and the metrics summary, from
this run's metrics and per-item files only (the paper's numbers sit in adjacent columns)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qlora.pipeline import paths
from qlora.pipeline.config import CAUSAL, PipelineConfig
from qlora.pipeline.tracking import Tracking


@dataclasses.dataclass(frozen=True)
class ReportJob:
    profile: str
    causal_model_name: str

    def run(self, tracking: Tracking) -> list[Path]:
        import time

        from qlora.atomic import write_json, write_text
        from qlora.report import load_records, memory_table, metrics_summary, table2, table3, table4, write_table
        from qlora.report.plots import accuracy_bars, loss_curves, loss_curves_csv, memory_bars

        started = time.time()
        m = paths.METRICS
        files = sorted([*m.glob("base/*.json"), *m.glob("train/*.json"), *m.glob("eval/*.json")])
        evals, trains = load_records(files)
        written: list[Path] = []
        tables = [table2(evals), table3(evals), table4(evals), memory_table(trains)]
        for t in tables:
            written += write_table(t, paths.REPORTS)
        r = paths.REPORTS
        written += [loss_curves([t for t in trains if t.model == self.causal_model_name], r / "loss_curves.png"),
                    accuracy_bars(evals, "mmlu", r / "accuracy_mmlu.png"),
                    accuracy_bars(evals, "classification", r / "accuracy_classification.png"),
                    memory_bars(trains, r / "memory.png"),
                    write_text(r / "loss_by_data_type.csv", loss_curves_csv([t for t in trains if t.model == self.causal_model_name]))]  # fmt: skip
        main_evals, main_trains = load_records(sorted(m.glob("main/*.json")))
        write_json(m / "summary.json", metrics_summary(evals, trains, main_evals, main_trains))
        write_text(r / "README.md", f"# Regenerated tables (profile `{self.profile}`)\n\n" + "\n".join(t.to_markdown() for t in tables))
        tracking.log("report", params={"profile": self.profile}, tags={"stage": "report"}, artifacts=[*written, m / "summary.json"],
                     metrics={"eval_records": len(evals), "train_records": len(trains), "files": len(written)}, started=started)  # fmt: skip
        return written


def plan_report(params: PipelineConfig) -> ReportJob:
    return ReportJob(params.profile, params.models[CAUSAL].name)
