"""Figures from a run's results (they read the store's rows, nothing else).

Colours come from the ``viridis`` map (ordered, colour-blind safe, readable in grayscale) and
every series also gets its own marker.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MARKERS = "osD^v<>ph*"


def children(df: pd.DataFrame) -> pd.DataFrame:
    """Perturbed children that did not diverge (no control, no diverged rows)."""
    return df[(df["control"] == 0) & (df["diverged"] == 0)]


def barrier_vs_sigma(
    df: pd.DataFrame, path: Path, metric: str = "barrier_train_loss", logy: bool = False
) -> Path:
    """Paper Figure 2: barrier against sigma (log x), one colour per t, one panel per kind.

    Points are means over seeds; error bars are the standard error over seeds.
    """
    d = children(df)
    kinds = sorted(d["kind"].unique()) or ["batch"]
    ts = sorted(d["t_frac"].unique())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(4.6 * len(kinds), 3.6), squeeze=False, sharey=True
    )
    for ax, kind in zip(axes[0], kinds, strict=True):
        dk = d[d["kind"] == kind]
        for j, tf in enumerate(ts):
            g = dk[dk["t_frac"] == tf].groupby("sigma")[metric]
            mean, sem, count = g.mean(), g.sem(), g.count()
            if mean.empty:
                continue
            color = cmap(j / max(len(ts) - 1, 1) * 0.9)
            err = np.where(count > 1, sem.fillna(0.0), 0.0)
            ax.errorbar(
                mean.index,
                mean.values,
                yerr=err,
                color=color,
                marker=MARKERS[j % len(MARKERS)],
                ms=5,
                lw=1.5,
                capsize=2,
                label=f"t = {tf:.3g} T",
            )
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel("perturbation size σ")
        ax.set_title(f"{kind} perturbation")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][-1].legend(title="perturbed at", fontsize=8, title_fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
