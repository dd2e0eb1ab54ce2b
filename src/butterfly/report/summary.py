"""Plain-text summaries of a run's results."""

from __future__ import annotations

import pandas as pd

from butterfly.experiment.rows import children


def summary_table(df: pd.DataFrame, metric: str = "barrier_train_loss") -> pd.DataFrame:
    """Mean of ``metric`` over seeds, rows (kind, t/T), columns sigma."""
    d = children(df, spawn=True)  # spawned children show as sigma 0
    if d.empty:
        return pd.DataFrame()
    return d.pivot_table(index=["kind", "t_frac"], columns="sigma", values=metric, aggfunc="mean")


def format_table(df: pd.DataFrame) -> str:
    """Barrier and L2 per (kind, t) x sigma, as printed at the end of ``butterfly run``."""
    parts = []
    for metric in ("barrier_train_loss", "l2"):
        table = summary_table(df, metric)
        if table.empty:
            continue
        table.columns = [f"σ={s:.0e}" for s in table.columns]
        table.index = [f"{k:<8s} t={tf:.3f}T" for k, tf in table.index]
        parts.append(
            f"mean {metric} over seeds:\n" + table.to_string(float_format=lambda v: f"{v:9.3g}")
        )
    return "\n\n".join(parts)


def finetune_table(df: pd.DataFrame, metric: str = "barrier_train_loss") -> pd.DataFrame:
    """Mean ``metric`` over seeds by (pre-training steps, kind, t) x sigma (perturbed only)."""
    return children(df).pivot_table(
        index=["pretrain_steps", "kind", "t_frac"], columns="sigma", values=metric, aggfunc="mean"
    )
