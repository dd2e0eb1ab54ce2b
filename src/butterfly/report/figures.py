"""The paper's figures from a run's store (they read the store's tables, nothing else).

Every figure is saved as PNG and PDF. Colours come from ``viridis`` (ordered, colour-blind safe,
readable in grayscale) and every series also gets its own marker; points are means over seeds
with the standard error over seeds as error bars.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from butterfly.experiment.rows import children, spawned

MARKERS = "osD^v<>ph*"
SYMLOG = 1e-4  # linear range of symmetric-log axes: barriers are often exactly 0


def _colors(n: int) -> list:
    cmap = plt.get_cmap("viridis")
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


def _series(
    ax: Axes, d: pd.DataFrame, x: str, y: str, group: str, label: Callable[[float], str]
) -> None:
    """One line per value of ``group``: mean of y over seeds against x, s.e. as error bars."""
    values = sorted(d[group].unique())
    for j, (v, color) in enumerate(zip(values, _colors(len(values)), strict=True)):
        g = d[d[group] == v].groupby(x)[y]
        mean, sem, count = g.mean(), g.sem(), g.count()
        if mean.dropna().empty:
            continue
        err = np.where(count > 1, sem.fillna(0.0), 0.0)
        ax.errorbar(
            mean.index, mean.values, yerr=err, color=color, marker=MARKERS[j % len(MARKERS)],
            ms=5, lw=1.5, capsize=2, label=label(v),
        )  # fmt: skip


def _label_t(tf: float) -> str:
    return f"t = {tf:.3g} T"


def _label_sigma(s: float) -> str:
    return f"σ = {s:.0e}"


def _panels(n: int, width: float = 4.6, height: float = 3.6, sharey: bool = True):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=sharey)
    return fig, list(axes[0])


def barrier_vs_sigma(
    df: pd.DataFrame, path: Path, metric: str = "barrier_train_loss", logy: bool = False
) -> Path:
    """Paper Figure 2 (27 with log y): barrier against σ, one colour per t, a panel per kind."""
    d = children(df)
    kinds = sorted(d["kind"].unique()) or ["batch"]
    fig, axes = _panels(len(kinds))
    for ax, kind in zip(axes, kinds, strict=True):
        _series(ax, d[d["kind"] == kind], "sigma", metric, "t_frac", _label_t)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("symlog", linthresh=SYMLOG)
        ax.set_xlabel("perturbation size σ")
        ax.set_title(f"{kind} perturbation")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(metric.replace("_", " "))
    axes[-1].legend(title="perturbed at", fontsize=8, title_fontsize=8, loc="upper left")
    return _save(fig, path)


def barrier_vs_t(df: pd.DataFrame, path: Path) -> Path:
    """Workshop Figure 1: train (solid) and test-error (dashed) barrier against t, by σ."""
    d = children(df)
    kinds = sorted(d["kind"].unique()) or ["batch"]
    fig, axes = _panels(len(kinds))
    for ax, kind in zip(axes, kinds, strict=True):
        dk = d[d["kind"] == kind]
        _series(ax, dk, "t_frac", "barrier_train_loss", "sigma", _label_sigma)
        sigmas = sorted(dk["sigma"].unique())
        for s, color in zip(sigmas, _colors(len(sigmas)), strict=True):
            g = dk[dk["sigma"] == s].groupby("t_frac")["barrier_test_error"].mean()
            ax.plot(g.index, g.values, color=color, ls="--", lw=1)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=SYMLOG)
        ax.set_xlabel("perturbation time t / T")
        ax.set_title(f"{kind}: train loss (solid), test error (dashed)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("barrier")
    axes[-1].legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def cka_figure(df: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 3: CKA against σ by t; barrier against CKA; ensemble accuracy against CKA."""
    d = children(df).dropna(subset=["cka"])
    fig, axes = _panels(3, sharey=False)
    _series(axes[0], d, "sigma", "cka", "t_frac", _label_t)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("perturbation size σ")
    axes[0].set_ylabel("angular CKA distance (rad)")
    ts = sorted(d["t_frac"].unique())
    for j, (tf, color) in enumerate(zip(ts, _colors(len(ts)), strict=True)):
        dt = d[d["t_frac"] == tf]
        m = MARKERS[j % len(MARKERS)]
        axes[1].scatter(
            dt["cka"], dt["barrier_train_loss"], color=color, marker=m, s=16, label=_label_t(tf)
        )
        axes[2].scatter(dt["cka"], dt["ensemble_test_acc"], color=color, marker=m, s=16)
    axes[1].set_yscale("symlog", linthresh=SYMLOG)
    axes[1].set_xlabel("angular CKA distance (rad)")
    axes[1].set_ylabel("barrier train loss")
    axes[2].set_xlabel("angular CKA distance (rad)")
    axes[2].set_ylabel("ensemble test accuracy")
    if len(d):
        axes[2].axhline(d["test_acc_a"].mean(), color="0.4", ls=":", lw=1, label="single network")
        axes[2].legend(fontsize=8)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def trajectory_figure(traj: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 6: L2 to the original and train-loss barrier over training, by t (largest σ
    of the first kind, mean over seeds)."""
    d = traj[~traj["kind"].isin(["original", "control"])]
    fig, axes = _panels(2, sharey=False)
    if len(d):
        kind = sorted(d["kind"].unique())[0]
        sigma = d[d["kind"] == kind]["sigma"].max()
        d = d[(d["kind"] == kind) & (d["sigma"] == sigma)]
        ts = sorted(d["t"].unique())
        for j, (t, color) in enumerate(zip(ts, _colors(len(ts)), strict=True)):
            g = d[d["t"] == t].groupby("step")
            m = MARKERS[j % len(MARKERS)]
            axes[0].plot(g["l2_to_original"].mean(), color=color, marker=m, ms=3, label=f"t = {t}")
            axes[1].plot(g["barrier_train_loss"].mean(), color=color, marker=m, ms=3)
        fig.suptitle(f"{kind} perturbation, σ = {sigma:.0e}", fontsize=10)
    axes[0].set_ylabel("L2 to the original")
    axes[1].set_ylabel("barrier train loss")
    axes[0].set_yscale("log")
    axes[1].set_yscale("symlog", linthresh=SYMLOG)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_xscale("symlog", linthresh=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(title="perturbed at", fontsize=8, title_fontsize=8)
    return _save(fig, path)


def l2_from_init_figure(traj: pd.DataFrame, path: Path) -> Path:
    """Workshop Figure 3 (middle, right): distance from initialisation over training, original
    and children (by σ), for the earliest t."""
    fig, axes = _panels(2)
    if len(traj):
        t0 = traj["t"].min()
        d = traj[traj["t"] == t0]
        orig = d[d["kind"] == "original"].groupby("step")["l2_from_init"].mean()
        axes[0].plot(orig, color="k", lw=2, label="original")
        kids = d[~d["kind"].isin(["original", "control"])]
        sigmas = sorted(kids["sigma"].unique())
        for j, (s, color) in enumerate(zip(sigmas, _colors(len(sigmas)), strict=True)):
            g = kids[kids["sigma"] == s].groupby("step")["l2_from_init"].mean()
            axes[1].plot(
                g, color=color, marker=MARKERS[j % len(MARKERS)], ms=3, label=_label_sigma(s)
            )
        axes[0].set_title(f"original (t = {t0})")
        axes[1].set_title(f"perturbed at t = {t0}")
        axes[1].legend(fontsize=8)
    axes[0].set_ylabel("L2 from initialisation")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def barrier_vs_l2(df: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 7 / workshop Figure 3 (left): barrier against L2 after training, by t."""
    d = children(df)
    fig, axes = _panels(1, width=5.2)
    ax = axes[0]
    ts = sorted(d["t_frac"].unique())
    for j, (tf, color) in enumerate(zip(ts, _colors(len(ts)), strict=True)):
        dt = d[d["t_frac"] == tf]
        ax.scatter(
            dt["l2"],
            dt["barrier_train_loss"],
            color=color,
            marker=MARKERS[j % len(MARKERS)],
            s=16,
            label=_label_t(tf),
        )
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=SYMLOG)
    ax.set_xlabel("L2 distance after training")
    ax.set_ylabel("barrier train loss")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def fixed_points_figure(df: pd.DataFrame, proxy: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 16 / workshop Figure 4: fixed points of the weight-matching permutation
    against L2 and barrier; and the random-permutation proxy."""
    d = children(df).dropna(subset=["fixed_point_fraction_wm"])
    fig, axes = _panels(3, sharey=False)
    ts = sorted(d["t_frac"].unique())
    for j, (tf, color) in enumerate(zip(ts, _colors(len(ts)), strict=True)):
        dt = d[d["t_frac"] == tf]
        m = MARKERS[j % len(MARKERS)]
        axes[0].scatter(
            dt["fixed_point_fraction_wm"], dt["l2"], color=color, marker=m, s=16, label=_label_t(tf)
        )
        axes[1].scatter(
            dt["fixed_point_fraction_wm"], dt["barrier_train_loss"], color=color, marker=m, s=16
        )
    axes[0].set_ylabel("L2 distance")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("barrier train loss")
    axes[1].set_yscale("symlog", linthresh=SYMLOG)
    axes[0].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_xlabel("fixed points of weight matching")
    if len(proxy):
        g = proxy.groupby("fixed_fraction")[["l2", "barrier_train_loss"]].mean()
        sc = axes[2].scatter(
            g.index, g["l2"], c=g["barrier_train_loss"], cmap="viridis", s=40, marker="s"
        )
        fig.colorbar(sc, ax=axes[2], label="barrier train loss")
    axes[2].set_xlabel("fixed points of a random permutation")
    axes[2].set_ylabel("L2 to the unpermuted network")
    axes[2].set_title("random-permutation proxy", fontsize=9)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def barrier_vs_fraction(df: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 11: noise L2 and barrier against the fraction of perturbed weights, by t."""
    d = children(df)
    fig, axes = _panels(2, sharey=False)
    _series(axes[0], d, "fraction", "noise_l2", "t_frac", _label_t)
    _series(axes[1], d, "fraction", "barrier_train_loss", "t_frac", _label_t)
    axes[0].set_ylabel("L2 norm of the perturbation")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("barrier train loss")
    axes[1].set_yscale("symlog", linthresh=SYMLOG)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("fraction of perturbed weights")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def runs_side_by_side(frames: dict[str, pd.DataFrame], path: Path) -> Path:
    """Paper Figures 4 and 12: barrier against σ by t, one panel per run (shared y)."""
    fig, axes = _panels(len(frames))
    for ax, (name, df) in zip(axes, frames.items(), strict=True):
        d = children(df)
        kind = "batch" if "batch" in set(d["kind"]) else (sorted(d["kind"].unique()) or ["?"])[0]
        _series(ax, d[d["kind"] == kind], "sigma", "barrier_train_loss", "t_frac", _label_t)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=SYMLOG)
        ax.set_title(f"{name} ({kind})", fontsize=9)
        ax.set_xlabel("perturbation size σ")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("barrier train loss")
    axes[-1].legend(fontsize=7)
    return _save(fig, path)


