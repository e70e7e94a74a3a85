"""The paper's tables (2, 3, 4, memory) and plots, regenerated from this run's records."""

from qlora._lazy import attach

_LAZY = {
    "EvalRecord": "qlora.report.records",
    "Method": "qlora.report.records",
    "Table": "qlora.report.tables",
    "TrainRecord": "qlora.report.records",
    "dump_records": "qlora.report.records",
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
