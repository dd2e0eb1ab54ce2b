"""What the report shows: every figure is one entry here, with its file name, title, caption,
when it is drawn and how it is built, in the report's order.

Three scopes: ``run`` figures are drawn for each run folder (from :class:`RunData`), ``compare``
figures once for several runs side by side (from a mapping name -> :class:`RunData`), and
``finetune`` figures once for a fine-tuning folder (from its joined results). A new figure is
one more entry; nothing else decides whether or where it appears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from matplotlib.figure import Figure

from butterfly.experiment.rows import children, spawned
from butterfly.figure_files import save_figures
from butterfly.report.figures.barriers import (
    barrier_vs_fraction,
    barrier_vs_l2,
    barrier_vs_sigma,
    barrier_vs_sigma_one_weight,
    barrier_vs_t,
    has_smaller_fraction,
    performance_figure,
    spawn_figure,
)
from butterfly.report.figures.comparisons import (
    finetune_figure,
    performance_compared,
    runs_side_by_side,
    settings_figure,
)
from butterfly.report.figures.representations import cka_figure, fixed_points_figure
from butterfly.report.figures.stability import (
    STABILITY_EPS,
    has_stability_map,
    sigma_star_compared,
    stability_map,
)
from butterfly.report.figures.style import (
    FULL,
    LOGX,
    LOGY,
    MEAN,
    SYMLOG0,
    Palette,
    kids_of,
    palette_for,
)
from butterfly.report.figures.trajectories import (
    l2_from_init_figure,
    linearised_figure,
    training_figure,
    traj_children,
    trajectory_figure,
)


@dataclass(frozen=True)
class RunData:
    """What a run's figures read: its results, trajectories, permutation proxy, thresholds and
    the original's training curve (empty tables where the run has none)."""

    results: pd.DataFrame
    trajectories: pd.DataFrame = field(default_factory=pd.DataFrame)
    proxy: pd.DataFrame = field(default_factory=pd.DataFrame)
    thresholds: pd.DataFrame | None = None
    training: pd.DataFrame | None = None

    @property
    def kids(self) -> pd.DataFrame:
        return kids_of(self.results)


