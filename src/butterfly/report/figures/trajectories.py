"""Divergence over training (Figure 6), distance from θ0 (workshop Figure 3), the linearised
prediction (Appendix B.4) and the original's training curve."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pandas as pd
from matplotlib.figure import Figure

from butterfly.experiment.rows import PERTURBED_KINDS
from butterfly.report.figures.style import (
    KIND_TITLES,
    Palette,
    figure_grid,
    finish,
    label_sigma,
    label_t,
    legend,
    palette_for,
    set_scale,
    sigma_series,
    t_series,
)
from butterfly.report.summary import (
    full_fraction,
    perturbed_kinds,
    seed_stats,
)


def traj_children(traj: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Trajectory rows of perturbed and spawned children that did not diverge, with their t/T
    and fraction from the results table; the largest perturbed fraction only."""
    info = df[["seed", "t", "member", "t_frac", "fraction", "diverged"]]
    d = traj.merge(info, on=["seed", "t", "member"], how="inner")
    d = d[d["kind"].isin([*PERTURBED_KINDS, "spawn"]) & (d["diverged"] == 0)]
    return full_fraction(d)


def trajectory_figure(
    traj: pd.DataFrame, df: pd.DataFrame, palette: Palette | None = None
) -> Figure:
    """Paper Figure 6: train-loss barrier (top) and L2 to the original (bottom) over training, a
    column per kind (spawned children in their own column), a line per t averaged over σ."""
    palette = palette_for(palette, df)
    d = traj_children(traj, df)
    kinds = perturbed_kinds(d) + (["spawn"] if (d["kind"] == "spawn").any() else [])
    kinds = kinds or ["batch"]
    metrics = ["l2_to_original"]
    if d["barrier_train_loss"].notna().any():
        metrics.insert(0, "barrier_train_loss")
    fig, axes = figure_grid(len(metrics), len(kinds), sharex="col")
    for j, kind in enumerate(kinds):
        for i, metric in enumerate(metrics):
            t_series(axes[i, j], d[d["kind"] == kind], "step", metric, palette)
        axes[0, j].set_title(KIND_TITLES[kind])
        axes[-1, j].set_xlabel("training step")
    for i, metric in enumerate(metrics):
        axes[i, 0].set_ylabel(
            "train-loss barrier" if metric == "barrier_train_loss" else "L2 to the original"
        )
        for ax in axes[i]:
            set_scale(ax, "x", "log")
            set_scale(ax, "y", "symlog0" if metric == "barrier_train_loss" else "log")
    finish(axes.flat)
    legend(fig, "perturbed at")
    return fig


def l2_from_init_figure(
    traj: pd.DataFrame, df: pd.DataFrame, palette: Palette | None = None
) -> Figure:
    """Workshop Figure 3 (middle, right): L2 from θ0 over training for the original and, a panel
    per kind, its children perturbed at the earliest t (a line per σ)."""
    palette = palette_for(palette, df)
    t0 = traj["t"].min() if len(traj) else 0
    d = traj_children(traj[traj["t"] == t0], df)
    orig = traj[(traj["t"] == t0) & (traj["kind"] == "original")]
    kinds = perturbed_kinds(d) + (["spawn"] if (d["kind"] == "spawn").any() else [])
    fig, axes = figure_grid(1, 1 + len(kinds), sharey=True, sharex=True)
    ax0 = axes[0, 0]
    st = seed_stats(orig, ["step"], "l2_from_init")
    ax0.plot(st.index.to_numpy(dtype=float), st["mean"].to_numpy(), color="k", lw=2,
             marker="o", ms=3, label="original")  # fmt: skip
    tf0 = df.loc[df["t"] == t0, "t_frac"]
    when = label_t(tf0.iloc[0]) if len(tf0) else f"t = step {t0}"
    ax0.set_title("original")
    for ax, kind in zip(axes[0, 1:], kinds, strict=True):
        dk = d[d["kind"] == kind]
        if kind == "spawn":
            st = seed_stats(dk, ["step"], "l2_from_init")
            ax.plot(st.index.to_numpy(dtype=float), st["mean"].to_numpy(), color="0.35", lw=1.5,
                    marker="s", ms=3, ls="--", label="spawned child")  # fmt: skip
        else:
            sigma_series(ax, dk, "step", "l2_from_init", palette)
        ax.set_title(f"{KIND_TITLES[kind]} at {when}", fontsize=9)
    ax0.set_ylabel("L2 from initialisation θ0")
    for ax in axes[0]:
        ax.set_xlabel("training step")
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "linear0")
    finish(axes.flat)
    legend(fig)
    return fig