def spawn_figure(df: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 10: barrier against t for the spawning baseline (independent batches from
    t) next to single perturbations (left), and the perturbations' L2 size (right)."""
    d, s = children(df), spawned(df)
    fig, axes = _panels(2, sharey=False)
    kind = "batch" if "batch" in set(d["kind"]) else (sorted(d["kind"].unique()) or ["?"])[0]
    _series(axes[0], d[d["kind"] == kind], "t_frac", "barrier_train_loss", "sigma", _label_sigma)
    g = s.groupby("t_frac")["barrier_train_loss"]
    axes[0].errorbar(
        g.mean().index, g.mean().values, yerr=g.sem().fillna(0.0).values, color="black",
        marker="s", lw=2, ls="--", capsize=2, label="spawning (Frankle et al.)",
    )  # fmt: skip
    axes[0].set_ylabel("barrier train loss")
    axes[0].set_yscale("symlog", linthresh=SYMLOG)
    axes[0].set_title(f"{kind} perturbation vs spawning", fontsize=9)
    _series(axes[1], d[d["kind"] == kind], "t_frac", "noise_l2", "sigma", _label_sigma)
    axes[1].set_ylabel("L2 norm of the perturbation")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("perturbation time t / T")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def finetune_figure(df: pd.DataFrame, path: Path) -> Path:
    """Paper Figure 5: barrier against σ, a panel per perturbation time, coloured by the
    pre-training duration the fine-tuning started from (``pretrain_steps`` column)."""
    d = children(df)
    kind = "batch" if "batch" in set(d["kind"]) else (sorted(d["kind"].unique()) or ["?"])[0]
    d = d[d["kind"] == kind]
    ts = sorted(d["t_frac"].unique()) or [0.0]
    fig, axes = _panels(len(ts))
    for ax, tf in zip(axes, ts, strict=True):
        _series(ax, d[d["t_frac"] == tf], "sigma", "barrier_train_loss", "pretrain_steps",
                lambda p: f"pre-trained {int(p)} steps" if p else "random init")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=SYMLOG)
        ax.set_title(f"{kind} perturbation at t = {tf:.3g} T", fontsize=9)
        ax.set_xlabel("perturbation size σ")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("barrier train loss")
    axes[-1].legend(fontsize=7)
    return _save(fig, path)


