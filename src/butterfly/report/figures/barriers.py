"""Barriers (Eq. 4) against σ, t, L2, the fraction perturbed and final performance (Figures 1
right, 2, 7, 8, 10, 11, 27; workshop Figures 1, 5, 9, 11)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from butterfly.experiment.rows import children, spawned
from butterfly.report.figures.style import (
    BARRIER_LABELS,
    KIND_TITLES,
    Palette,
    empty,
    figure_grid,
    finish,
    hidden,
    kids_of,
    label_sigma,
    legend,
    line_key,
    palette_for,
    performance_axes,
    series,
    set_scale,
    sigma_series,
    t_scatter,
    t_series,
)
from butterfly.report.summary import (
    fmt_number,
    perturbed_kinds,
    seed_stats,
)


def barrier_vs_sigma(
    df: pd.DataFrame,
    palette: Palette | None = None,
    metric: str = "barrier_train_loss",
    logy: bool = False,
) -> Figure:
    """Paper Figure 2 (27 with symmetric-log y): barrier against σ, a panel per kind, a line
    per t."""
    palette = palette_for(palette, df)
    d = kids_of(df)
    kinds = perturbed_kinds(d.dropna(subset=[metric])) or perturbed_kinds(d) or ["batch"]
    fig, axes = figure_grid(1, len(kinds), sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        t_series(ax, d[d["kind"] == kind], "sigma", metric, palette)
        ax.set_title(KIND_TITLES[kind])
        ax.set_xlabel("perturbation size σ")
    axes[0, 0].set_ylabel(BARRIER_LABELS.get(metric, metric))
    for ax in axes[0]:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0" if logy else "linear0")
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


# what the workshop's barrier-vs-t figures draw: per row, (solid, dashed) columns and the scale
WORKSHOP_ROWS = (
    ("loss barrier (nats)", "barrier_train_loss", "barrier_test_loss", 1.0),
    ("error barrier (% of examples)", "barrier_train_error", "barrier_test_error", 100.0),
)


def on_test_data(label: str) -> str:
    """The (legend-hidden) label of the dashed test-data series drawn beside ``label``."""
    return hidden(f"{label}, test data")


def barrier_vs_t(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Workshop Figures 1 and 5 (top: loss barriers) and 9 and 11 (bottom: error barriers in
    percent, ``100 (1 - accuracy)``) against t: on the training data (solid) and on the test data
    (dashed), a column per kind (1, 9: batch; 5, 11: Gaussian), a line per σ."""
    palette = palette_for(palette, df)
    d = kids_of(df).copy()
    for _, train, test, scale in WORKSHOP_ROWS:
        for col in (train, test):
            # the workshop's percent for errors; a store without the column plots nothing
            d[f"{col}_shown"] = scale * d[col] if col in d else float("nan")
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = figure_grid(2, len(kinds), sharex=True, sharey="row")
    for j, kind in enumerate(kinds):
        dk = d[d["kind"] == kind]
        for i, (_, train, test, _) in enumerate(WORKSHOP_ROWS):
            sigma_series(axes[i, j], dk, "t_frac", f"{train}_shown", palette)
            series(axes[i, j], dk, "t_frac", f"{test}_shown", "sigma", palette.sigma,
                   lambda s: on_test_data(label_sigma(s)), palette.sigma_marker, ls="--",
                   mfc="white")  # fmt: skip
        axes[0, j].set_title(KIND_TITLES[kind])
        axes[1, j].set_xlabel("perturbation time t / T")
    for i, (ylabel, *_) in enumerate(WORKSHOP_ROWS):
        axes[i, 0].set_ylabel(ylabel)
    for ax in axes.flat:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0")
    finish(axes.flat)
    legend(fig, "perturbation size",
           [line_key("-", "training data"), line_key("--", "test data")])  # fmt: skip
    return fig


def has_smaller_fraction(df: pd.DataFrame) -> bool:
    """Whether some perturbed children perturb fewer weights than the largest fraction
    (Figure 1, right: a ``fig11-fraction`` run)."""
    f = children(df)["fraction"]
    return f.nunique() > 1 and bool((f < 1).any())


