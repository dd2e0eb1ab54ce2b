"""Barriers (Eq. 4) against σ, t, L2, the fraction perturbed and final performance (Figures 2,
7, 8, 10, 11, 27; workshop Figures 1, 5, 9)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from butterfly.experiment.rows import children, spawned
from butterfly.report.figures.style import (
    BARRIER_LABELS,
    KIND_TITLES,
    Palette,
    empty,
    figure_grid,
    finish,
    kids_of,
    label_sigma,
    legend,
    palette_for,
    set_scale,
    sigma_series,
    t_scatter,
    t_series,
)
from butterfly.report.summary import (
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


def barrier_vs_t(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Workshop Figures 1, 5, 9: train-loss (top) and test-error (bottom) barrier against t, a
    column per kind, a line per σ."""
    palette = palette_for(palette, df)
    d = kids_of(df).copy()
    d["barrier_test_error_pct"] = 100.0 * d["barrier_test_error"]  # the workshop's percent
    kinds = perturbed_kinds(d) or ["batch"]
    metrics = ["barrier_train_loss", "barrier_test_error_pct"]
    fig, axes = figure_grid(2, len(kinds), sharex=True, sharey="row")
    for j, kind in enumerate(kinds):
        for i, metric in enumerate(metrics):
            sigma_series(axes[i, j], d[d["kind"] == kind], "t_frac", metric, palette)
        axes[0, j].set_title(KIND_TITLES[kind])
        axes[1, j].set_xlabel("perturbation time t / T")
    axes[0, 0].set_ylabel("train-loss barrier (nats)")
    axes[1, 0].set_ylabel("test-error barrier (% of test examples)")
    for ax in axes.flat:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0")
    finish(axes.flat)
    legend(fig, "perturbation size")
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
        axes[i, 0].set_ylabel(f"{KIND_TITLES[kind]}:\ntrain-loss barrier")
        for ax in axes[i]:
            set_scale(ax, "y", "symlog0")
        set_scale(axes[i, 0], "x", "linear")
        set_scale(axes[i, 1], "x", "log")
    axes[-1, 0].set_xlabel("test accuracy of the perturbed network")
    axes[-1, 1].set_xlabel("train cross-entropy of the perturbed network")
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
