"""Figures across runs or pre-training checkpoints: settings side by side (Figures 4, 7, 8, 12,
14, 15, 28) and fine-tuning stability (Figure 5)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pandas as pd
from matplotlib.figure import Figure

from butterfly.experiment.rows import PERTURBED_KINDS
from butterfly.report.figures.style import (
    KIND_TITLES,
    Palette,
    empty,
    figure_grid,
    finish,
    kids_of,
    label_t,
    legend,
    palette_for,
    performance_axes,
    run_colour,
    run_marker,
    series,
    set_scale,
    t_series,
)
from butterfly.report.summary import (
    main_kind,
    perturbed_kinds,
    pretrain_labels,
)


def settings_figure(frames: dict[str, pd.DataFrame]) -> Figure:
    """Across runs (settings), each a colour: barrier against L2 (Figure 7, 25-26), barrier
    against angular CKA (Figure 14, right) and ensemble accuracy against CKA (Figure 15, right),
    for the main perturbation kind, one point per child and seed."""
    fig, axes = figure_grid(1, 3)
    names = list(frames)
    for i, name in enumerate(names):
        d = kids_of(frames[name])
        kind = main_kind(d)
        if kind is None:
            continue
        dk = d[d["kind"] == kind]
        style = {"color": run_colour(i, len(names)), "marker": run_marker(i), "s": 16,
                 "clip_on": False}  # fmt: skip
        axes[0, 0].scatter(dk["l2"], dk["barrier_train_loss"], label=f"{name} ({kind})", **style)
        if dk["cka"].notna().any():
            axes[0, 1].scatter(dk["cka"], dk["barrier_train_loss"], **style)
        if dk["ensemble_test_acc"].notna().any():
            axes[0, 2].scatter(dk["cka"], dk["ensemble_test_acc"], **style)
    axes[0, 0].set_xlabel("L2 distance after training")
    axes[0, 0].set_ylabel("train-loss barrier")
    axes[0, 1].set_xlabel("angular CKA distance (rad)")
    axes[0, 1].set_ylabel("train-loss barrier")
    axes[0, 2].set_xlabel("angular CKA distance (rad)")
    axes[0, 2].set_ylabel("ensemble test accuracy")
    set_scale(axes[0, 0], "x", "log")
    for ax in axes[0, :2]:
        set_scale(ax, "y", "symlog0")
    for ax in axes[0, 1:]:
        set_scale(ax, "x", "linear0")
    finish(axes.flat)
    legend(fig, "setting")
    return fig


def runs_side_by_side(
    frames: dict[str, pd.DataFrame], palette: Palette | None = None, logy: bool = False
) -> Figure:
    """Paper Figures 4 and 12 (28 with ``logy``: a symmetric-log y axis from 0): train-loss
    barrier against σ, a column per run, a row per kind, a line per t (one y axis shared by
    every panel; linear from 0 unless ``logy``)."""
    palette = palette_for(palette, *frames.values())
    kids = {name: kids_of(df) for name, df in frames.items()}
    kinds = [k for k in PERTURBED_KINDS if any((d["kind"] == k).any() for d in kids.values())]
    kinds = kinds or ["batch"]
    fig, axes = figure_grid(len(kinds), len(frames), sharey=True, sharex=True)
    for j, (name, d) in enumerate(kids.items()):
        for i, kind in enumerate(kinds):
            ax = axes[i, j]
            dk = d[d["kind"] == kind]
            if dk.empty:
                empty(ax, f"no {kind} children")
            t_series(ax, dk, "sigma", "barrier_train_loss", palette)
            ax.set_title(f"{name}: {KIND_TITLES[kind]}", fontsize=9)
            axes[-1, j].set_xlabel("perturbation size σ")
        for i in range(len(kinds)):
            axes[i, 0].set_ylabel("train-loss barrier")
    for ax in axes.flat:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0" if logy else "linear0")
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def performance_compared(frames: dict[str, pd.DataFrame]) -> Figure:
    """Paper Figure 8 as drawn there, pooled over the runs (the Table 1 settings): train-loss
    barrier against the perturbed network's test accuracy at T (left) and its train
    cross-entropy at T (right), a row per kind, each run a colour; one point per child and
    seed (the children that perturb the largest fraction of weights)."""
    names = list(frames)
    kids = {name: kids_of(df) for name, df in frames.items()}
    kinds = [k for k in PERTURBED_KINDS if any((d["kind"] == k).any() for d in kids.values())]
    kinds = kinds or ["batch"]
    fig, axes = figure_grid(len(kinds), 2, sharey="row")
    for i, kind in enumerate(kinds):
        for r, name in enumerate(names):
            d = kids[name]
            dk = d[d["kind"] == kind]
            style = {"color": run_colour(r, len(names)), "marker": run_marker(r), "s": 16,
                     "clip_on": False, "label": name}  # fmt: skip
            for j, x in enumerate(("test_acc_b", "train_loss_b")):
                pts = dk.dropna(subset=[x, "barrier_train_loss"])
                if len(pts):
                    axes[i, j].scatter(pts[x], pts["barrier_train_loss"], **style)
        performance_axes(axes, i, kind)
    finish(axes.flat)
    legend(fig, "setting")
    return fig


def finetune_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 5: train-loss barrier against σ, a column per perturbation time, a row per
    kind, a line per pre-training duration (``pretrain_steps`` column)."""
    palette = palette_for(palette, df)
    d = kids_of(df)
    kinds = perturbed_kinds(d) or ["batch"]
    ts = sorted(d["t_frac"].unique()) or [0.0]
    fig, axes = figure_grid(len(kinds), len(ts), sharey=True, sharex=True)
    for i, kind in enumerate(kinds):
        for j, tf in enumerate(ts):
            ax = axes[i, j]
            dk = d[(d["kind"] == kind) & (d["t_frac"] == tf)]
            series(ax, dk, "sigma", "barrier_train_loss", "pretrain_steps",
                    palette.pretrain_colour, pretrain_labels(df), palette.pretrain_marker)  # fmt: skip
            ax.set_title(f"{KIND_TITLES[kind]} at {label_t(tf)}", fontsize=9)
            axes[-1, j].set_xlabel("perturbation size σ")
        axes[i, 0].set_ylabel("train-loss barrier")
    for ax in axes.flat:
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "symlog0")
    finish(axes.flat)
    legend(fig, "fine-tuned from")
    return fig
