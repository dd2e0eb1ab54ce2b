"""Figures, summaries and the HTML report, read from a run's store only."""

from butterfly.report.figures import (
    FIGURES,
    FigureSpec,
    Palette,
    all_figures,
    barrier_vs_sigma,
    run_figures,
    save_figure,
)
from butterfly.report.html import build_report
from butterfly.report.summary import (
    config_diff,
    finding,
    finetune_table,
    fmt_number,
    format_table,
    summary_table,
)

__all__ = [
    "FIGURES",
    "FigureSpec",
    "Palette",
    "all_figures",
    "barrier_vs_sigma",
    "build_report",
    "config_diff",
    "finding",
    "finetune_table",
    "fmt_number",
    "format_table",
    "run_figures",
    "save_figure",
    "summary_table",
]
