"""The paper's tables (2, 3, 4, memory), plots, paired statistics and the findings report,
regenerated from this run's records and per-item results."""

from qlora.report.findings import Margins, assess, findings
from qlora.report.labels import DataTypeLabel
from qlora.report.paired import PairedComparison, Verdict, compare
from qlora.report.records import (EvalKey, EvalRecord, Evaluation, Method, PeakKind, TrainRecord, attach_items, dump_records,
                                  items_filename, load_records)  # fmt: skip
from qlora.report.summary import metrics_summary
from qlora.report.tables import StatsConfig, Table, memory_table, table2, table3, table4, write_table

__all__ = [
    "DataTypeLabel", "EvalKey", "EvalRecord", "Evaluation", "Margins", "Method", "PairedComparison", "PeakKind", "StatsConfig",
    "Table", "TrainRecord", "Verdict", "assess", "attach_items", "compare", "dump_records", "findings", "items_filename",
    "load_records", "memory_table", "metrics_summary", "table2", "table3", "table4", "write_table",
]  # fmt: skip