def linearised_figure(traj: pd.DataFrame, df: pd.DataFrame, palette: Palette | None = None
                      ) -> Figure:  # fmt: skip
    """Measured L2 to the original (solid) against the linearised prediction ‖σε‖e^{λ(s−t)}
    (dashed, Appendix B.4) over training, for the children perturbed earliest, a panel per
    kind, a line per σ (mean over seeds)."""
    palette = palette_for(palette, df)
    t0 = traj["t"].min() if len(traj) else 0
    d = traj_children(traj[(traj["t"] == t0)], df)
    d = d[d["l2_predicted"].notna()] if "l2_predicted" in d else d.iloc[0:0]
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = figure_grid(1, len(kinds), sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        dk = d[d["kind"] == kind]
        for sigma in sorted(dk["sigma"].unique()):
            ds = dk[dk["sigma"] == sigma]
            for col, style, what in (("l2_to_original", "-", "measured"),
                                     ("l2_predicted", "--", "linearised")):  # fmt: skip
                st = seed_stats(ds, ["step"], col)
                ax.plot(st.index.to_numpy(dtype=float), st["mean"].to_numpy(), ls=style, lw=1.5,
                        color=palette.sigma(sigma), marker=palette.sigma_marker(sigma), ms=3,
                        label=f"{label_sigma(sigma)}, {what}")  # fmt: skip
        ax.set_title(f"{KIND_TITLES.get(kind, kind)} at step {t0}", fontsize=10)
        ax.set_xlabel("training step")
        set_scale(ax, "x", "log")
        set_scale(ax, "y", "log")
    axes[0, 0].set_ylabel("L2 distance to the original")
    finish(axes.flat)
    legend(fig)
    return fig


def training_figure(train: pd.DataFrame) -> Figure:
    """The original's training curve in the population perturbed earliest (so from its t to
    T): train loss (full training set, and the mean minibatch loss between records) and test
    accuracy, mean over seeds. It shows whether the recipe trained well before any barrier is
    read."""
    t0 = train["t"].min() if len(train) else 0
    d = train[train["t"] == t0]
    has_acc = d["test_acc"].notna().any()
    fig, axes = figure_grid(1, 2 if has_acc else 1, sharex=True)
    ax = axes[0, 0]
    for col, style, label in (("train_loss", "-", "training set"),
                              ("batch_loss", "--", "minibatches (mean since the last point)"),
                              ("test_loss", ":", "test set")):  # fmt: skip
        st = seed_stats(d.dropna(subset=[col]), ["step"], col)
        if len(st):
            ax.plot(st.index.to_numpy(dtype=float), st["mean"].to_numpy(), ls=style, lw=1.5,
                    marker="o", ms=3, color="k", label=label)  # fmt: skip
    ax.set_ylabel("cross-entropy (or your loss)")
    ax.set_title("loss of the original")
    set_scale(ax, "y", "log")
    if has_acc:
        ax2 = axes[0, 1]
        st = seed_stats(d.dropna(subset=["test_acc"]), ["step"], "test_acc")
        ax2.plot(st.index.to_numpy(dtype=float), st["mean"].to_numpy(), color="k", lw=1.5,
                 marker="s", ms=3, label="test accuracy")  # fmt: skip
        ax2.set_ylabel("test accuracy")
        ax2.set_title("accuracy of the original")
        set_scale(ax2, "y", "linear0")
    for a in axes[0]:
        a.set_xlabel("training step")
        set_scale(a, "x", "log")
    finish(axes.flat)
    legend(fig)
    return fig
