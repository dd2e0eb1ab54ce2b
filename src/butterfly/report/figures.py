"""The paper's figures from a run's store (they read the store's tables, nothing else).

Every builder returns a matplotlib :class:`~matplotlib.figure.Figure` (``save_figure`` writes it
as PNG and PDF), so that tests can read what each axis plots. The rules every figure keeps:

* perturbation kinds are never averaged together: one panel (column or row) per kind;
* points are means over seeds of the per-seed mean over directions (``seed_stats``), error bars
  the standard error over seeds (none for one seed); what else a line averages over is in its
  caption (``FIGURES``). Figures other than the fraction figure show the children that perturb
  the largest fraction of weights (``full_fraction``);
* a log axis only for values that are all strictly positive; otherwise (and for barriers, which
  are >= 0 and often exactly 0, always) a symmetric-log axis, linear below the decade of the
  smallest non-zero value, with its bottom fixed at 0; a quantity with no non-zero value is linear
  from 0;
* legends sit outside the axes (a figure legend to the right);
* one :class:`Palette` for a whole report: the same t (and the same σ) has the same colour and
  marker in every panel, every figure and every run of a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from butterfly.experiment.rows import PERTURBED_KINDS, children, spawned
from butterfly.report.summary import (
    fmt_number,
    fmt_t,
    full_fraction,
    main_kind,
    perturbed_kinds,
    pretrain_labels,
    seed_stats,
)

MARKERS = "osD^v<>ph*"
REF = "reference"  # gid of reference lines (axhline): their x data are axes fractions
KIND_TITLES = {
    "batch": "batch perturbation",
    "gaussian": "Gaussian perturbation",
    "spawn": "spawned (σ = 0, own batches from t)",
}
Colour = tuple[float, float, float, float]


def _key(v: float) -> float:
    return round(float(v), 12)


def _ramp(cmap: str, lo: float, hi: float, i: int, n: int) -> Colour:
    c = plt.get_cmap(cmap)(lo + (hi - lo) * i / max(n - 1, 1))
    return (float(c[0]), float(c[1]), float(c[2]), float(c[3]))


@dataclass(frozen=True)
class Palette:
    """Colours and markers keyed by value: t/T (viridis), σ (plasma) and pre-training steps
    (cividis). Build it once from every results table a report shows (``Palette.of``) and pass
    it to every figure."""

    t_fracs: tuple[float, ...] = ()
    sigmas: tuple[float, ...] = ()
    pretrain: tuple[int, ...] = ()
    _t: dict[float, int] = field(init=False, repr=False, compare=False)
    _s: dict[float, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_t", {_key(v): i for i, v in enumerate(self.t_fracs)})
        object.__setattr__(self, "_s", {_key(v): i for i, v in enumerate(self.sigmas)})

    @classmethod
    def of(cls, *frames: pd.DataFrame) -> Palette:
        """The union of the t/T, σ (of perturbed children) and pre-training values of
        ``frames`` (results tables)."""
        ts: set[float] = set()
        ss: set[float] = set()
        ps: set[int] = set()
        for df in frames:
            if df is None or df.empty:
                continue
            ts |= {_key(v) for v in df["t_frac"].dropna()}
            pert = df[df["kind"].isin(PERTURBED_KINDS)]
            ss |= {_key(v) for v in pert["sigma"].dropna()}
            if "pretrain_steps" in df.columns:
                ps |= {int(v) for v in df["pretrain_steps"].dropna()}
        return cls(tuple(sorted(ts)), tuple(sorted(ss)), tuple(sorted(ps)))

    def _index(self, table: dict[float, int], v: float, what: str) -> int:
        try:
            return table[_key(v)]
        except KeyError:
            raise KeyError(f"{what} = {v} is not in the report's palette") from None

    def t(self, tf: float) -> Colour:
        return _ramp("viridis", 0.0, 0.9, self._index(self._t, tf, "t/T"), len(self.t_fracs))

    def t_marker(self, tf: float) -> str:
        return MARKERS[self._index(self._t, tf, "t/T") % len(MARKERS)]

    def sigma(self, s: float) -> Colour:
        return _ramp("plasma", 0.0, 0.85, self._index(self._s, s, "sigma"), len(self.sigmas))

    def sigma_marker(self, s: float) -> str:
        return MARKERS[self._index(self._s, s, "sigma") % len(MARKERS)]

    def pretrain_colour(self, steps: int) -> Colour:
        if int(steps) not in self.pretrain:
            raise KeyError(f"pretrain_steps = {steps} is not in the report's palette")
        i = self.pretrain.index(int(steps))
        return _ramp("cividis", 0.0, 0.9, i, len(self.pretrain))

    def pretrain_marker(self, steps: int) -> str:
        return MARKERS[self.pretrain.index(int(steps)) % len(MARKERS)]


def label_t(tf: float) -> str:
    return f"t = {fmt_t(tf)}"


def label_sigma(s: float) -> str:
    return f"σ = {fmt_number(float(s))}"


# ---- plumbing -------------------------------------------------------------------------------
def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG (``path``) and PDF beside it, and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=130)
        fig.savefig(path.with_suffix(".pdf"))
    finally:
        plt.close(fig)
    return path


def _figure(
    nrows: int, ncols: int, width: float = 4.0, height: float = 3.1, **share: object
) -> tuple[Figure, np.ndarray]:
    fig = plt.figure(figsize=(width * ncols + 1.9, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **share)  # type: ignore[arg-type]
    return fig, axes


def _legend(fig: Figure, title: str | None = None) -> None:
    """One legend for the figure, to the right of every axes; each label once."""
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_") and lab not in seen:
                seen[lab] = h
    if seen:
        fig.legend(
            list(seen.values()), list(seen), loc="outside right upper", title=title,
            fontsize=8, title_fontsize=8,
        )  # fmt: skip


def _plotted(ax: Axes, axis: str) -> np.ndarray:
    """The data values ``ax`` and the axes sharing ``axis`` with it plot along ``axis`` (lines,
    error-bar centres, scatter points; not error-bar extents)."""
    group = (ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()).get_siblings(ax)
    vals: list[np.ndarray] = []
    for a in group:
        for line in a.lines:
            if axis == "x" and line.get_gid() == REF:
                continue
            data = line.get_xdata() if axis == "x" else line.get_ydata()
            vals.append(np.asarray(data, dtype=float).ravel())
        for coll in a.collections:
            offsets = np.ma.getdata(coll.get_offsets())
            if type(coll).__name__ == "PathCollection" and len(offsets):
                vals.append(np.asarray(offsets, dtype=float)[:, 0 if axis == "x" else 1])
    if not vals:
        return np.array([])
    v = np.concatenate(vals)
    return v[np.isfinite(v)]


def _scale(ax: Axes, axis: str, how: str) -> None:
    """Scale ``axis`` from the data it plots. ``log``: log if every value is > 0, else as
    ``symlog0``. ``symlog0``: symmetric-log, linear below the decade of the smallest non-zero
    value (at least 1e-6 of the largest), bottom at 0; linear from 0 without non-zero values.
    ``linear0``: linear from 0. ``linear``: matplotlib's default."""
    v = _plotted(ax, axis)
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    if how == "linear" or len(v) == 0:
        return
    pos = v[v > 0]
    if how == "log" and len(pos) == len(v):
        set_scale("log")
        return
    if how in ("log", "symlog0") and len(pos):
        top = 10.0 ** math.floor(math.log10(pos.max()))
        lin = max(10.0 ** math.floor(math.log10(pos.min())), top * 1e-6)
        set_scale("symlog", linthresh=lin, linscale=0.5)
    ax.relim()
    ax.autoscale_view()
    if axis == "x":
        ax.set_xlim(left=0)
    else:
        ax.set_ylim(bottom=0)


