"""Representations and permutations: angular CKA (Figure 3) and the fixed points of the
weight-matching permutation (Figure 16, workshop Figures 4, 8)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from butterfly.report.figures.style import (
    KIND_TITLES,
    REF,
    Palette,
    figure_grid,
    finish,
    kids_of,
    legend,
    palette_for,
    set_scale,
    t_scatter,
    t_series,
)
from butterfly.report.summary import (
    perturbed_kinds,
    seed_stats,
)


def cka_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 3, a row per kind: angular CKA distance against σ (a line per t); train-loss
    barrier against CKA and ensemble accuracy against CKA (a point per child)."""
    palette = palette_for(palette, df)
    d = kids_of(df).dropna(subset=["cka"])
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = figure_grid(len(kinds), 3)
    for i, kind in enumerate(kinds):
        dk = d[d["kind"] == kind]
        left, mid, right = axes[i]
        t_series(left, dk, "sigma", "cka", palette)
        left.set_xlabel("perturbation size σ")
        left.set_ylabel(f"{kind}: angular CKA distance (rad)")
        t_scatter(mid, dk, "cka", "barrier_train_loss", palette)
        mid.set_ylabel("train-loss barrier")
        t_scatter(right, dk, "cka", "ensemble_test_acc", palette)
        right.set_ylabel("ensemble test accuracy")
        if dk["test_acc_a"].notna().any():
            right.axhline(
                dk["test_acc_a"].mean(), color="0.3", ls=":", lw=1.2, gid=REF,
                label="original alone (mean)",
            )  # fmt: skip
        for ax in (mid, right):
            ax.set_xlabel("angular CKA distance (rad)")
        left.set_title(KIND_TITLES[kind])
        set_scale(left, "x", "log")
        set_scale(left, "y", "linear0")
        set_scale(mid, "x", "linear0")
        set_scale(mid, "y", "symlog0")
        set_scale(right, "x", "linear0")
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def fixed_points_figure(
    df: pd.DataFrame, proxy: pd.DataFrame, palette: Palette | None = None
) -> Figure:
    """Paper Figure 16 / workshop Figures 4, 8: fixed points of the weight-matching permutation
    against L2 and against the barrier (a row per kind, a point per child); and the
    random-permutation proxy (mean over seeds per requested fraction of fixed points)."""
    palette = palette_for(palette, df)
    d = kids_of(df).dropna(subset=["fixed_point_fraction_wm"])
    kinds = perturbed_kinds(d) or ["batch"]
    has_proxy = proxy is not None and len(proxy) > 0
    layout = [[f"{k}:l2", f"{k}:barrier", *(["proxy"] if has_proxy else [])] for k in kinds]
    fig = plt.figure(figsize=(4.0 * len(layout[0]) + 1.9, 3.1 * len(kinds)), layout="constrained")
    ax = fig.subplot_mosaic(layout)
    for kind in kinds:
        dk = d[d["kind"] == kind]
        a_l2, a_b = ax[f"{kind}:l2"], ax[f"{kind}:barrier"]
        t_scatter(a_l2, dk, "fixed_point_fraction_wm", "l2", palette)
        t_scatter(a_b, dk, "fixed_point_fraction_wm", "barrier_train_loss", palette)
        a_l2.set_ylabel(f"{kind}: L2 distance after training")
        a_b.set_ylabel("train-loss barrier")
        a_l2.set_title(KIND_TITLES[kind])
        for a in (a_l2, a_b):
            a.set_xlabel("fixed points of weight matching")
            set_scale(a, "x", "linear0")
        set_scale(a_l2, "y", "log")
        set_scale(a_b, "y", "symlog0")
    if has_proxy:
        p = ax["proxy"]
        l2 = seed_stats(proxy, ["fixed_fraction"], "l2")["mean"]
        bar = seed_stats(proxy, ["fixed_fraction"], "barrier_train_loss")["mean"]
        g = pd.DataFrame({"l2": l2, "barrier": bar}).dropna()
        sc = p.scatter(g.index, g["l2"], c=g["barrier"], cmap="cividis", s=40, marker="s")
        fig.colorbar(sc, ax=p, label="train-loss barrier (mean over seeds)")
        p.set_xlabel("fixed points of a random permutation")
        p.set_ylabel("L2 to the unpermuted original")
        p.set_title("random-permutation proxy", fontsize=9)
        set_scale(p, "x", "linear0")
        set_scale(p, "y", "linear0")
    finish(ax.values())
    legend(fig, "perturbed at")
    return fig
