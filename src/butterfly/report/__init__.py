"""Figures and summaries, read from a run's results only."""

from butterfly.report.figures import barrier_vs_sigma
from butterfly.report.summary import format_table, summary_table

__all__ = ["barrier_vs_sigma", "format_table", "summary_table"]
