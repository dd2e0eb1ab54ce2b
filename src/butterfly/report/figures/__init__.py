"""The paper's figures from a run's store (they read the store's tables, nothing else).

Every builder returns a matplotlib :class:`~matplotlib.figure.Figure` (``save_figure`` writes it
as PNG and PDF), so that tests can read what each axis plots.

* :mod:`~butterfly.report.figures.style`: palette, axis rules, legends, caption phrases;
* one module per topic: :mod:`~butterfly.report.figures.barriers`,
  :mod:`~butterfly.report.figures.representations`,
  :mod:`~butterfly.report.figures.trajectories`, :mod:`~butterfly.report.figures.stability`,
  :mod:`~butterfly.report.figures.comparisons`;
* :mod:`~butterfly.report.figures.registry`: every figure as one entry (file name, title,
  caption, when it is drawn, builder), in the report's order.
"""

from butterfly.report.figures.barriers import (
    barrier_vs_fraction,
    barrier_vs_l2,
    barrier_vs_sigma,
    barrier_vs_sigma_one_weight,
    barrier_vs_t,
    performance_figure,
    spawn_figure,
)
from butterfly.report.figures.comparisons import (
    finetune_figure,
    performance_compared,
    runs_side_by_side,
    settings_figure,
)
from butterfly.report.figures.registry import (
    FIGURES,
    SPECS,
    FigureSpec,
    RunData,
    all_figures,
    compared_figures,
    finetune_figures,
    run_figures,
)
from butterfly.report.figures.representations import cka_figure, fixed_points_figure
from butterfly.report.figures.stability import (
    STABILITY_EPS,
    has_stability_map,
    sigma_star,
    sigma_star_compared,
    stability_map,
)
from butterfly.report.figures.style import (
    KIND_TITLES,
    REF,
    Palette,
    label_sigma,
    label_t,
    save_figure,
)
from butterfly.report.figures.trajectories import (
    l2_from_init_figure,
    linearised_figure,
    training_figure,
    trajectory_figure,
)

__all__ = [
    "FIGURES",
    "KIND_TITLES",
    "REF",
    "SPECS",
    "STABILITY_EPS",
    "FigureSpec",
    "Palette",
    "RunData",
    "all_figures",
    "barrier_vs_fraction",
    "barrier_vs_l2",
    "barrier_vs_sigma",
    "barrier_vs_sigma_one_weight",
    "barrier_vs_t",
    "cka_figure",
    "compared_figures",
    "finetune_figure",
    "finetune_figures",
    "fixed_points_figure",
    "has_stability_map",
    "l2_from_init_figure",
    "label_sigma",
    "label_t",
    "linearised_figure",
    "performance_compared",
    "performance_figure",
    "run_figures",
    "runs_side_by_side",
    "save_figure",
    "settings_figure",
    "sigma_star",
    "sigma_star_compared",
    "spawn_figure",
    "stability_map",
    "training_figure",
    "trajectory_figure",
]
