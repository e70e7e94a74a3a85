"""DVC stage `report`: Tables 2, 3, 4 and the memory table (markdown + CSV) and plots, from this run's
metrics files only; the paper's published numbers sit in adjacent columns."""

import glob

from stage_io import pipeline_params, tracking_uri, write_atomic, write_json_atomic

from qlora.report import load_records, memory_table, metrics_summary, table2, table3, table4, write_table
from qlora.report.plots import accuracy_bars, loss_curves, memory_bars
from qlora.tracking import log_run

REPORTS = "reports"


def main() -> None:
    cfg = pipeline_params()
    evals, trains = load_records(sorted(glob.glob("metrics/perplexity/*.json") + glob.glob("metrics/train/*.json") +
                                        glob.glob("metrics/eval/*.json")))  # fmt: skip
    written = []
    tables = [table2(evals), table3(evals), table4(evals), memory_table(trains)]
    for t in tables:
        written += write_table(t, REPORTS)
    written += [loss_curves([t for t in trains if t.model == cfg.causal.name], f"{REPORTS}/loss_curves.png"),
                accuracy_bars(evals, "mmlu", f"{REPORTS}/accuracy_mmlu.png"),
                accuracy_bars(evals, "classification", f"{REPORTS}/accuracy_classification.png"),
                memory_bars(trains, f"{REPORTS}/memory.png")]  # fmt: skip
    main_evals, main_trains = load_records(sorted(glob.glob("metrics/main/*.json")))
    write_json_atomic("metrics/summary.json", metrics_summary(evals, trains, main_evals, main_trains))
    write_atomic(f"{REPORTS}/README.md", "# Regenerated tables\n\n" + "\n".join(t.to_markdown() for t in tables))
    log_run(tracking_uri(cfg), cfg.tracking.experiment, "report", tags={"stage": "report"}, artifacts=written)


if __name__ == "__main__":
    main()