@dataclass(frozen=True)
class FigureSpec:
    file: str
    title: str
    caption: str


FIGURES = [
    FigureSpec("barrier_vs_sigma.png", "Barrier against perturbation size (Figure 2)",
               "Train-loss barrier after training against σ, coloured by perturbation time t."),
    FigureSpec("barrier_vs_sigma_log.png", "The same, log y (Figure 27)",
               "Symmetric-log y axis: small barriers and exact zeros remain visible."),
    FigureSpec("barrier_wm_vs_sigma.png", "After weight matching (Figure 2, middle)",
               "Barrier between the original and the child permuted by weight matching."),
    FigureSpec("barrier_vs_t.png", "Barrier against perturbation time (workshop Figure 1)",
               "Train-loss (solid) and test-error (dashed) barrier, coloured by σ."),
    FigureSpec("cka.png", "Representations (Figure 3)",
               "Angular CKA against σ; barrier and ensemble accuracy against CKA."),
    FigureSpec("trajectories.png", "Divergence over training (Figure 6)",
               "L2 to the original and train-loss barrier at log-spaced steps after t."),
    FigureSpec("l2_from_init.png", "Distance from initialisation (workshop Figure 3)",
               "L2 from θ0 over training for the original and the children perturbed earliest."),
    FigureSpec("barrier_vs_l2.png", "Barrier against L2 (Figure 7)",
               "Each point is one child; colour is the perturbation time."),
    FigureSpec("fixed_points.png", "Permutations (Figure 16, workshop Figure 4)",
               "Fixed points of weight matching against L2 and barrier; random-permutation proxy."),
    FigureSpec("barrier_vs_fraction.png", "Fraction of perturbed weights (Figure 11)",
               "Perturbation norm and barrier against the fraction of weights perturbed."),
    FigureSpec("spawn.png", "Single perturbations vs the spawning baseline (Figure 10)",
               "Barrier against t: children trained on independent batches from t (dashed) "
               "and single perturbations by σ; right, the perturbations' L2 size."),
]  # fmt: skip


