"""The edge of stability: σ*(t) from a threshold search or a grid (by the search's own rule),
the stability map, and σ*(t) of several runs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from butterfly.experiment.threshold import DEFAULT_EPS, grid_sigma_star
from butterfly.report.figures.style import (
    KIND_TITLES,
    MARKERS,
    Palette,
    figure_grid,
    finish,
    key,
    kids_of,
    legend,
    ramp,
    set_scale,
)
from butterfly.report.summary import (
    perturbed_kinds,
)

STABILITY_EPS = DEFAULT_EPS


def sigma_star(df: pd.DataFrame, thresholds: pd.DataFrame | None, eps: float = STABILITY_EPS
               ) -> pd.DataFrame:  # fmt: skip
    """σ*(t) per (seed, kind, t_frac): from a threshold search's table when there is one,
    else from the grid (the geometric mean of the first measured σ whose seed-mean barrier
    reaches ε and the σ below it). Columns seed, kind, t_frac, sigma_star (NaN: open)."""
    kids = kids_of(df)
    T = None
    if len(kids):
        T = float((kids["t"] / kids["t_frac"]).replace([np.inf], np.nan).dropna().median()) \
            if (kids["t_frac"] > 0).any() else None  # fmt: skip
    if thresholds is not None and len(thresholds) and (thresholds["over"] == "sigma").all():
        th = thresholds.copy()
        steps = th["at"].astype(float)
        th["t_frac"] = steps / T if T else 0.0
        th.loc[steps == 0, "t_frac"] = 0.0
        known = {key(v): v for v in kids["t_frac"].unique()}
        th["t_frac"] = [known.get(key(v), v) for v in th["t_frac"]]
        return th.rename(columns={"estimate": "sigma_star"})[
            ["seed", "kind", "t_frac", "sigma_star"]
        ]
    out = []
    for (seed, kind, tf), g in kids.groupby(["seed", "kind", "t_frac"]):
        b = g.groupby("sigma")["barrier_train_loss"].mean().sort_index()
        star = grid_sigma_star(b.items(), eps)
        out.append({"seed": seed, "kind": kind, "t_frac": tf,
                    "sigma_star": np.nan if star is None else star})  # fmt: skip
    return pd.DataFrame(out, columns=["seed", "kind", "t_frac", "sigma_star"])


def has_stability_map(df: pd.DataFrame, thresholds: pd.DataFrame | None = None) -> bool:
    """A threshold search, or a grid with at least 3 times and 3 sizes."""
    if thresholds is not None and len(thresholds) and (thresholds["over"] == "sigma").all():
        return True
    kids = kids_of(df)
    return kids["t_frac"].nunique() >= 3 and kids["sigma"].nunique() >= 3


def stability_map(
    df: pd.DataFrame, thresholds: pd.DataFrame | None = None, palette: Palette | None = None
) -> Figure:
    """The (t, σ) plane, a panel per kind: every measured (t, σ) a square coloured by its mean
    train-loss barrier over seeds (log colour scale), σ*(t) drawn over it (each seed's as a
    small mark, their mean as a line)."""
    from matplotlib.colors import LogNorm

    kids = kids_of(df).dropna(subset=["barrier_train_loss"])
    kinds = perturbed_kinds(kids) or ["batch"]
    fig, axes = figure_grid(1, len(kinds), sharey=True)
    cells = kids.groupby(["kind", "t_frac", "sigma"])["barrier_train_loss"].mean()
    positive = cells[cells > 0]
    lo = max(float(positive.min()) if len(positive) else 1e-8, 1e-9)
    hi = max(float(cells.max()) if len(cells) else 1.0, lo * 10)
    norm = LogNorm(vmin=lo, vmax=hi)
    star = sigma_star(df, thresholds)
    mesh = None
    for ax, kind in zip(axes[0], kinds, strict=True):
        c = cells.xs(kind, level="kind") if kind in cells.index.get_level_values(0) else None
        if c is not None and len(c):
            tf = c.index.get_level_values("t_frac").to_numpy(dtype=float)
            sg = c.index.get_level_values("sigma").to_numpy(dtype=float)
            mesh = ax.scatter(tf, sg, c=np.clip(c.to_numpy(), lo, None), norm=norm,
                              cmap="magma_r", marker="s", s=140, linewidths=0,
                              clip_on=False)  # fmt: skip
        st = star[(star["kind"] == kind)]
        if len(st):
            ax.scatter(st["t_frac"], st["sigma_star"], marker="_", s=90, color="0.25",
                       linewidths=1.2, label="σ*(t), one seed", clip_on=False)  # fmt: skip
            mean = st.groupby("t_frac")["sigma_star"].apply(
                lambda v: float(np.exp(np.log(v.dropna()).mean())) if v.notna().any() else np.nan
            )
            ax.plot(mean.index.to_numpy(dtype=float), mean.to_numpy(), color="tab:cyan", lw=2,
                    marker="o", ms=4, label="σ*(t), geometric mean over seeds")  # fmt: skip
        ax.set_title(f"{KIND_TITLES.get(kind, kind)}", fontsize=10)
        ax.set_xlabel("perturbation time t / T")
        ax.set_yscale("log")
        set_scale(ax, "x", "log")
    axes[0, 0].set_ylabel("perturbation size σ")
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[0]), label="mean train-loss barrier (log)", shrink=0.9)
    finish(axes.flat)
    legend(fig)
    return fig


def sigma_star_compared(
    runs: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]
) -> Figure:
    """σ*(t) of several runs on one axis per kind (the paper's Figure 4 question: which
    recipe is more stable, and from when on)."""
    kinds = sorted({k for df, _ in runs.values() for k in perturbed_kinds(kids_of(df))}) or ["batch"]
    fig, axes = figure_grid(1, len(kinds), sharey=True)
    names = list(runs)
    stars = {name: sigma_star(df, th) for name, (df, th) in runs.items()}
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, name in enumerate(names):
            st = stars[name]
            st = st[st["kind"] == kind].dropna(subset=["sigma_star"])
            if st.empty:
                continue
            mean = st.groupby("t_frac")["sigma_star"].apply(lambda v: float(np.exp(np.log(v).mean())))
            ax.plot(mean.index.to_numpy(dtype=float), mean.to_numpy(), lw=1.8,
                    marker=MARKERS[i % len(MARKERS)], ms=5, label=name,
                    color=ramp("tab10", 0.0, 0.9, i, max(len(names), 2)))  # fmt: skip
        ax.set_title(f"{KIND_TITLES.get(kind, kind)}", fontsize=10)
        ax.set_xlabel("perturbation time t / T")
        ax.set_yscale("log")
        set_scale(ax, "x", "log")
    axes[0, 0].set_ylabel(f"σ*(t): barrier reaches {STABILITY_EPS}")
    finish(axes.flat)
    legend(fig)
    return fig