def _series(
    ax: Axes,
    d: pd.DataFrame,
    x: str,
    y: str,
    group: str,
    colour: Callable[[float], Colour],
    label: Callable[[float], str],
    marker: Callable[[float], str],
    **style: object,
) -> None:
    """One line per value of ``group``: the mean of y over seeds against x, the s.e. over seeds
    as error bars (clipped at 0: every plotted quantity is >= 0). Not clipped to the axes, so
    that points on an axis that starts at 0 show whole; the limits hold every point."""
    for v in sorted(d[group].dropna().unique()):
        st = seed_stats(d[d[group] == v], [x], y)
        if st.empty:
            continue
        mean = st["mean"].to_numpy(dtype=float)
        err = np.where(st["n"] > 1, st["sem"].fillna(0.0), 0.0)
        lower = np.minimum(err, np.maximum(mean, 0.0))
        ax.errorbar(
            st.index.to_numpy(dtype=float), mean, yerr=[lower, err], color=colour(v),
            marker=marker(v), ms=5, lw=1.5, capsize=2, label=label(v), clip_on=False, **style,
        )  # fmt: skip


def _t_series(ax: Axes, d: pd.DataFrame, x: str, y: str, palette: Palette) -> None:
    _series(ax, d, x, y, "t_frac", palette.t, label_t, palette.t_marker)


def _sigma_series(ax: Axes, d: pd.DataFrame, x: str, y: str, palette: Palette) -> None:
    _series(ax, d, x, y, "sigma", palette.sigma, label_sigma, palette.sigma_marker)


def _t_scatter(ax: Axes, d: pd.DataFrame, x: str, y: str, palette: Palette) -> None:
    """Each child a point, coloured and marked by its t."""
    for tf in sorted(d["t_frac"].unique()):
        dt = d[d["t_frac"] == tf].dropna(subset=[x, y])
        if len(dt):
            ax.scatter(
                dt[x], dt[y], color=palette.t(tf), marker=palette.t_marker(tf), s=18,
                label=label_t(tf), clip_on=False,
            )  # fmt: skip


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _finish(axes: Iterable[Axes]) -> None:
    for ax in axes:
        ax.grid(True, alpha=0.3)


def _kids(df: pd.DataFrame) -> pd.DataFrame:
    """Perturbed children (batch, gaussian), the largest perturbed fraction only."""
    return full_fraction(children(df))


def _palette(palette: Palette | None, *frames: pd.DataFrame) -> Palette:
    return palette if palette is not None else Palette.of(*frames)


BARRIER_LABELS = {
    "barrier_train_loss": "train-loss barrier",
    "barrier_train_loss_wm": "train-loss barrier after weight matching",
    "barrier_test_error": "test-error barrier",
}


