"""Figures, summaries and the HTML report, read from a run's store only."""

from butterfly.report.figures import all_figures, barrier_vs_sigma
from butterfly.report.html import build_report
from butterfly.report.summary import format_table, summary_table

__all__ = ["all_figures", "barrier_vs_sigma", "build_report", "format_table", "summary_table"]
