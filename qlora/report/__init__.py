"""The paper's tables (2, 3, 4, memory) and plots, regenerated from this run's records."""

from qlora.report.records import EvalRecord, Method, TrainRecord, dump_records, load_records
from qlora.report.summary import metrics_summary
from qlora.report.tables import Table, memory_table, table2, table3, table4, write_table

__all__ = [
    "EvalRecord", "Method", "Table", "TrainRecord", "dump_records", "load_records",
    "memory_table", "metrics_summary", "table2", "table3", "table4", "write_table",
]  # fmt: skip