def fewest_weights(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The children of ``kind`` that perturb the fewest weights: the smallest fraction, at the
    smallest σ it was perturbed by (one weight in ``fig11-fraction``: ``n_perturbed == 1``)."""
    d = children(df)
    d = d[d["kind"] == kind]
    if d.empty:
        return d
    d = d[d["fraction"] == d["fraction"].min()]
    return d[d["sigma"] == d["sigma"].min()]


def weights_label(d: pd.DataFrame) -> str:
    """``1 weight`` / ``N weights`` (the range if it varies) perturbed by the rows of ``d``."""
    n = d["n_perturbed"].dropna().astype(int)
    if n.empty:
        return f"fraction {fmt_number(float(d['fraction'].iloc[0]))}"
    lo, hi = int(n.min()), int(n.max())
    if lo == hi:
        return "1 weight" if lo == 1 else f"{lo} weights"
    return f"{lo}-{hi} weights"


def left_of(sigmas: pd.Series) -> float:
    """Where the fewest-weights points go on the σ axis: a decade below the smallest σ's."""
    s = sigmas[sigmas > 0]
    return 10.0 ** (math.floor(math.log10(float(s.min())) + 1e-9) - 1) if len(s) else 1e-6


def barrier_vs_sigma_one_weight(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """ICML Figure 1 (right): train-loss barrier against σ, a line per t, a panel per kind, for
    the children that perturb the largest fraction of weights; the children that perturb the
    fewest weights (the smallest fraction, at its smallest σ; one weight in ``fig11-fraction``)
    are the leftmost point of each line, a decade left of the smallest σ (``left_of``) and
    labelled by the number of weights they perturb."""
    palette = palette_for(palette, df)
    full = kids_of(df)
    kinds = perturbed_kinds(full) or ["batch"]
    few = {k: fewest_weights(df, k) for k in kinds}
    x0 = left_of(pd.concat([full["sigma"], *(f["sigma"] for f in few.values())]))
    fig, axes = figure_grid(1, len(kinds), sharey=True, sharex=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        d = pd.concat([full[full["kind"] == kind].assign(x=full["sigma"]),
                       few[kind].assign(x=x0)])  # fmt: skip
        t_series(ax, d, "x", "barrier_train_loss", palette)
        ax.set_title(KIND_TITLES[kind])
        ax.set_xlabel("perturbation size σ")
    axes[0, 0].set_ylabel("train-loss barrier")
    for ax, kind in zip(axes[0], kinds, strict=True):
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0")
        top = math.ceil(math.log10(max(float(full["sigma"].max()), x0 * 10)))
        decades = [10.0**k for k in range(round(math.log10(x0)) + 1, top + 1)]
        f = few[kind]
        left = f"{weights_label(f)},\nσ = {fmt_number(float(f['sigma'].iloc[0]))}" if len(
            f) else "fewest weights"  # fmt: skip
        ax.set_xticks([x0, *decades], [left, *(fmt_number(v) for v in decades)], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def barrier_vs_l2(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 7 / workshop Figures 3, 7 (left): train-loss barrier against L2 after
    training, a panel per kind, a point per child coloured by t."""
    palette = palette_for(palette, df)
    d = kids_of(df)
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = figure_grid(1, len(kinds), sharey=True, sharex=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        t_scatter(ax, d[d["kind"] == kind], "l2", "barrier_train_loss", palette)
        ax.set_title(KIND_TITLES[kind])
        ax.set_xlabel("L2 distance after training")
    axes[0, 0].set_ylabel("train-loss barrier")
    for ax in axes[0]:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0")
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def performance_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 8: train-loss barrier against the perturbed network's final test accuracy
    (left) and train cross-entropy (right), a row per kind, one point per child and seed."""
    palette = palette_for(palette, df)
    d = kids_of(df)
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = figure_grid(len(kinds), 2, sharey="row")
    for i, kind in enumerate(kinds):
        dk = d[d["kind"] == kind]
        t_scatter(axes[i, 0], dk, "test_acc_b", "barrier_train_loss", palette)
        t_scatter(axes[i, 1], dk, "train_loss_b", "barrier_train_loss", palette)
        performance_axes(axes, i, kind)
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def barrier_vs_fraction(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 11: norm of the perturbation (top) and train-loss barrier (bottom) against
    the fraction of weights perturbed, a column per (kind, σ), a line per t."""
    palette = palette_for(palette, df)
    d = children(df)
    cols = [(k, s) for k in perturbed_kinds(d) for s in sorted(d[d["kind"] == k]["sigma"].unique())]
    cols = cols or [("batch", float("nan"))]
    fig, axes = figure_grid(2, len(cols), sharex=True, sharey="row")
    for j, (kind, s) in enumerate(cols):
        dk = d[(d["kind"] == kind) & (d["sigma"] == s)]
        t_series(axes[0, j], dk, "fraction", "noise_l2", palette)
        t_series(axes[1, j], dk, "fraction", "barrier_train_loss", palette)
        axes[0, j].set_title(f"{KIND_TITLES[kind]}, {label_sigma(s)}", fontsize=9)
        axes[1, j].set_xlabel("fraction of weights perturbed")
    axes[0, 0].set_ylabel("L2 norm of the perturbation")
    axes[1, 0].set_ylabel("train-loss barrier")
    for ax in axes[0]:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "log")
    for ax in axes[1]:
        set_scale(ax, "y", "symlog0")
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def spawn_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 10: train-loss barrier against t (top) for single perturbations (a line per
    σ) and the spawning baseline (dashed, the same in every column); the perturbations' L2 norm
    against t (bottom). A column per perturbed kind."""
    palette = palette_for(palette, df)
    d, s = kids_of(df), spawned(df)
    kinds: list[str | None] = [*perturbed_kinds(d)] or [None]
    fig, axes = figure_grid(2, len(kinds), sharex=True, sharey="row")
    sp = seed_stats(s, ["t_frac"], "barrier_train_loss")
    for j, kind in enumerate(kinds):
        top, bottom = axes[0, j], axes[1, j]
        if kind is not None:
            dk = d[d["kind"] == kind]
            sigma_series(top, dk, "t_frac", "barrier_train_loss", palette)
            sigma_series(bottom, dk, "t_frac", "noise_l2", palette)
        else:
            empty(bottom, "no perturbed children")
        if len(sp):
            mean = sp["mean"].to_numpy(dtype=float)
            err = np.where(sp["n"] > 1, sp["sem"].fillna(0.0), 0.0)
            top.errorbar(
                sp.index.to_numpy(dtype=float), mean, yerr=[np.minimum(err, mean), err],
                color="black", marker="s", lw=2, ls="--", capsize=2,
                label="spawned (Frankle et al.)",
            )  # fmt: skip
        top.set_title(KIND_TITLES[kind] + " vs spawning" if kind else "spawning", fontsize=9)
        bottom.set_xlabel("perturbation time t / T")
    axes[0, 0].set_ylabel("train-loss barrier")
    axes[1, 0].set_ylabel("L2 norm of the perturbation")
    for ax in axes.flat:
        set_scale(ax, "x", "log")
    for ax in axes[0]:
        set_scale(ax, "y", "symlog0")
    for ax in axes[1]:
        set_scale(ax, "y", "log")
    finish(axes.flat)
    legend(fig)
    return fig