# ---- the figures ----------------------------------------------------------------------------
def barrier_vs_sigma(
    df: pd.DataFrame,
    palette: Palette | None = None,
    metric: str = "barrier_train_loss",
    logy: bool = False,
) -> Figure:
    """Paper Figure 2 (27 with symmetric-log y): barrier against σ, a panel per kind, a line
    per t."""
    palette = _palette(palette, df)
    d = _kids(df)
    kinds = perturbed_kinds(d.dropna(subset=[metric])) or perturbed_kinds(d) or ["batch"]
    fig, axes = _figure(1, len(kinds), sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        _t_series(ax, d[d["kind"] == kind], "sigma", metric, palette)
        ax.set_title(KIND_TITLES[kind])
        ax.set_xlabel("perturbation size σ")
    axes[0, 0].set_ylabel(BARRIER_LABELS.get(metric, metric))
    for ax in axes[0]:
        _scale(ax, "x", "log")
        _scale(ax, "y", "symlog0" if logy else "linear0")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def barrier_vs_t(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Workshop Figures 1, 5, 9: train-loss (top) and test-error (bottom) barrier against t, a
    column per kind, a line per σ."""
    palette = _palette(palette, df)
    d = _kids(df).copy()
    d["barrier_test_error_pct"] = 100.0 * d["barrier_test_error"]  # the workshop's percent
    kinds = perturbed_kinds(d) or ["batch"]
    metrics = ["barrier_train_loss", "barrier_test_error_pct"]
    fig, axes = _figure(2, len(kinds), sharex=True, sharey="row")
    for j, kind in enumerate(kinds):
        for i, metric in enumerate(metrics):
            _sigma_series(axes[i, j], d[d["kind"] == kind], "t_frac", metric, palette)
        axes[0, j].set_title(KIND_TITLES[kind])
        axes[1, j].set_xlabel("perturbation time t / T")
    axes[0, 0].set_ylabel("train-loss barrier (nats)")
    axes[1, 0].set_ylabel("test-error barrier (% of test examples)")
    for ax in axes.flat:
        _scale(ax, "x", "log")
        _scale(ax, "y", "symlog0")
    _finish(axes.flat)
    _legend(fig, "perturbation size")
    return fig


def cka_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 3, a row per kind: angular CKA distance against σ (a line per t); train-loss
    barrier against CKA and ensemble accuracy against CKA (a point per child)."""
    palette = _palette(palette, df)
    d = _kids(df).dropna(subset=["cka"])
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = _figure(len(kinds), 3)
    for i, kind in enumerate(kinds):
        dk = d[d["kind"] == kind]
        left, mid, right = axes[i]
        _t_series(left, dk, "sigma", "cka", palette)
        left.set_xlabel("perturbation size σ")
        left.set_ylabel(f"{kind}: angular CKA distance (rad)")
        _t_scatter(mid, dk, "cka", "barrier_train_loss", palette)
        mid.set_ylabel("train-loss barrier")
        _t_scatter(right, dk, "cka", "ensemble_test_acc", palette)
        right.set_ylabel("ensemble test accuracy")
        if dk["test_acc_a"].notna().any():
            right.axhline(
                dk["test_acc_a"].mean(), color="0.3", ls=":", lw=1.2, gid=REF,
                label="original alone (mean)",
            )  # fmt: skip
        for ax in (mid, right):
            ax.set_xlabel("angular CKA distance (rad)")
        left.set_title(KIND_TITLES[kind])
        _scale(left, "x", "log")
        _scale(left, "y", "linear0")
        _scale(mid, "x", "linear0")
        _scale(mid, "y", "symlog0")
        _scale(right, "x", "linear0")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def _traj_children(traj: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
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
    palette = _palette(palette, df)
    d = _traj_children(traj, df)
    kinds = perturbed_kinds(d) + (["spawn"] if (d["kind"] == "spawn").any() else [])
    kinds = kinds or ["batch"]
    metrics = ["l2_to_original"]
    if d["barrier_train_loss"].notna().any():
        metrics.insert(0, "barrier_train_loss")
    fig, axes = _figure(len(metrics), len(kinds), sharex="col")
    for j, kind in enumerate(kinds):
        for i, metric in enumerate(metrics):
            _t_series(axes[i, j], d[d["kind"] == kind], "step", metric, palette)
        axes[0, j].set_title(KIND_TITLES[kind])
        axes[-1, j].set_xlabel("training step")
    for i, metric in enumerate(metrics):
        axes[i, 0].set_ylabel(
            "train-loss barrier" if metric == "barrier_train_loss" else "L2 to the original"
        )
        for ax in axes[i]:
            _scale(ax, "x", "log")
            _scale(ax, "y", "symlog0" if metric == "barrier_train_loss" else "log")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def l2_from_init_figure(
    traj: pd.DataFrame, df: pd.DataFrame, palette: Palette | None = None
) -> Figure:
    """Workshop Figure 3 (middle, right): L2 from θ0 over training for the original and, a panel
    per kind, its children perturbed at the earliest t (a line per σ)."""
    palette = _palette(palette, df)
    t0 = traj["t"].min() if len(traj) else 0
    d = _traj_children(traj[traj["t"] == t0], df)
    orig = traj[(traj["t"] == t0) & (traj["kind"] == "original")]
    kinds = perturbed_kinds(d) + (["spawn"] if (d["kind"] == "spawn").any() else [])
    fig, axes = _figure(1, 1 + len(kinds), sharey=True, sharex=True)
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
            _sigma_series(ax, dk, "step", "l2_from_init", palette)
        ax.set_title(f"{KIND_TITLES[kind]} at {when}", fontsize=9)
    ax0.set_ylabel("L2 from initialisation θ0")
    for ax in axes[0]:
        ax.set_xlabel("training step")
        _scale(ax, "x", "log")
        _scale(ax, "y", "linear0")
    _finish(axes.flat)
    _legend(fig)
    return fig


def performance_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 8: train-loss barrier against the perturbed network's final test accuracy
    (left) and train cross-entropy (right), a row per kind, one point per child and seed."""
    palette = _palette(palette, df)
    d = _kids(df)
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = _figure(len(kinds), 2, sharey="row")
    for i, kind in enumerate(kinds):
        dk = d[d["kind"] == kind]
        _t_scatter(axes[i, 0], dk, "test_acc_b", "barrier_train_loss", palette)
        _t_scatter(axes[i, 1], dk, "train_loss_b", "barrier_train_loss", palette)
        axes[i, 0].set_ylabel(f"{KIND_TITLES[kind]}:\ntrain-loss barrier")
        for ax in axes[i]:
            _scale(ax, "y", "symlog0")
        _scale(axes[i, 0], "x", "linear")
        _scale(axes[i, 1], "x", "log")
    axes[-1, 0].set_xlabel("test accuracy of the perturbed network")
    axes[-1, 1].set_xlabel("train cross-entropy of the perturbed network")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def settings_figure(frames: dict[str, pd.DataFrame]) -> Figure:
    """Across runs (settings), each a colour: barrier against L2 (Figure 7, 25-26), barrier
    against angular CKA (Figure 14, right) and ensemble accuracy against CKA (Figure 15, right),
    for the main perturbation kind, one point per child and seed."""
    fig, axes = _figure(1, 3)
    names = list(frames)
    for i, name in enumerate(names):
        d = _kids(frames[name])
        kind = main_kind(d)
        if kind is None:
            continue
        dk = d[d["kind"] == kind]
        colour = _ramp("tab10", 0.0, 0.9, i, max(len(names), 2))
        style = {"color": colour, "marker": MARKERS[i % len(MARKERS)], "s": 16, "clip_on": False}
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
    _scale(axes[0, 0], "x", "log")
    for ax in axes[0, :2]:
        _scale(ax, "y", "symlog0")
    for ax in axes[0, 1:]:
        _scale(ax, "x", "linear0")
    _finish(axes.flat)
    _legend(fig, "setting")
    return fig


# ---- the edge of stability -------------------------------------------------------------------
# ε of a grid sweep's σ*(t) estimate: the threshold search's default (experiment.threshold's
# DEFAULT_EPS, which the report may not import; a test keeps the two equal)
STABILITY_EPS = 0.05


def sigma_star(df: pd.DataFrame, thresholds: pd.DataFrame | None, eps: float = STABILITY_EPS
               ) -> pd.DataFrame:  # fmt: skip
    """σ*(t) per (seed, kind, t_frac): from a threshold search's table when there is one,
    else from the grid (the geometric mean of the first measured σ whose seed-mean barrier
    reaches ε and the σ below it). Columns seed, kind, t_frac, sigma_star (NaN: open)."""
    kids = _kids(df)
    T = None
    if len(kids):
        T = float((kids["t"] / kids["t_frac"]).replace([np.inf], np.nan).dropna().median()) \
            if (kids["t_frac"] > 0).any() else None  # fmt: skip
    if thresholds is not None and len(thresholds) and (thresholds["over"] == "sigma").all():
        th = thresholds.copy()
        steps = th["at"].astype(float)
        th["t_frac"] = steps / T if T else 0.0
        th.loc[steps == 0, "t_frac"] = 0.0
        known = {_key(v): v for v in kids["t_frac"].unique()}
        th["t_frac"] = [known.get(_key(v), v) for v in th["t_frac"]]
        return th.rename(columns={"estimate": "sigma_star"})[
            ["seed", "kind", "t_frac", "sigma_star"]
        ]
    out = []
    for (seed, kind, tf), g in kids.groupby(["seed", "kind", "t_frac"]):
        b = g.groupby("sigma")["barrier_train_loss"].mean().sort_index()
        over = [s for s, v in b.items() if v >= eps]
        star = np.nan
        if over and over[0] != b.index[0]:
            below = b.index[list(b.index).index(over[0]) - 1]
            star = float(np.sqrt(below * over[0]))
        out.append({"seed": seed, "kind": kind, "t_frac": tf, "sigma_star": star})
    return pd.DataFrame(out, columns=["seed", "kind", "t_frac", "sigma_star"])


def has_stability_map(df: pd.DataFrame, thresholds: pd.DataFrame | None = None) -> bool:
    """A threshold search, or a grid with at least 3 times and 3 sizes."""
    if thresholds is not None and len(thresholds) and (thresholds["over"] == "sigma").all():
        return True
    kids = _kids(df)
    return kids["t_frac"].nunique() >= 3 and kids["sigma"].nunique() >= 3


def stability_map(
    df: pd.DataFrame, thresholds: pd.DataFrame | None = None, palette: Palette | None = None
) -> Figure:
    """The (t, σ) plane, a panel per kind: every measured (t, σ) a square coloured by its mean
    train-loss barrier over seeds (log colour scale), σ*(t) drawn over it (each seed's as a
    small mark, their mean as a line)."""
    from matplotlib.colors import LogNorm

    kids = _kids(df).dropna(subset=["barrier_train_loss"])
    kinds = perturbed_kinds(kids) or ["batch"]
    fig, axes = _figure(1, len(kinds), sharey=True)
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
        _scale(ax, "x", "log")
    axes[0, 0].set_ylabel("perturbation size σ")
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[0]), label="mean train-loss barrier (log)", shrink=0.9)
    _finish(axes.flat)
    _legend(fig)
    return fig


def sigma_star_compared(
    runs: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]
) -> Figure:
    """σ*(t) of several runs on one axis per kind (the paper's Figure 4 question: which
    recipe is more stable, and from when on)."""
    kinds = sorted({k for df, _ in runs.values() for k in perturbed_kinds(_kids(df))}) or ["batch"]
    fig, axes = _figure(1, len(kinds), sharey=True)
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
                    color=_ramp("tab10", 0.0, 0.9, i, max(len(names), 2)))  # fmt: skip
        ax.set_title(f"{KIND_TITLES.get(kind, kind)}", fontsize=10)
        ax.set_xlabel("perturbation time t / T")
        ax.set_yscale("log")
        _scale(ax, "x", "log")
    axes[0, 0].set_ylabel(f"σ*(t): barrier reaches {STABILITY_EPS}")
    _finish(axes.flat)
    _legend(fig)
    return fig


def linearised_figure(traj: pd.DataFrame, df: pd.DataFrame, palette: Palette | None = None
                      ) -> Figure:  # fmt: skip
    """Measured L2 to the original (solid) against the linearised prediction ‖σε‖e^{λ(s−t)}
    (dashed, Appendix B.4) over training, for the children perturbed earliest, a panel per
    kind, a line per σ (mean over seeds)."""
    palette = _palette(palette, df)
    t0 = traj["t"].min() if len(traj) else 0
    d = _traj_children(traj[(traj["t"] == t0)], df)
    d = d[d["l2_predicted"].notna()] if "l2_predicted" in d else d.iloc[0:0]
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = _figure(1, len(kinds), sharey=True)
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
        _scale(ax, "x", "log")
        _scale(ax, "y", "log")
    axes[0, 0].set_ylabel("L2 distance to the original")
    _finish(axes.flat)
    _legend(fig)
    return fig


def training_figure(train: pd.DataFrame) -> Figure:
    """The original's training curve in the population perturbed earliest (so from its t to
    T): train loss (full training set, and the mean minibatch loss between records) and test
    accuracy, mean over seeds. It shows whether the recipe trained well before any barrier is
    read."""
    t0 = train["t"].min() if len(train) else 0
    d = train[train["t"] == t0]
    has_acc = d["test_acc"].notna().any()
    fig, axes = _figure(1, 2 if has_acc else 1, sharex=True)
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
    _scale(ax, "y", "log")
    if has_acc:
        ax2 = axes[0, 1]
        st = seed_stats(d.dropna(subset=["test_acc"]), ["step"], "test_acc")
        ax2.plot(st.index.to_numpy(dtype=float), st["mean"].to_numpy(), color="k", lw=1.5,
                 marker="s", ms=3, label="test accuracy")  # fmt: skip
        ax2.set_ylabel("test accuracy")
        ax2.set_title("accuracy of the original")
        _scale(ax2, "y", "linear0")
    for a in axes[0]:
        a.set_xlabel("training step")
        _scale(a, "x", "log")
    _finish(axes.flat)
    _legend(fig)
    return fig


def barrier_vs_l2(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 7 / workshop Figures 3, 7 (left): train-loss barrier against L2 after
    training, a panel per kind, a point per child coloured by t."""
    palette = _palette(palette, df)
    d = _kids(df)
    kinds = perturbed_kinds(d) or ["batch"]
    fig, axes = _figure(1, len(kinds), sharey=True, sharex=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        _t_scatter(ax, d[d["kind"] == kind], "l2", "barrier_train_loss", palette)
        ax.set_title(KIND_TITLES[kind])
        ax.set_xlabel("L2 distance after training")
    axes[0, 0].set_ylabel("train-loss barrier")
    for ax in axes[0]:
        _scale(ax, "x", "log")
        _scale(ax, "y", "symlog0")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def fixed_points_figure(
    df: pd.DataFrame, proxy: pd.DataFrame, palette: Palette | None = None
) -> Figure:
    """Paper Figure 16 / workshop Figures 4, 8: fixed points of the weight-matching permutation
    against L2 and against the barrier (a row per kind, a point per child); and the
    random-permutation proxy (mean over seeds per requested fraction of fixed points)."""
    palette = _palette(palette, df)
    d = _kids(df).dropna(subset=["fixed_point_fraction_wm"])
    kinds = perturbed_kinds(d) or ["batch"]
    has_proxy = proxy is not None and len(proxy) > 0
    layout = [[f"{k}:l2", f"{k}:barrier", *(["proxy"] if has_proxy else [])] for k in kinds]
    fig = plt.figure(figsize=(4.0 * len(layout[0]) + 1.9, 3.1 * len(kinds)), layout="constrained")
    ax = fig.subplot_mosaic(layout)
    for kind in kinds:
        dk = d[d["kind"] == kind]
        a_l2, a_b = ax[f"{kind}:l2"], ax[f"{kind}:barrier"]
        _t_scatter(a_l2, dk, "fixed_point_fraction_wm", "l2", palette)
        _t_scatter(a_b, dk, "fixed_point_fraction_wm", "barrier_train_loss", palette)
        a_l2.set_ylabel(f"{kind}: L2 distance after training")
        a_b.set_ylabel("train-loss barrier")
        a_l2.set_title(KIND_TITLES[kind])
        for a in (a_l2, a_b):
            a.set_xlabel("fixed points of weight matching")
            _scale(a, "x", "linear0")
        _scale(a_l2, "y", "log")
        _scale(a_b, "y", "symlog0")
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
        _scale(p, "x", "linear0")
        _scale(p, "y", "linear0")
    _finish(ax.values())
    _legend(fig, "perturbed at")
    return fig


def barrier_vs_fraction(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 11: norm of the perturbation (top) and train-loss barrier (bottom) against
    the fraction of weights perturbed, a column per (kind, σ), a line per t."""
    palette = _palette(palette, df)
    d = children(df)
    cols = [(k, s) for k in perturbed_kinds(d) for s in sorted(d[d["kind"] == k]["sigma"].unique())]
    cols = cols or [("batch", float("nan"))]
    fig, axes = _figure(2, len(cols), sharex=True, sharey="row")
    for j, (kind, s) in enumerate(cols):
        dk = d[(d["kind"] == kind) & (d["sigma"] == s)]
        _t_series(axes[0, j], dk, "fraction", "noise_l2", palette)
        _t_series(axes[1, j], dk, "fraction", "barrier_train_loss", palette)
        axes[0, j].set_title(f"{KIND_TITLES[kind]}, {label_sigma(s)}", fontsize=9)
        axes[1, j].set_xlabel("fraction of weights perturbed")
    axes[0, 0].set_ylabel("L2 norm of the perturbation")
    axes[1, 0].set_ylabel("train-loss barrier")
    for ax in axes[0]:
        _scale(ax, "x", "log")
        _scale(ax, "y", "log")
    for ax in axes[1]:
        _scale(ax, "y", "symlog0")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def runs_side_by_side(frames: dict[str, pd.DataFrame], palette: Palette | None = None) -> Figure:
    """Paper Figures 4 and 12: train-loss barrier against σ, a column per run, a row per kind, a
    line per t (shared linear y from 0)."""
    palette = _palette(palette, *frames.values())
    kids = {name: _kids(df) for name, df in frames.items()}
    kinds = [k for k in PERTURBED_KINDS if any((d["kind"] == k).any() for d in kids.values())]
    kinds = kinds or ["batch"]
    fig, axes = _figure(len(kinds), len(frames), sharey=True, sharex=True)
    for j, (name, d) in enumerate(kids.items()):
        for i, kind in enumerate(kinds):
            ax = axes[i, j]
            dk = d[d["kind"] == kind]
            if dk.empty:
                _empty(ax, f"no {kind} children")
            _t_series(ax, dk, "sigma", "barrier_train_loss", palette)
            ax.set_title(f"{name}: {KIND_TITLES[kind]}", fontsize=9)
            axes[-1, j].set_xlabel("perturbation size σ")
        for i in range(len(kinds)):
            axes[i, 0].set_ylabel("train-loss barrier")
    for ax in axes.flat:
        _scale(ax, "x", "log")
        _scale(ax, "y", "linear0")
    _finish(axes.flat)
    _legend(fig, "perturbed at")
    return fig


def spawn_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 10: train-loss barrier against t (top) for single perturbations (a line per
    σ) and the spawning baseline (dashed, the same in every column); the perturbations' L2 norm
    against t (bottom). A column per perturbed kind."""
    palette = _palette(palette, df)
    d, s = _kids(df), spawned(df)
    kinds: list[str | None] = [*perturbed_kinds(d)] or [None]
    fig, axes = _figure(2, len(kinds), sharex=True, sharey="row")
    sp = seed_stats(s, ["t_frac"], "barrier_train_loss")
    for j, kind in enumerate(kinds):
        top, bottom = axes[0, j], axes[1, j]
        if kind is not None:
            dk = d[d["kind"] == kind]
            _sigma_series(top, dk, "t_frac", "barrier_train_loss", palette)
            _sigma_series(bottom, dk, "t_frac", "noise_l2", palette)
        else:
            _empty(bottom, "no perturbed children")
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
        _scale(ax, "x", "log")
    for ax in axes[0]:
        _scale(ax, "y", "symlog0")
    for ax in axes[1]:
        _scale(ax, "y", "log")
    _finish(axes.flat)
    _legend(fig)
    return fig


def finetune_figure(df: pd.DataFrame, palette: Palette | None = None) -> Figure:
    """Paper Figure 5: train-loss barrier against σ, a column per perturbation time, a row per
    kind, a line per pre-training duration (``pretrain_steps`` column)."""
    palette = _palette(palette, df)
    d = _kids(df)
    kinds = perturbed_kinds(d) or ["batch"]
    ts = sorted(d["t_frac"].unique()) or [0.0]
    fig, axes = _figure(len(kinds), len(ts), sharey=True, sharex=True)
    for i, kind in enumerate(kinds):
        for j, tf in enumerate(ts):
            ax = axes[i, j]
            dk = d[(d["kind"] == kind) & (d["t_frac"] == tf)]
            _series(ax, dk, "sigma", "barrier_train_loss", "pretrain_steps",
                    palette.pretrain_colour, pretrain_labels(df), palette.pretrain_marker)  # fmt: skip
            ax.set_title(f"{KIND_TITLES[kind]} at {label_t(tf)}", fontsize=9)
            axes[-1, j].set_xlabel("perturbation size σ")
        axes[i, 0].set_ylabel("train-loss barrier")
    for ax in axes.flat:
        _scale(ax, "x", "log")
        _scale(ax, "y", "symlog0")
    _finish(axes.flat)
    _legend(fig, "fine-tuned from")
    return fig


# ---- what the report shows ----------------------------------------------------------------
@dataclass(frozen=True)
class FigureSpec:
    file: str
    title: str
    caption: str


MEAN = (
    "Points are means over seeds (of each seed's mean over directions), error bars the standard "
    "error over seeds"
)
FULL = "children that perturb the largest fraction of weights only"
SYMLOG0 = "symmetric-log y axis from 0, linear below the decade of the smallest non-zero value"
LOGX = "log x axis (symmetric-log from 0 when the values include 0)"
LOGY = "log y axis (symmetric-log from 0 if a value is 0)"

FIGURES = [
    FigureSpec("barrier_vs_sigma.png", "Barrier against perturbation size (Figure 2)",
               "Train-loss barrier after training against σ (log x axis), a panel per "
               f"perturbation kind, a line per perturbation time t; linear y axis from 0. {MEAN}; "
               f"{FULL}."),
    FigureSpec("barrier_vs_sigma_log.png", "The same, symmetric-log y (Figure 27)",
               f"As Figure 2, on a {SYMLOG0}: small barriers and exact zeros stay visible."),
    FigureSpec("barrier_wm_vs_sigma.png", "After weight matching (Figure 2, middle)",
               "Train-loss barrier between the original and the child permuted by weight "
               "matching, against σ (log x axis), a panel per kind, a line per t; "
               f"{SYMLOG0}. {MEAN}; {FULL}."),
    FigureSpec("barrier_vs_t.png", "Barrier against perturbation time (workshop Figures 1, 5, 9)",
               "Train-loss barrier (top, nats) and test-error barrier (bottom, in percent of the "
               f"test examples, as in the workshop paper) against t/T ({LOGX}), a column per kind, a line per σ; {SYMLOG0}. "
               f"{MEAN}; {FULL}."),
    FigureSpec("cka.png", "Representations (Figure 3)",
               "A row per kind. Left: angular CKA distance against σ (log x axis, linear y axis "
               f"from 0), a line per t; {MEAN.lower()}. Middle: train-loss barrier ({SYMLOG0}) "
               "and right: test accuracy of the logit-averaged pair (dotted: the original alone, "
               "mean) against CKA (linear x axis from 0); one point per child and seed, coloured "
               f"by t. {FULL}."),
    FigureSpec("trajectories.png", "Divergence over training (Figure 6)",
               f"Train-loss barrier (top; {SYMLOG0}) and L2 distance to the original (bottom; "
               f"{LOGY}) at log-spaced training steps from t on ({LOGX}), a column per perturbed "
               "kind and one for the spawned children (σ = 0, independent batches from t), a "
               "line per t. Each line averages over all σ (and directions) within a seed, then "
               f"over seeds, error bars the s.e. over seeds; {FULL}. The original and the "
               "σ = 0 control are not shown."),
    FigureSpec("l2_from_init.png", "Distance from initialisation (workshop Figure 3)",
               "L2 distance from θ0 over training (linear y axis from 0; training steps on a "
               f"{LOGX}) for the original (left, mean over seeds) and, a panel per kind, its "
               f"children perturbed at the earliest t, a line per σ. {MEAN}; {FULL}."),
    FigureSpec("barrier_vs_l2.png", "Barrier against L2 (Figure 7)",
               f"Train-loss barrier ({SYMLOG0}) against L2 distance after training ({LOGX}), a "
               f"panel per kind; one point per child and seed, coloured by t. {FULL}."),
    FigureSpec("fixed_points.png", "Permutations (Figure 16, workshop Figures 4, 8)",
               "A row per kind: fixed points of the weight-matching permutation (linear x axis "
               f"from 0) against L2 ({LOGY}) and against the train-loss barrier ({SYMLOG0}), one "
               "point per child and seed, coloured by t; right: a random permutation with a "
               "given fraction of fixed points applied to the original, L2 and barrier (colour) "
               "to the unpermuted network, mean over seeds (linear axes from 0)."),
    FigureSpec("barrier_vs_fraction.png", "Fraction of perturbed weights (Figure 11)",
               f"L2 norm of the perturbation (top; {LOGY}) and train-loss barrier (bottom; "
               f"{SYMLOG0}) against the fraction of weights perturbed (log x axis), a column per "
               f"kind and σ, a line per t. {MEAN}."),
    FigureSpec("spawn.png", "Single perturbations vs the spawning baseline (Figure 10)",
               "Top: train-loss barrier against t/T for single perturbations (a line per σ) and "
               "for children trained on independent batches from t (dashed, the same in every "
               f"column); {SYMLOG0}. Bottom: the perturbations' L2 norm ({LOGY}). A column per "
               f"perturbed kind; t/T on a {LOGX}. {MEAN}; {FULL}."),
]  # fmt: skip

PERFORMANCE = FigureSpec(
    "performance.png", "Barriers against final performance (Figure 8)",
    "Train-loss barrier ({}) against the perturbed network's test accuracy at T (left, linear) "
    "and its train cross-entropy (right, {}), a row per kind; one point per child and seed, "
    "coloured by t. {}.".format(SYMLOG0, LOGX.replace("x axis", "axis"), FULL),
)  # fmt: skip
SETTINGS = FigureSpec(
    "settings_compared.png", "Settings compared: L2, CKA and ensembles (Figures 7, 14, 15)",
    "Each run a colour, its main perturbation kind: train-loss barrier against L2 after "
    f"training (left; L2 on a log axis), against angular CKA (middle), and the ensemble's test "
    f"accuracy against CKA (right); {SYMLOG0} for barriers; one point per child and seed. {FULL}.",
)  # fmt: skip
STABILITY = FigureSpec(
    "stability_map.png", "The stability map",
    "The (t, σ) plane, a panel per kind: each measured (t, σ) is a square coloured by its mean "
    "train-loss barrier over seeds (log colour scale); σ*(t), the smallest σ whose barrier "
    f"reaches ε ({STABILITY_EPS} for a grid, between its grid points; the search's ε and bracket "
    "for butterfly threshold), for each seed (dashes) and their geometric mean (line). Log σ "
    f"axis, t/T on a {LOGX}. {FULL}.",
)  # fmt: skip
SIGMA_STAR_COMPARED = FigureSpec(
    "sigma_star_compared.png", "The edge of stability of each run (Figure 4's question)",
    "σ*(t) of every run on one axis per kind (geometric mean over seeds; log σ axis, t/T on a "
    f"{LOGX}): a higher curve is a more stable recipe. Runs without a crossing at some t leave "
    "that t out.",
)  # fmt: skip
LINEARISED = FigureSpec(
    "linearised.png", "The linearised prediction against training (Figure 6, Appendix B.4)",
    "L2 distance to the original over training for the children perturbed at the earliest t "
    "(solid, mean over seeds), and the linearised dynamical system's prediction "
    "‖σε‖·exp(λ(s − t)) with λ the top Lyapunov exponent of the training map from t to T "
    f"(dashed), a line per σ, a panel per kind. {LOGY}; training steps on a {LOGX}.",
)  # fmt: skip
TRAINING = FigureSpec(
    "training.png", "How the recipe trained",
    "The original network of the population perturbed earliest, from its t to T: train loss on "
    "the whole training set (solid), the mean minibatch loss between points (dashed) and test "
    f"loss (dotted), {LOGY}; right, test accuracy (linear from 0). Training steps on a {LOGX}. "
    "Means over seeds.",
)  # fmt: skip
FINETUNE = FigureSpec(
    "finetune.png", "Fine-tuning stability (Figure 5)",
    "Train-loss barrier against σ (log x axis; " + SYMLOG0 + "), a column per perturbation time "
    "t, a row per kind, a line per pre-training checkpoint the fine-tuning started from (step 0: "
    "a random initialisation, or a pre-trained model as loaded). " + MEAN + "; " + FULL + ".",
)  # fmt: skip
RUNS_COMPARED = FigureSpec(
    "runs_compared.png", "Settings compared (Figures 4, 12)",
    "Train-loss barrier against σ (log x axis; linear y axis from 0, shared by every panel), a "
    "column per run, a row per kind, a line per t (the same colours in every run). " + MEAN + "; "
    + FULL + ".",
)  # fmt: skip


def run_figures(
    df: pd.DataFrame,
    traj: pd.DataFrame,
    proxy: pd.DataFrame,
    palette: Palette | None = None,
    thresholds: pd.DataFrame | None = None,
) -> list[tuple[FigureSpec, Figure]]:
    """Every figure the data supports, in the report's order, as open figures."""
    palette = _palette(palette, df)
    spec = {f.file: f for f in [*FIGURES, STABILITY, LINEARISED, PERFORMANCE]}
    kids = _kids(df)
    made: list[tuple[FigureSpec, Figure]] = []

    def add(name: str, build: Callable[[], Figure]) -> None:
        made.append((spec[name], build()))

    if kids["barrier_train_loss"].notna().any() and has_stability_map(df, thresholds):
        add("stability_map.png", lambda: stability_map(df, thresholds, palette))
    if kids["barrier_train_loss"].notna().any():
        add("barrier_vs_sigma.png", lambda: barrier_vs_sigma(df, palette))
        add("barrier_vs_sigma_log.png", lambda: barrier_vs_sigma(df, palette, logy=True))
    if kids["barrier_train_loss_wm"].notna().any():
        add(
            "barrier_wm_vs_sigma.png",
            lambda: barrier_vs_sigma(df, palette, "barrier_train_loss_wm", logy=True),
        )
    if kids["t_frac"].nunique() > 1:
        add("barrier_vs_t.png", lambda: barrier_vs_t(df, palette))
    if kids["cka"].notna().any():
        add("cka.png", lambda: cka_figure(df, palette))
    if len(traj) and len(_traj_children(traj, df)):
        add("trajectories.png", lambda: trajectory_figure(traj, df, palette))
    if len(traj) and "l2_predicted" in traj and traj["l2_predicted"].notna().any():
        add("linearised.png", lambda: linearised_figure(traj, df, palette))
    if len(traj):
        add("l2_from_init.png", lambda: l2_from_init_figure(traj, df, palette))
    if kids["l2"].notna().any():
        add("barrier_vs_l2.png", lambda: barrier_vs_l2(df, palette))
    if kids["test_acc_b"].notna().any() and kids["barrier_train_loss"].notna().any():
        add("performance.png", lambda: performance_figure(df, palette))
    if kids["fixed_point_fraction_wm"].notna().any():
        add("fixed_points.png", lambda: fixed_points_figure(df, proxy, palette))
    if children(df)["fraction"].nunique() > 1:
        add("barrier_vs_fraction.png", lambda: barrier_vs_fraction(df, palette))
    if len(spawned(df)):
        add("spawn.png", lambda: spawn_figure(df, palette))
    return made


def all_figures(
    df: pd.DataFrame,
    traj: pd.DataFrame,
    proxy: pd.DataFrame,
    out: Path,
    palette: Palette | None = None,
    thresholds: pd.DataFrame | None = None,
) -> list[tuple[FigureSpec, Path]]:
    """Every figure the data supports, saved under ``out`` (PNG and PDF), in the report's order."""
    return [
        (spec, save_figure(fig, Path(out) / spec.file))
        for spec, fig in run_figures(df, traj, proxy, palette, thresholds)
    ]
