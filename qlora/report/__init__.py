"""The paper's tables (2, 3, 4, memory), plots, paired statistics and the findings report,
regenerated from this run's records and per-item results."""

from qlora._lazy import attach

_LAZY = {
    "DataTypeLabel": "qlora.report.labels",
    "EvalKey": "qlora.report.records",
    "EvalRecord": "qlora.report.records",
    "Evaluation": "qlora.report.records",
    "Margins": "qlora.report.findings",
    "Method": "qlora.report.records",
    "PairedComparison": "qlora.report.paired",
    "PeakKind": "qlora.report.records",
    "StatsConfig": "qlora.report.tables",
    "Table": "qlora.report.tables",
    "TrainRecord": "qlora.report.records",
    "Verdict": "qlora.report.paired",
    "assess": "qlora.report.findings",
    "attach_items": "qlora.report.records",
    "compare": "qlora.report.paired",
    "dump_records": "qlora.report.records",
    "items_filename": "qlora.report.records",
    "load_records": "qlora.report.records",
    "memory_table": "qlora.report.tables",
    "metrics_summary": "qlora.report.summary",
    "table2": "qlora.report.tables",
    "table3": "qlora.report.tables",
    "table4": "qlora.report.tables",
    "write_table": "qlora.report.tables",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = attach(__name__, _LAZY)