def all_figures(
    df: pd.DataFrame, traj: pd.DataFrame, proxy: pd.DataFrame, out: Path
) -> list[tuple[FigureSpec, Path]]:
    """Every figure the data supports, in the report's order."""
    made: list[tuple[FigureSpec, Path]] = []
    spec = {f.file: f for f in FIGURES}

    def add(name: str, fn: Callable[[Path], Path]) -> None:
        made.append((spec[name], fn(out / name)))

    add("barrier_vs_sigma.png", lambda p: barrier_vs_sigma(df, p))
    add("barrier_vs_sigma_log.png", lambda p: barrier_vs_sigma(df, p, logy=True))
    if children(df)["barrier_train_loss_wm"].notna().any():
        add(
            "barrier_wm_vs_sigma.png",
            lambda p: barrier_vs_sigma(df, p, "barrier_train_loss_wm", logy=True),
        )
    if df["t"].nunique() > 1:
        add("barrier_vs_t.png", lambda p: barrier_vs_t(df, p))
    if children(df)["cka"].notna().any():
        add("cka.png", lambda p: cka_figure(df, p))
    if len(traj):
        add("trajectories.png", lambda p: trajectory_figure(traj, p))
        add("l2_from_init.png", lambda p: l2_from_init_figure(traj, p))
    add("barrier_vs_l2.png", lambda p: barrier_vs_l2(df, p))
    if children(df)["fixed_point_fraction_wm"].notna().any():
        add("fixed_points.png", lambda p: fixed_points_figure(df, proxy, p))
    if children(df)["fraction"].nunique() > 1:
        add("barrier_vs_fraction.png", lambda p: barrier_vs_fraction(df, p))
    if len(spawned(df)):
        add("spawn.png", lambda p: spawn_figure(df, p))
    return made