Scope = Literal["run", "compare", "finetune"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its ``file`` name, ``title`` and ``caption``, the ``scope`` it
    is drawn in, ``when`` it is drawn (given the scope's data) and ``build`` (the data and
    the report's palette -> a figure)."""

    file: str
    title: str
    caption: str
    scope: Scope = "run"
    when: Callable[[Any], bool] = field(default=lambda data: True, repr=False)
    build: Callable[[Any, Palette], Figure] | None = field(default=None, repr=False)


def _has(column: str) -> Callable[[RunData], bool]:
    return lambda r: column in r.kids and r.kids[column].notna().any()


def _trained(r: RunData) -> bool:
    return r.training is not None and len(r.training) > 0 and r.training["train_loss"].notna().any()


FIGURES: list[FigureSpec] = [
    FigureSpec(
        "training.png", "How the recipe trained",
        "The original network of the population perturbed earliest, from its t to T: train loss "
        "on the whole training set (solid), the mean minibatch loss between points (dashed) and "
        f"test loss (dotted), {LOGY}; right, test accuracy (linear from 0). Training steps on a "
        f"{LOGX}. Means over seeds.",
        when=_trained, build=lambda r, p: training_figure(r.training),
    ),
    FigureSpec(
        "stability_map.png", "The stability map",
        "The (t, σ) plane, a panel per kind: each measured (t, σ) is a square coloured by its "
        "mean train-loss barrier over seeds (log colour scale); σ*(t), the smallest σ whose "
        f"barrier reaches ε ({STABILITY_EPS} for a grid, between its grid points; the search's "
        "ε and bracket for butterfly threshold), for each seed (dashes) and their geometric mean "
        f"(line). Log σ axis, t/T on a {LOGX}. {FULL}.",
        when=lambda r: _has("barrier_train_loss")(r) and has_stability_map(r.results,
                                                                          r.thresholds),
        build=lambda r, p: stability_map(r.results, r.thresholds, p),
    ),
    FigureSpec(
        "barrier_vs_sigma.png", "Barrier against perturbation size (Figure 2)",
        "Train-loss barrier after training against σ (log x axis), a panel per perturbation "
        f"kind, a line per perturbation time t; linear y axis from 0. {MEAN}; {FULL}.",
        when=_has("barrier_train_loss"), build=lambda r, p: barrier_vs_sigma(r.results, p),
    ),
    FigureSpec(
        "barrier_vs_sigma_log.png", "The same, symmetric-log y (Figure 27)",
        f"As Figure 2, on a {SYMLOG0}: small barriers and exact zeros stay visible.",
        when=_has("barrier_train_loss"),
        build=lambda r, p: barrier_vs_sigma(r.results, p, logy=True),
    ),
    FigureSpec(
        "barrier_vs_sigma_one_weight.png", "Barrier against perturbation size, down to the "
        "fewest weights perturbed (Figure 1, right)",
        "Train-loss barrier against σ (log x axis), a panel per kind, a line per t; the leftmost "
        "point of each line (a decade left of the smallest σ, labelled with the number of "
        "weights) is the children that perturb the fewest weights: the smallest fraction of "
        "weights, at the smallest σ it was perturbed by (one weight in fig11-fraction); the other "
        f"points are the children that perturb the largest fraction. {SYMLOG0}. {MEAN}.",
        when=lambda r: _has("barrier_train_loss")(r) and has_smaller_fraction(r.results),
        build=lambda r, p: barrier_vs_sigma_one_weight(r.results, p),
    ),
    FigureSpec(
        "barrier_wm_vs_sigma.png", "After weight matching (Figure 2, middle)",
        "Train-loss barrier between the original and the child permuted by weight matching, "
        f"against σ (log x axis), a panel per kind, a line per t; linear y axis from 0. {MEAN}; "
        f"{FULL}.",
        when=_has("barrier_train_loss_wm"),
        build=lambda r, p: barrier_vs_sigma(r.results, p, "barrier_train_loss_wm"),
    ),
    FigureSpec(
        "barrier_wm_vs_sigma_log.png", "The same, symmetric-log y (Figure 27, middle)",
        f"As Figure 2 middle, on a {SYMLOG0}: small barriers and exact zeros stay visible.",
        when=_has("barrier_train_loss_wm"),
        build=lambda r, p: barrier_vs_sigma(r.results, p, "barrier_train_loss_wm", logy=True),
    ),
    FigureSpec(
        "barrier_vs_t.png", "Barrier against perturbation time (workshop Figures 1 right, 5, 9, "
        "11)",
        "Top: loss barriers (nats; workshop Figures 1 right and 5); bottom: error barriers, in "
        "percent of the examples, 100 (1 − accuracy) (workshop Figures 9 and 11); on the "
        "training data (solid) and the test data (dashed, open markers), against t/T "
        f"({LOGX}), a column per kind, a line per σ; {SYMLOG0}. {MEAN}; {FULL}.",
        when=lambda r: r.kids["t_frac"].nunique() > 1, build=lambda r, p: barrier_vs_t(r.results, p),
    ),
    FigureSpec(
        "cka.png", "Representations (Figure 3)",
        "A row per kind. Left: angular CKA distance against σ (log x axis, linear y axis from "
        f"0), a line per t; {MEAN.lower()}. Middle: train-loss barrier ({SYMLOG0}) and right: "
        "test accuracy of the logit-averaged pair (dotted: the original alone, mean) against "
        "CKA (linear x axis from 0); one point per child and seed, coloured by t. "
        f"{FULL}.",
        when=_has("cka"), build=lambda r, p: cka_figure(r.results, p),
    ),
    FigureSpec(
        "trajectories.png", "Divergence over training (Figure 6)",
        f"Train-loss barrier (top; {SYMLOG0}) and L2 distance to the original (bottom; {LOGY}) "
        f"at log-spaced training steps from t on ({LOGX}), a column per perturbed kind and one "
        "for the spawned children (σ = 0, independent batches from t), a line per t. Each line "
        "averages over all σ (and directions) within a seed, then over seeds, error bars the "
        f"s.e. over seeds; {FULL}. The original and the σ = 0 control are not shown.",
        when=lambda r: len(r.trajectories) > 0 and len(traj_children(r.trajectories,
                                                                      r.results)) > 0,
        build=lambda r, p: trajectory_figure(r.trajectories, r.results, p),
    ),
    FigureSpec(
        "linearised.png", "The linearised prediction against training (Figure 6, Appendix B.4)",
        "L2 distance to the original over training for the children perturbed at the earliest "
        "t (solid, mean over seeds), and the linearised dynamical system's prediction "
        "‖σε‖·exp(λ(s − t)) with λ the top Lyapunov exponent of the training map from t to T "
        f"(dashed), a line per σ, a panel per kind. {LOGY}; training steps on a {LOGX}.",
        when=lambda r: len(r.trajectories) > 0 and "l2_predicted" in r.trajectories
        and r.trajectories["l2_predicted"].notna().any(),
        build=lambda r, p: linearised_figure(r.trajectories, r.results, p),
    ),
    FigureSpec(
        "l2_from_init.png", "Distance from initialisation (workshop Figure 3)",
        "L2 distance from θ0 over training (linear y axis from 0; training steps on a "
        f"{LOGX}) for the original (left, mean over seeds) and, a panel per kind, its children "
        f"perturbed at the earliest t, a line per σ. {MEAN}; {FULL}.",
        when=lambda r: len(r.trajectories) > 0,
        build=lambda r, p: l2_from_init_figure(r.trajectories, r.results, p),
    ),
    FigureSpec(
        "barrier_vs_l2.png", "Barrier against L2 (Figure 7)",
        f"Train-loss barrier ({SYMLOG0}) against L2 distance after training ({LOGX}), a panel "
        f"per kind; one point per child and seed, coloured by t. {FULL}.",
        when=_has("l2"), build=lambda r, p: barrier_vs_l2(r.results, p),
    ),
    FigureSpec(
        "performance.png", "Barriers against final performance (Figure 8, this run)",
        f"Train-loss barrier ({SYMLOG0}) against the perturbed network's test accuracy at T "
        f"(left, linear) and its train cross-entropy (right, {LOGX.replace('x axis', 'axis')}), "
        f"a row per kind; one point per child and seed, coloured by t. {FULL}.",
        when=lambda r: _has("test_acc_b")(r) and _has("barrier_train_loss")(r),
        build=lambda r, p: performance_figure(r.results, p),
    ),
    FigureSpec(
        "fixed_points.png", "Permutations (Figure 16, workshop Figures 4, 8)",
        "A row per kind: fixed points of the weight-matching permutation (linear x axis from "
        f"0) against L2 ({LOGY}) and against the train-loss barrier ({SYMLOG0}), one point per "
        "child and seed, coloured by t; right: a random permutation with a given fraction of "
        "fixed points applied to the original, L2 and barrier (colour) to the unpermuted "
        "network, mean over seeds (linear axes from 0).",
        when=_has("fixed_point_fraction_wm"),
        build=lambda r, p: fixed_points_figure(r.results, r.proxy, p),
    ),
    FigureSpec(
        "barrier_vs_fraction.png", "Fraction of perturbed weights (Figure 11)",
        f"L2 norm of the perturbation (top; {LOGY}) and train-loss barrier (bottom; "
        f"{SYMLOG0}) against the fraction of weights perturbed (log x axis), a column per kind "
        f"and σ, a line per t. {MEAN}.",
        when=lambda r: children(r.results)["fraction"].nunique() > 1,
        build=lambda r, p: barrier_vs_fraction(r.results, p),
    ),
    FigureSpec(
        "spawn.png", "Single perturbations vs the spawning baseline (Figure 10)",
        "Top: train-loss barrier against t/T for single perturbations (a line per σ) and for "
        "children trained on independent batches from t (dashed, the same in every column); "
        f"{SYMLOG0}. Bottom: the perturbations' L2 norm ({LOGY}). A column per perturbed kind; "
        f"t/T on a {LOGX}. {MEAN}; {FULL}.",
        when=lambda r: len(spawned(r.results)) > 0, build=lambda r, p: spawn_figure(r.results, p),
    ),
    # ---- several runs side by side --------------------------------------------------------
    FigureSpec(
        "runs_compared.png", "Settings compared (Figures 4, 12)",
        "Train-loss barrier against σ (log x axis; linear y axis from 0, shared by every "
        "panel), a column per run, a row per kind, a line per t (the same colours in every "
        f"run). {MEAN}; {FULL}.",
        scope="compare", when=lambda runs: len(runs) > 1,
        build=lambda runs, p: runs_side_by_side({n: r.results for n, r in runs.items()}, p),
    ),
    FigureSpec(
        "runs_compared_log.png", "The same, symmetric-log y (Figure 28)",
        f"As Figures 4 and 12, on a {SYMLOG0} shared by every panel: small barriers and exact "
        "zeros stay visible.",
        scope="compare", when=lambda runs: len(runs) > 1,
        build=lambda runs, p: runs_side_by_side({n: r.results for n, r in runs.items()}, p,
                                                logy=True),
    ),
    FigureSpec(
        "performance_compared.png", "Barriers against final performance, every setting (Figure 8)",
        f"Train-loss barrier ({SYMLOG0}) against the perturbed network's test accuracy at T "
        f"(left, linear) and its train cross-entropy (right, {LOGX.replace('x axis', 'axis')}), "
        f"a row per kind, each run a colour; one point per child and seed, every t and σ. {FULL}.",
        scope="compare",
        when=lambda runs: len(runs) > 1 and any(_has("test_acc_b")(r)
                                                and _has("barrier_train_loss")(r)
                                                for r in runs.values()),
        build=lambda runs, p: performance_compared({n: r.results for n, r in runs.items()}),
    ),
    FigureSpec(
        "settings_compared.png", "Settings compared: L2, CKA and ensembles (Figures 7, 14, 15)",
        "Each run a colour, its main perturbation kind: train-loss barrier against L2 after "
        "training (left; L2 on a log axis), against angular CKA (middle), and the ensemble's "
        f"test accuracy against CKA (right); {SYMLOG0} for barriers; one point per child and "
        f"seed. {FULL}.",
        scope="compare", when=lambda runs: len(runs) > 1,
        build=lambda runs, p: settings_figure({n: r.results for n, r in runs.items()}),
    ),
    FigureSpec(
        "sigma_star_compared.png", "The edge of stability of each run (Figure 4's question)",
        "σ*(t) of every run on one axis per kind (geometric mean over seeds; log σ axis, t/T on "
        f"a {LOGX}): a higher curve is a more stable recipe. Runs without a crossing at some t "
        "leave that t out.",
        scope="compare",
        when=lambda runs: len(runs) > 1 and any(has_stability_map(r.results, r.thresholds)
                                                for r in runs.values()),
        build=lambda runs, p: sigma_star_compared({n: (r.results, r.thresholds)
                                                   for n, r in runs.items()}),
    ),
    # ---- a fine-tuning folder ---------------------------------------------------------------
    FigureSpec(
        "finetune.png", "Fine-tuning stability (Figure 5)",
        f"Train-loss barrier against σ (log x axis; {SYMLOG0}), a column per perturbation time "
        "t, a row per kind, a line per pre-training checkpoint the fine-tuning started from "
        f"(step 0: a random initialisation, or a pre-trained model as loaded). {MEAN}; {FULL}.",
        scope="finetune", when=lambda df: len(df) > 0, build=finetune_figure,
    ),
]  # fmt: skip

SPECS: dict[str, FigureSpec] = {f.file: f for f in FIGURES}


def drawing(scope: Scope, data: Any, palette: Palette) -> Iterator[tuple[FigureSpec, Figure]]:
    """Every figure of ``scope`` that ``data`` supports, in the report's order, each built when
    it is asked for."""
    for spec in FIGURES:
        if spec.scope == scope and spec.build is not None and spec.when(data):
            yield spec, spec.build(data, palette)


def run_figures(
    df: pd.DataFrame,
    traj: pd.DataFrame,
    proxy: pd.DataFrame,
    palette: Palette | None = None,
    thresholds: pd.DataFrame | None = None,
    training: pd.DataFrame | None = None,
) -> list[tuple[FigureSpec, Figure]]:
    """Every figure one run's data supports, in the report's order, as open figures."""
    return list(_run_drawing(df, traj, proxy, palette, thresholds, training))


def _run_drawing(
    df: pd.DataFrame,
    traj: pd.DataFrame,
    proxy: pd.DataFrame,
    palette: Palette | None,
    thresholds: pd.DataFrame | None,
    training: pd.DataFrame | None,
) -> Iterator[tuple[FigureSpec, Figure]]:
    data = RunData(df, traj, proxy, thresholds, training)
    return drawing("run", data, palette_for(palette, df))


def save_all(
    made: Iterable[tuple[FigureSpec, Figure]], out: Path
) -> list[tuple[FigureSpec, Path]]:
    """The figures saved under ``out`` (PNG and PDF), in order. ``made`` may be built lazily
    (:func:`drawing`): each figure is handed to a writer process as soon as it is built."""
    specs: list[FigureSpec] = []

    def pairs() -> Iterator[tuple[Figure, Path]]:
        for spec, fig in made:
            specs.append(spec)
            yield fig, Path(out) / spec.file

    paths = save_figures(pairs())
    return list(zip(specs, paths, strict=True))


def all_figures(
    df: pd.DataFrame,
    traj: pd.DataFrame,
    proxy: pd.DataFrame,
    out: Path,
    palette: Palette | None = None,
    thresholds: pd.DataFrame | None = None,
    training: pd.DataFrame | None = None,
) -> list[tuple[FigureSpec, Path]]:
    """Every figure the data supports, saved under ``out`` (PNG and PDF), in the report's order."""
    return save_all(_run_drawing(df, traj, proxy, palette, thresholds, training), out)


def compared_figures(
    runs: Mapping[str, RunData], palette: Palette, out: Path
) -> list[tuple[FigureSpec, Path]]:
    """The figures that set several runs side by side, saved under ``out``."""
    return save_all(drawing("compare", dict(runs), palette), out)


def finetune_figures(
    df: pd.DataFrame, palette: Palette, out: Path
) -> list[tuple[FigureSpec, Path]]:
    """The figures of a fine-tuning folder's joined results, saved under ``out``."""
    return save_all(drawing("finetune", df, palette), out)
