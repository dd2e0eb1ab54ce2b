"""The figures' style, shared by every figure: one palette for a report, the axis rules, the
legend's place, the caption phrases, and saving (PNG and PDF).

The rules every figure keeps:
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from butterfly.experiment.rows import PERTURBED_KINDS, children
from butterfly.figure_files import save_figure  # noqa: F401  (re-exported)
from butterfly.report.summary import (
    fmt_number,
    fmt_t,
    full_fraction,
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


def key(v: float) -> float:
    return round(float(v), 12)


def ramp(cmap: str, lo: float, hi: float, i: int, n: int) -> Colour:
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
        object.__setattr__(self, "_t", {key(v): i for i, v in enumerate(self.t_fracs)})
        object.__setattr__(self, "_s", {key(v): i for i, v in enumerate(self.sigmas)})

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
            ts |= {key(v) for v in df["t_frac"].dropna()}
            pert = df[df["kind"].isin(PERTURBED_KINDS)]
            ss |= {key(v) for v in pert["sigma"].dropna()}
            if "pretrain_steps" in df.columns:
                ps |= {int(v) for v in df["pretrain_steps"].dropna()}
        return cls(tuple(sorted(ts)), tuple(sorted(ss)), tuple(sorted(ps)))

    def _index(self, table: dict[float, int], v: float, what: str) -> int:
        try:
            return table[key(v)]
        except KeyError:
            raise KeyError(f"{what} = {v} is not in the report's palette") from None

    def t(self, tf: float) -> Colour:
        return ramp("viridis", 0.0, 0.9, self._index(self._t, tf, "t/T"), len(self.t_fracs))

    def t_marker(self, tf: float) -> str:
        return MARKERS[self._index(self._t, tf, "t/T") % len(MARKERS)]

    def sigma(self, s: float) -> Colour:
        return ramp("plasma", 0.0, 0.85, self._index(self._s, s, "sigma"), len(self.sigmas))

    def sigma_marker(self, s: float) -> str:
        return MARKERS[self._index(self._s, s, "sigma") % len(MARKERS)]

    def pretrain_colour(self, steps: int) -> Colour:
        if int(steps) not in self.pretrain:
            raise KeyError(f"pretrain_steps = {steps} is not in the report's palette")
        i = self.pretrain.index(int(steps))
        return ramp("cividis", 0.0, 0.9, i, len(self.pretrain))

    def pretrain_marker(self, steps: int) -> str:
        return MARKERS[self.pretrain.index(int(steps)) % len(MARKERS)]


def label_t(tf: float) -> str:
    return f"t = {fmt_t(tf)}"


def label_sigma(s: float) -> str:
    return f"σ = {fmt_number(float(s))}"


def figure_grid(
    nrows: int, ncols: int, width: float = 4.0, height: float = 3.1, **share: object
) -> tuple[Figure, np.ndarray]:
    fig = plt.figure(figsize=(width * ncols + 1.9, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **share)  # type: ignore[arg-type]
    return fig, axes


def legend(
    fig: Figure, title: str | None = None, extra: Iterable[tuple[object, str]] = ()
) -> None:
    """One legend for the figure, to the right of every axes; each label once, then the
    ``extra`` (handle, label) pairs (e.g. what a line style means)."""
    seen: dict[str, object] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_") and lab not in seen:
                seen[lab] = h
    for h, lab in extra:
        seen.setdefault(lab, h)
    if seen:
        fig.legend(
            list(seen.values()), list(seen), loc="outside right upper", title=title,
            fontsize=8, title_fontsize=8,
        )  # fmt: skip


def plotted(ax: Axes, axis: str) -> np.ndarray:
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


def set_scale(ax: Axes, axis: str, how: str) -> None:
    """Scale ``axis`` from the data it plots. ``log``: log if every value is > 0, else as
    ``symlog0``. ``symlog0``: symmetric-log, linear below the decade of the smallest non-zero
    value (at least 1e-6 of the largest), bottom at 0; linear from 0 without non-zero values.
    ``linear0``: linear from 0. ``linear``: matplotlib's default."""
    v = plotted(ax, axis)
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


def series(
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


def line_key(linestyle: str, label: str) -> tuple[Line2D, str]:
    """A legend entry saying what a line style means (black, no marker)."""
    return Line2D([], [], color="black", ls=linestyle, lw=1.5), label


def hidden(label: str) -> str:
    """A series label the legend leaves out (a second series of the same colour, told apart by
    its line style), still readable from the figure."""
    return "_" + label


def run_colour(i: int, n: int) -> Colour:
    """The colour of the i-th of n runs in a figure pooling runs (tab10, by the runs' order)."""
    return ramp("tab10", 0.0, 0.9, i, max(n, 2))


def run_marker(i: int) -> str:
    return MARKERS[i % len(MARKERS)]


def t_series(ax: Axes, d: pd.DataFrame, x: str, y: str, palette: Palette) -> None:
    series(ax, d, x, y, "t_frac", palette.t, label_t, palette.t_marker)


def sigma_series(ax: Axes, d: pd.DataFrame, x: str, y: str, palette: Palette) -> None:
    series(ax, d, x, y, "sigma", palette.sigma, label_sigma, palette.sigma_marker)


def t_scatter(ax: Axes, d: pd.DataFrame, x: str, y: str, palette: Palette) -> None:
    """Each child a point, coloured and marked by its t."""
    for tf in sorted(d["t_frac"].unique()):
        dt = d[d["t_frac"] == tf].dropna(subset=[x, y])
        if len(dt):
            ax.scatter(
                dt[x], dt[y], color=palette.t(tf), marker=palette.t_marker(tf), s=18,
                label=label_t(tf), clip_on=False,
            )  # fmt: skip


def empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def finish(axes: Iterable[Axes]) -> None:
    for ax in axes:
        ax.grid(True, alpha=0.3)


def kids_of(df: pd.DataFrame) -> pd.DataFrame:
    """Perturbed children (batch, gaussian), the largest perturbed fraction only."""
    return full_fraction(children(df))


def palette_for(palette: Palette | None, *frames: pd.DataFrame) -> Palette:
    return palette if palette is not None else Palette.of(*frames)


BARRIER_LABELS = {
    "barrier_train_loss": "train-loss barrier",
    "barrier_train_loss_wm": "train-loss barrier after weight matching",
    "barrier_test_loss": "test-loss barrier",
    "barrier_train_error": "train-error barrier",
    "barrier_test_error": "test-error barrier",
}


MEAN = (
    "Points are means over seeds (of each seed's mean over directions), error bars the standard "
    "error over seeds"
)


FULL = "children that perturb the largest fraction of weights only"


SYMLOG0 = "symmetric-log y axis from 0, linear below the decade of the smallest non-zero value"


LOGX = "log x axis (symmetric-log from 0 when the values include 0)"


LOGY = "log y axis (symmetric-log from 0 if a value is 0)"


def performance_axes(axes: np.ndarray, row: int, kind: str) -> None:
    """Figure 8's axes for one kind's row: the train-loss barrier (symlog from 0) against
    test accuracy (linear) and train cross-entropy (log)."""
    axes[row, 0].set_ylabel(f"{KIND_TITLES[kind]}:\ntrain-loss barrier")
    for ax in axes[row]:
        set_scale(ax, "y", "symlog0")
    set_scale(axes[row, 0], "x", "linear")
    set_scale(axes[row, 1], "x", "log")
    axes[-1, 0].set_xlabel("test accuracy of the perturbed network")
    axes[-1, 1].set_xlabel("train cross-entropy of the perturbed network")
