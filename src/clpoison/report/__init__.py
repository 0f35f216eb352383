"""The report stage: tables (:mod:`~clpoison.report.tables`) and plots (:mod:`~clpoison.report.plots`) of runs and
benchmarks. It reads results; it never trains."""

from .tables import format_table, history_curve, markdown_table

__all__ = ["format_table", "history_curve", "markdown_table"]
