"""The report's figures show what they say: what each axis plots equals the aggregate computed
here, independently, from the store with pandas; kinds are never averaged together; log axes
plot only positive values and symmetric-log axes start at 0; legends lie outside the axes; one
colour per t (and per σ) in every figure of a run and of a comparison of runs. Also the page's
opening sentence, number format and config differences, on hand-made tables."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from butterfly.experiment.rows import children, spawned
from butterfly.report import figures as F
from butterfly.report import html as H
from butterfly.report.summary import config_diff, finding, fmt_number
from butterfly.sweep import run_sweep
from butterfly.sweep.store import Store
from conftest import tiny_config

TIMES_A = [0.0, 0.25, 0.5]
TIMES_B = [0.0, 0.5, 0.75]
SIGMAS = [1e-3, 1e-1]
TITLES = {"batch": "batch perturbation", "gaussian": "Gaussian perturbation"}


def _read(run_dir: Path) -> dict[str, pd.DataFrame]:
    with Store(run_dir / "results.db") as s:
        return {"df": s.results(), "traj": s.trajectories(), "proxy": s.permutation_proxy(),
                "training": s.training()}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run A: two seeds, three times, batch/gaussian/spawn, two fractions; run B: one seed,
    other times (0.75 is only in B, 0.25 only in A), batch only, longer warm-up."""
    root = tmp_path_factory.mktemp("figures")
    a, b = root / "A", root / "B"
    run_sweep(
        tiny_config(
            seeds=[0, 1],
            perturb={
                "times": TIMES_A,
                "sigmas": SIGMAS,
                "kinds": ["batch", "gaussian", "spawn"],
                "fractions": [0.1, 1.0],
            },
            eval={"trajectory_points": 4},
        ),
        a,
        quiet=True,
    )
    run_sweep(
        tiny_config(
            recipe={"warmup": 0.2},
            perturb={"times": TIMES_B, "sigmas": SIGMAS, "kinds": ["batch"]},
            eval={"trajectory_points": 3},
        ),
        b,
        quiet=True,
    )
    return {"A": _read(a), "B": _read(b), "dirs": (a, b)}


@pytest.fixture(scope="module")
def palette(runs: dict) -> F.Palette:
    return F.Palette.of(runs["A"]["df"], runs["B"]["df"])


KEEP: set[int] = set()  # the module's shared figures (``all_figs``), closed at its end


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    for n in plt.get_fignums():
        if n not in KEEP:
            plt.close(n)


@pytest.fixture(scope="module")
def all_figs(runs: dict, palette: F.Palette) -> Iterator[list[tuple[str, Figure]]]:
    """Every figure of both runs, the comparison figure and a fine-tuning figure, one palette."""
    limit = plt.rcParams["figure.max_open_warning"]
    plt.rcParams["figure.max_open_warning"] = 0  # about 25 figures stay open for the module
    figs = every_figure(runs, palette)
    KEEP.update(fig.number for _, fig in figs)  # type: ignore[attr-defined]
    yield figs
    for _, fig in figs:
        plt.close(fig)
    KEEP.clear()
    plt.rcParams["figure.max_open_warning"] = limit


# ---- reading a figure back -------------------------------------------------------------------
def grid(fig: Figure) -> dict[tuple[int, int], Axes]:
    """(row, column) -> axes, for the axes laid out on the figure's grid (not colour bars)."""
    out = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if spec is not None and ax.get_label() != "<colorbar>":
            out[(spec.rowspan.start, spec.colspan.start)] = ax
    return out


def errorbars(ax: Axes) -> dict[str, tuple[np.ndarray, ...]]:
    """label -> (x, y, lower end, upper end of the error bar) of each error-bar series."""
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            x, y = (np.asarray(v, dtype=float) for v in c.lines[0].get_data())
            segs = c.lines[2][0].get_segments() if c.lines[2] else []
            lo = np.array([s[0][1] for s in segs])
            hi = np.array([s[1][1] for s in segs])
            out[c.get_label()] = (x, y, lo, hi)
    return out


def scatters(ax: Axes) -> dict[str, np.ndarray]:
    return {
        c.get_label(): np.asarray(np.ma.getdata(c.get_offsets()), dtype=float)
        for c in ax.collections
        if isinstance(c, PathCollection) and not c.get_label().startswith("_")
    }


def labelled_colours(fig: Figure) -> list[tuple[str, tuple]]:
    """(label, RGBA) of every labelled series in every axes of ``fig``."""
    out = []
    for ax in fig.axes:
        for c in ax.containers:
            if isinstance(c, ErrorbarContainer):
                out.append((c.get_label(), to_rgba(c.lines[0].get_color())))
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                out.append((line.get_label(), to_rgba(line.get_color())))
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and not coll.get_label().startswith("_"):
                out.append((coll.get_label(), tuple(coll.get_facecolor()[0])))
    return out


def sorted_xy(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    s = s.sort_index()
    return s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)


def check_series(
    ax: Axes, label: str, expected: pd.Series, sem: pd.Series | None = None, rtol: float = 1e-9
) -> None:
    """The error-bar series ``label`` in ``ax`` plots ``expected`` (index = x); its bars are
    mean + s.e. up and max(mean - s.e., 0) down."""
    series = errorbars(ax)
    assert label in series, (label, list(series))
    x, y, lo, hi = series[label]
    ex, ey = sorted_xy(expected)
    np.testing.assert_allclose(x, ex, rtol=rtol)
    np.testing.assert_allclose(y, ey, rtol=rtol, atol=1e-15)
    if sem is not None:
        _, es = sorted_xy(sem.reindex(expected.index))
        es = np.nan_to_num(es)
        np.testing.assert_allclose(hi, ey + es, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(lo, np.maximum(ey - es, 0.0), rtol=1e-7, atol=1e-12)


def full(df: pd.DataFrame) -> pd.DataFrame:
    """The perturbed children (not control, spawn or diverged) of the full fraction."""
    k = children(df)
    return k[k["fraction"] == 1.0]


# ---- figure content --------------------------------------------------------------------------
@pytest.mark.parametrize("logy", [False, True])
def test_figure2_barrier_vs_sigma_is_the_seed_mean_per_kind_and_t(
    runs: dict, palette: F.Palette, logy: bool
) -> None:
    df = runs["A"]["df"]
    fig = F.barrier_vs_sigma(df, palette, logy=logy)
    axes = grid(fig)
    assert len(axes) == 2  # batch and gaussian; spawn (sigma 0) is not on a sigma axis
    for j, kind in enumerate(["batch", "gaussian"]):
        ax = axes[(0, j)]
        assert ax.get_title() == TITLES[kind]
        assert ax.get_xscale() == "log"
        assert ax.get_yscale() == ("symlog" if logy else "linear")
        assert ax.get_ylim()[0] == 0
        assert len(errorbars(ax)) == len(TIMES_A)
        for tf in TIMES_A:
            d = full(df)
            g = d[(d["kind"] == kind) & (d["t_frac"] == tf)].groupby("sigma")["barrier_train_loss"]
            assert g.count().eq(2).all()  # two seeds: s.e. error bars
            check_series(ax, F.label_t(tf), g.mean(), g.sem())
    assert not [lab for lab, _ in labelled_colours(fig) if "spawn" in lab]


def test_workshop_figures_1_5_9_11_draw_train_and_test_loss_and_error_barriers(
    runs: dict, palette: F.Palette
) -> None:
    """Workshop Figures 1 and 5 (loss) and 9 and 11 (error, in percent): the training data
    solid, the test data dashed, a column per kind (batch: 1, 9; Gaussian: 5, 11)."""
    from butterfly.report.figures.barriers import on_test_data

    df = runs["A"]["df"]
    fig = F.barrier_vs_t(df, palette)
    axes = grid(fig)
    assert set(axes) == {(i, j) for i in range(2) for j in range(2)}
    assert "nats" in axes[(0, 0)].get_ylabel() and "%" in axes[(1, 0)].get_ylabel()
    d = full(df)
    rows = [(("barrier_train_loss", "barrier_test_loss"), 1.0),
            (("barrier_train_error", "barrier_test_error"), 100.0)]  # fmt: skip
    for j, kind in enumerate(["batch", "gaussian"]):
        assert axes[(0, j)].get_title() == TITLES[kind]
        for i, (metrics, scale) in enumerate(rows):
            ax = axes[(i, j)]
            assert len(errorbars(ax)) == 2 * len(SIGMAS)  # a train and a test line per sigma
            for s in SIGMAS:
                dk = d[(d["kind"] == kind) & (d["sigma"] == s)]
                for metric, label, style in ((metrics[0], F.label_sigma(s), "-"),
                                             (metrics[1], on_test_data(F.label_sigma(s)), "--")):  # fmt: skip
                    assert dk[metric].notna().all()
                    g = dk.groupby("t_frac")[metric]
                    check_series(ax, label, scale * g.mean(), scale * g.sem())
                    line = next(c.lines[0] for c in ax.containers
                                if isinstance(c, ErrorbarContainer) and c.get_label() == label)  # fmt: skip
                    assert line.get_linestyle() == style
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*(F.label_sigma(s) for s in SIGMAS), "training data", "test data"]


def test_figure3_cka_separates_kinds_and_has_a_legend(runs: dict, palette: F.Palette) -> None:
    df = runs["A"]["df"]
    fig = F.cka_figure(df, palette)
    axes = grid(fig)
    assert len(fig.legends) == 1
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [F.label_t(tf) for tf in TIMES_A] == legend_labels[: len(TIMES_A)]
    for i, kind in enumerate(["batch", "gaussian"]):
        left, mid, right = axes[(i, 0)], axes[(i, 1)], axes[(i, 2)]
        assert left.get_title() == TITLES[kind]
        d = full(df)
        d = d[d["kind"] == kind]
        for tf in TIMES_A:
            dt = d[d["t_frac"] == tf]
            g = dt.groupby("sigma")["cka"]
            check_series(left, F.label_t(tf), g.mean(), g.sem())
            for ax, y in ((mid, "barrier_train_loss"), (right, "ensemble_test_acc")):
                pts = scatters(ax)[F.label_t(tf)]
                want = dt[["cka", y]].to_numpy(dtype=float)
                np.testing.assert_allclose(
                    pts[np.lexsort(pts.T[::-1])], want[np.lexsort(want.T[::-1])]
                )
        ref = [ln for ln in right.lines if ln.get_gid() == F.REF]
        assert len(ref) == 1 and ref[0].get_ydata()[0] == pytest.approx(d["test_acc_a"].mean())


def _traj_expected(runs: dict) -> pd.DataFrame:
    df, traj = runs["A"]["df"], runs["A"]["traj"]
    info = df[["seed", "t", "member", "t_frac", "fraction", "diverged"]]
    d = traj.merge(info, on=["seed", "t", "member"])
    return d[(d["diverged"] == 0) & (d["fraction"] == 1.0)]


def test_figure6_trajectories_average_over_sigma_per_kind_and_t(
    runs: dict, palette: F.Palette
) -> None:
    fig = F.trajectory_figure(runs["A"]["traj"], runs["A"]["df"], palette)
    axes = grid(fig)
    kinds = ["batch", "gaussian", "spawn"]
    assert set(axes) == {(i, j) for i in range(2) for j in range(3)}
    d = _traj_expected(runs)
    assert d.loc[d["kind"].isin(kinds), "barrier_train_loss"].notna().all()
    for j, kind in enumerate(kinds):
        assert kind.lower() in axes[(0, j)].get_title().lower()
        for i, metric in enumerate(["barrier_train_loss", "l2_to_original"]):
            ax = axes[(i, j)]
            assert set(errorbars(ax)) == {F.label_t(tf) for tf in TIMES_A}  # no original/control
            for tf in TIMES_A:
                dk = d[(d["kind"] == kind) & (d["t_frac"] == tf)]
                if kind != "spawn":
                    assert dk["sigma"].nunique() == len(SIGMAS)  # every sigma averaged in
                per_seed = dk.groupby(["step", "seed"])[metric].mean()
                g = per_seed.groupby(level="step")
                check_series(ax, F.label_t(tf), g.mean(), g.sem())
        assert axes[(0, j)].get_yscale() in ("symlog", "linear")
        assert axes[(0, j)].get_ylim()[0] == 0


def test_workshop_figure3_l2_from_init_separates_kinds(runs: dict, palette: F.Palette) -> None:
    fig = F.l2_from_init_figure(runs["A"]["traj"], runs["A"]["df"], palette)
    axes = grid(fig)
    d = _traj_expected(runs)
    d = d[d["t"] == 0]
    titles = [axes[(0, j)].get_title() for j in range(len(axes))]
    assert titles[0] == "original" and TITLES["batch"] in titles[1] and "Gaussian" in titles[2]
    for j, kind in ((1, "batch"), (2, "gaussian")):
        for s in SIGMAS:
            dk = d[(d["kind"] == kind) & (d["sigma"] == s)]
            g = dk.groupby("step")["l2_from_init"]
            check_series(axes[(0, j)], F.label_sigma(s), g.mean(), g.sem())


def test_figure7_barrier_vs_l2_has_a_panel_per_kind(runs: dict, palette: F.Palette) -> None:
    df = runs["A"]["df"]
    axes = grid(F.barrier_vs_l2(df, palette))
    for j, kind in enumerate(["batch", "gaussian"]):
        ax = axes[(0, j)]
        assert ax.get_title() == TITLES[kind]
        assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] == 0
        for tf in TIMES_A:
            d = full(df)
            want = d[(d["kind"] == kind) & (d["t_frac"] == tf)][["l2", "barrier_train_loss"]]
            pts = scatters(ax)[F.label_t(tf)]
            np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(want["l2"]))
            np.testing.assert_allclose(np.sort(pts[:, 1]), np.sort(want["barrier_train_loss"]))


def test_figure10_spawn_line_and_figure11_fractions(runs: dict, palette: F.Palette) -> None:
    df = runs["A"]["df"]
    axes = grid(F.spawn_figure(df, palette))
    g = spawned(df).groupby("t_frac")["barrier_train_loss"]
    for j in range(2):
        check_series(axes[(0, j)], "spawned (Frankle et al.)", g.mean(), g.sem())
    axes = grid(F.barrier_vs_fraction(df, palette))
    cols = [(k, s) for k in ("batch", "gaussian") for s in SIGMAS]
    assert len(axes) == 2 * len(cols)
    for j, (kind, s) in enumerate(cols):
        assert TITLES[kind] in axes[(0, j)].get_title()
        d = children(df)
        d = d[(d["kind"] == kind) & (d["sigma"] == s)]
        for i, metric in enumerate(["noise_l2", "barrier_train_loss"]):
            for tf in TIMES_A:
                gg = d[d["t_frac"] == tf].groupby("fraction")[metric]
                check_series(axes[(i, j)], F.label_t(tf), gg.mean(), gg.sem())


def test_figure5_finetuning_lines_per_pretraining(runs: dict) -> None:
    a = runs["A"]["df"]
    scaled = a.assign(barrier_train_loss=a["barrier_train_loss"] * 3)
    df = pd.concat([a.assign(pretrain_steps=0), scaled.assign(pretrain_steps=40)])
    axes = grid(F.finetune_figure(df, F.Palette.of(df)))
    for i, kind in enumerate(["batch", "gaussian"]):
        for j, tf in enumerate(TIMES_A):
            for p, label in ((0, "random init"), (40, "pre-trained 40 steps")):
                d = full(df)
                d = d[(d["kind"] == kind) & (d["t_frac"] == tf) & (d["pretrain_steps"] == p)]
                g = d.groupby("sigma")["barrier_train_loss"]
                check_series(axes[(i, j)], label, g.mean(), g.sem())


def test_runs_compared_figure_is_per_run_and_kind(runs: dict, palette: F.Palette) -> None:
    frames = {"A": runs["A"]["df"], "B": runs["B"]["df"]}
    axes = grid(F.runs_side_by_side(frames, palette))
    assert set(axes) == {(i, j) for i in range(2) for j in range(2)}
    for j, (name, df) in enumerate(frames.items()):
        for i, kind in enumerate(["batch", "gaussian"]):
            d = full(df)
            d = d[d["kind"] == kind]
            ax = axes[(i, j)]
            assert ax.get_title() == f"{name}: {TITLES[kind]}"
            assert len(errorbars(ax)) == d["t_frac"].nunique()
            for tf in sorted(d["t_frac"].unique()):
                g = d[d["t_frac"] == tf].groupby("sigma")["barrier_train_loss"]
                check_series(ax, F.label_t(tf), g.mean(), g.sem())


@pytest.mark.parametrize("logy", [False, True])
def test_figure2_middle_after_weight_matching_linear_and_figure27_symlog(
    runs: dict, palette: F.Palette, logy: bool
) -> None:
    df = runs["A"]["df"]
    spec = F.SPECS["barrier_wm_vs_sigma_log.png" if logy else "barrier_wm_vs_sigma.png"]
    assert ("Figure 27, middle" if logy else "Figure 2, middle") in spec.title
    data = F.RunData(df, runs["A"]["traj"], runs["A"]["proxy"])
    assert spec.when(data)
    axes = grid(spec.build(data, palette))
    d = full(df)
    for j, kind in enumerate(["batch", "gaussian"]):
        ax = axes[(0, j)]
        assert ax.get_title() == TITLES[kind] and "weight matching" in axes[(0, 0)].get_ylabel()
        assert ax.get_yscale() == ("symlog" if logy else "linear") and ax.get_ylim()[0] == 0
        for tf in TIMES_A:
            g = d[(d["kind"] == kind) & (d["t_frac"] == tf)].groupby("sigma")
            check_series(ax, F.label_t(tf), g["barrier_train_loss_wm"].mean(),
                         g["barrier_train_loss_wm"].sem())  # fmt: skip


def left_tick(ax: Axes) -> tuple[float, str]:
    """The leftmost x tick (its position and label) of ``ax``."""
    ticks = sorted(zip(ax.get_xticks(), [t.get_text() for t in ax.get_xticklabels()],
                       strict=True))  # fmt: skip
    return float(ticks[0][0]), ticks[0][1]


def test_figure1_right_puts_the_fewest_weights_perturbed_left_of_the_sigma_axis(
    runs: dict, palette: F.Palette
) -> None:
    """Run A perturbs fractions 0.1 and 1: each t's line is the full-fraction seed means over σ,
    and, a decade left of the smallest σ, the 0.1 children at their smallest σ."""
    df = runs["A"]["df"]
    spec = F.SPECS["barrier_vs_sigma_one_weight.png"]
    assert spec.when(F.RunData(df)) and not spec.when(F.RunData(runs["B"]["df"]))
    axes = grid(F.barrier_vs_sigma_one_weight(df, palette))
    kids = children(df)
    few = kids[(kids["fraction"] == 0.1) & (kids["sigma"] == min(SIGMAS))]
    n = few["n_perturbed"].unique()
    assert len(n) == 1 and n[0] > 1
    for j, kind in enumerate(["batch", "gaussian"]):
        ax = axes[(0, j)]
        assert ax.get_title() == TITLES[kind] and ax.get_xscale() == "log"
        assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] == 0
        x0, text = left_tick(ax)
        assert x0 == pytest.approx(min(SIGMAS) / 10)
        assert text == f"{n[0]} weights,\nσ = {fmt_number(min(SIGMAS))}"
        for tf in TIMES_A:
            d = full(df)
            g = d[(d["kind"] == kind) & (d["t_frac"] == tf)].groupby("sigma")["barrier_train_loss"]
            f = few[(few["kind"] == kind) & (few["t_frac"] == tf)]["barrier_train_loss"]
            mean = pd.concat([g.mean(), pd.Series([f.mean()], index=[x0])])
            sem = pd.concat([g.sem(), pd.Series([f.sem()], index=[x0])])
            check_series(ax, F.label_t(tf), mean, sem)


def test_figure1_right_labels_single_weight_children_and_takes_their_smallest_sigma() -> None:
    one = {"fraction": 1e-4, "n_perturbed": 1}
    df = table([
        ("batch", 0.0, 1e-4, 0.5, 0, {"n_perturbed": 100}), ("batch", 0.0, 1e-2, 0.9, 0, {"n_perturbed": 100}),
        ("batch", 0.5, 1e-4, 0.0, 0, {"n_perturbed": 100}), ("batch", 0.5, 1e-2, 0.1, 0, {"n_perturbed": 100}),
        ("batch", 0.0, 1e-4, 0.2, 0, one), ("batch", 0.0, 1e-4, 0.4, 1, one),
        ("batch", 0.0, 1e-2, 7.0, 0, one), ("batch", 0.5, 1e-4, 0.0, 0, one),
        ("batch", 0.0, 1e-4, 5.0, 0, {**one, "diverged": 1}),
        ("batch", 0.0, 1e-4, 0.6, 1, {"n_perturbed": 100}),
    ])  # fmt: skip
    axes = grid(F.barrier_vs_sigma_one_weight(df, F.Palette.of(df)))
    assert set(axes) == {(0, 0)}  # one kind
    ax = axes[(0, 0)]
    x0, text = left_tick(ax)
    assert x0 == pytest.approx(1e-5) and text == "1 weight,\nσ = 1e-4"
    # t = 0: the single-weight children at sigma 1e-4 (seeds 0, 1), then the full-fraction line
    x, y, _, _ = errorbars(ax)[F.label_t(0.0)]
    np.testing.assert_allclose(x, [1e-5, 1e-4, 1e-2])
    np.testing.assert_allclose(y, [0.3, 0.55, 0.9])
    x, y, _, _ = errorbars(ax)[F.label_t(0.5)]
    np.testing.assert_allclose(x, [1e-5, 1e-4, 1e-2])
    np.testing.assert_allclose(y, [0.0, 0.0, 0.1])


@pytest.mark.parametrize("logy", [False, True])
def test_figure4_and_figure28_compare_settings_on_a_linear_and_a_symlog_axis(
    runs: dict, palette: F.Palette, logy: bool
) -> None:
    frames = {"A": runs["A"]["df"], "B": runs["B"]["df"]}
    spec = F.SPECS["runs_compared_log.png" if logy else "runs_compared.png"]
    assert spec.scope == "compare" and ("Figure 28" in spec.title) == logy
    data = {n: F.RunData(df) for n, df in frames.items()}
    assert spec.when(data) and not spec.when({"A": data["A"]})
    axes = grid(spec.build(data, palette))
    assert set(axes) == {(i, j) for i in range(2) for j in range(2)}
    for j, (name, df) in enumerate(frames.items()):
        for i, kind in enumerate(["batch", "gaussian"]):
            ax = axes[(i, j)]
            assert ax.get_title() == f"{name}: {TITLES[kind]}"
            assert ax.get_yscale() == ("symlog" if logy else "linear") and ax.get_ylim()[0] == 0
            d = full(df)
            d = d[d["kind"] == kind]
            assert len(errorbars(ax)) == d["t_frac"].nunique()
            for tf in sorted(d["t_frac"].unique()):
                g = d[d["t_frac"] == tf].groupby("sigma")["barrier_train_loss"]
                check_series(ax, F.label_t(tf), g.mean(), g.sem())
    ylims = {axes[k].get_ylim() for k in axes}
    assert len(ylims) == 1  # one y axis for every run


def test_figure8_pooled_over_the_settings_colours_each_run(runs: dict) -> None:
    frames = {"A": runs["A"]["df"], "B": runs["B"]["df"]}
    spec = F.SPECS["performance_compared.png"]
    assert spec.scope == "compare" and "Figure 8" in spec.title
    fig = spec.build({n: F.RunData(df) for n, df in frames.items()}, F.Palette.of(*frames.values()))
    axes = grid(fig)
    assert set(axes) == {(i, j) for i in range(2) for j in range(2)}
    for i, kind in enumerate(["batch", "gaussian"]):
        assert kind in axes[(i, 0)].get_ylabel().lower()
        assert axes[(i, 0)].get_yscale() == "symlog" and axes[(i, 0)].get_ylim()[0] == 0
        for j, col in enumerate(["test_acc_b", "train_loss_b"]):
            pts = scatters(axes[(i, j)])
            for name, df in frames.items():
                d = full(df)
                want = d[d["kind"] == kind][[col, "barrier_train_loss"]].to_numpy(dtype=float)
                if not len(want):  # B perturbs batch only
                    assert name not in pts
                    continue
                got = pts[name]
                np.testing.assert_allclose(got[np.lexsort(got.T[::-1])],
                                           want[np.lexsort(want.T[::-1])])  # fmt: skip
    colours = dict(labelled_colours(fig))
    assert colours["A"] != colours["B"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["A", "B"]


# ---- rules every figure keeps --------------------------------------------------------------
def every_figure(runs: dict, palette: F.Palette) -> list[tuple[str, Figure]]:
    out = []
    for name in ("A", "B"):
        r = runs[name]
        out += [
            (f"{name}/{s.file}", f)
            for s, f in F.run_figures(r["df"], r["traj"], r["proxy"], palette)
        ]
    both = {"A": runs["A"]["df"], "B": runs["B"]["df"]}
    out.append(("runs_compared", F.runs_side_by_side(both, palette)))
    out.append(("runs_compared_log", F.runs_side_by_side(both, palette, logy=True)))
    out.append(("performance_compared", F.performance_compared(both)))
    a = runs["A"]["df"]
    with_pretrain = F.Palette(palette.t_fracs, palette.sigmas, (0,))
    out.append(("finetune", F.finetune_figure(a.assign(pretrain_steps=0), with_pretrain)))
    out.append(("settings", F.settings_figure({"A": a, "B": runs["B"]["df"]})))
    return out


def plotted(ax: Axes, axis: int) -> np.ndarray:
    vals = [np.asarray(c.lines[0].get_data()[axis], dtype=float) for c in ax.containers
            if isinstance(c, ErrorbarContainer)]  # fmt: skip
    vals += [np.asarray(ln.get_data()[axis], dtype=float) for ln in ax.lines
             if not (axis == 0 and ln.get_gid() == F.REF)]  # fmt: skip
    vals += [np.asarray(np.ma.getdata(c.get_offsets()), dtype=float)[:, axis]
             for c in ax.collections if isinstance(c, PathCollection)]  # fmt: skip
    v = np.concatenate([x.ravel() for x in vals]) if vals else np.array([])
    return v[np.isfinite(v)]


def test_log_axes_plot_only_positive_values_and_symlog_axes_start_at_zero(
    all_figs: list[tuple[str, Figure]],
) -> None:
    figs = all_figs
    assert len(figs) >= 15
    seen = set()
    for name, fig in figs:
        for ax in grid(fig).values():
            for axis, scale, lim in ((0, ax.get_xscale(), ax.get_xlim()),
                                     (1, ax.get_yscale(), ax.get_ylim())):  # fmt: skip
                seen.add(scale)
                v = plotted(ax, axis)
                if scale == "log":
                    assert (v > 0).all(), (name, ax.get_title(), axis)
                if scale == "symlog":
                    assert lim[0] == 0, (name, ax.get_title(), axis, lim)
                    assert (v >= 0).all()
            if "barrier" in ax.get_ylabel():  # barriers are >= 0 and often exactly 0
                assert ax.get_yscale() != "log", (name, ax.get_ylabel())
                assert ax.get_ylim()[0] == 0, (name, ax.get_ylabel())
    assert {"log", "symlog", "linear"} <= seen


def test_every_legend_lies_outside_every_axes(all_figs: list[tuple[str, Figure]]) -> None:
    for name, fig in all_figs:
        fig.canvas.draw()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        labelled = {lab for lab, _ in labelled_colours(fig)}
        if len(labelled) > 1:
            assert legends, name
        assert not [ax for ax in fig.axes if ax.get_legend()], f"{name}: a legend inside axes"
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for leg in legends:
            box = leg.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_title())
            assert fig.bbox.contains(box.x1 - 1, box.y0 + 1), f"{name}: legend cut off"


def test_the_same_t_has_the_same_colour_in_every_figure_and_run(
    all_figs: list[tuple[str, Figure]], palette: F.Palette
) -> None:
    colours: dict[str, set[tuple]] = {}
    for _, fig in all_figs:
        for label, rgba in labelled_colours(fig):
            colours.setdefault(label, set()).add(tuple(np.round(rgba, 6)))
    for tf in sorted(set(TIMES_A) | set(TIMES_B)):
        assert colours[F.label_t(tf)] == {tuple(np.round(palette.t(tf), 6))}, tf
    for s in SIGMAS:
        assert colours[F.label_sigma(s)] == {tuple(np.round(palette.sigma(s), 6))}
    # one colour per label everywhere, and distinct t get distinct colours
    assert all(len(v) == 1 for v in colours.values()), {
        k: v for k, v in colours.items() if len(v) > 1
    }
    ts = [next(iter(colours[F.label_t(tf)])) for tf in sorted(set(TIMES_A) | set(TIMES_B))]
    assert len(set(ts)) == len(ts)


def test_the_comparison_report_uses_one_palette_for_every_figure(
    runs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[Figure] = []
    import butterfly.report.figures.registry as R

    original = R.save_figures

    def spy(figs: Iterable[tuple[Figure, Path]]) -> list[Path]:
        figs = list(figs)
        saved.extend(fig for fig, _ in figs)
        return original(figs)

    monkeypatch.setattr(R, "save_figures", spy)
    H.build_report(list(runs["dirs"]), tmp_path / "both.html")
    colours: dict[str, set[tuple]] = {}
    for fig in saved:
        for label, rgba in labelled_colours(fig):
            colours.setdefault(label, set()).add(tuple(np.round(rgba, 6)))
    assert len(saved) > 15
    t_labels = {F.label_t(tf) for tf in set(TIMES_A) | set(TIMES_B)}
    assert t_labels <= set(colours)
    assert all(len(colours[lab]) == 1 for lab in t_labels)


# ---- the page's words and numbers, on hand-made tables ---------------------------------------
def table(rows: list[tuple]) -> pd.DataFrame:
    """Results rows from (kind, t_frac, sigma, barrier[, seed[, extra columns]])."""
    out = []
    for r in rows:
        kind, tf, s, b = r[:4]
        seed = r[4] if len(r) > 4 else 0
        extra = r[5] if len(r) > 5 else {}
        out.append({"seed": seed, "kind": kind, "t": int(tf * 100), "t_frac": tf, "sigma": s,
                    "fraction": 1.0, "control": int(kind == "control"), "diverged": 0,
                    "barrier_train_loss": b, **extra})  # fmt: skip
    return pd.DataFrame(out)


def test_finding_cites_the_earliest_t_and_where_the_barrier_becomes_small() -> None:
    df = table([
        ("batch", 0.0, 1e-4, 0.04), ("batch", 0.0, 1e-4, 0.046, 1), ("batch", 0.0, 1e-2, 0.5),
        ("batch", 0.1, 1e-4, 0.001), ("batch", 0.1, 1e-2, 0.3),
        ("batch", 0.5, 1e-4, 2e-8), ("batch", 0.5, 1e-2, 0.01),
        ("gaussian", 0.0, 1e-4, 9.0), ("control", 0.0, 0.0, 0.0),
        ("batch", 0.5, 1e-4, 5.0, 0, {"diverged": 1}),
    ])  # fmt: skip
    assert finding(df) == (
        "Perturbing at t = 0 by σ = 1e-4 (batch perturbation, mean over 2 seeds) gives a mean "
        "train-loss barrier of 0.043; from t = 0.1T on it is at most 0.001."
    )
    late_zero = table([("batch", 0.0, 1e-4, 0.043), ("batch", 0.2, 1e-4, 0.0),
                       ("batch", 0.5, 1e-4, 0.0)])  # fmt: skip
    assert finding(late_zero).endswith("; from t = 0.2T on it is exactly 0.")
    last_only = table([("batch", 0.0, 1e-4, 0.043), ("batch", 0.2, 1e-4, 0.03),
                       ("batch", 0.5, 1e-4, 1e-9)])  # fmt: skip
    assert finding(last_only).endswith("; at t = 0.5T it is 1e-9.")
    never = table([("batch", 0.0, 1e-4, 0.043), ("batch", 0.5, 1e-4, 0.03)])
    assert finding(never).endswith("; at t = 0.5T it is still 0.03 (never ten times smaller).")


def test_finding_handles_one_t_zeros_missing_kinds_and_finetuning() -> None:
    one_t = table([("batch", 0.0, 1e-4, 0.043), ("batch", 0.0, 1e-2, 0.2)])
    assert finding(one_t) == (
        "Perturbing at t = 0 by σ = 1e-4 (batch perturbation, 1 seed) gives a mean train-loss "
        "barrier of 0.043; σ = 0.01 gives 0.2."
    )
    zeros = table([("batch", 0.0, 1e-4, 0.0), ("batch", 0.5, 1e-2, 0.0)])
    assert finding(zeros) == (
        "Every batch perturbation (t from 0 to 0.5T, σ from 1e-4 to 0.01) gives a mean "
        "train-loss barrier of exactly 0 (1 seed)."
    )
    smallest_zero = table([("batch", 0.0, 1e-4, 0.0), ("batch", 0.0, 1e-2, 0.2),
                           ("batch", 0.5, 1e-4, 0.0), ("batch", 0.5, 1e-2, 1e-3)])  # fmt: skip
    assert finding(smallest_zero) == (
        "Perturbing at t = 0 by σ = 0.01 (batch perturbation, 1 seed) gives a mean train-loss "
        "barrier of 0.2 (σ = 1e-4 gives exactly 0); at t = 0.5T it is 0.001."
    )
    late = table([("batch", 0.0, 1e-4, 0.0), ("batch", 0.5, 1e-4, 2e-3)])
    assert finding(late).endswith("exactly 0; at later t it is at most 0.002 (t = 0.5T).")
    gaussian = table([("gaussian", 0.0, 1e-4, 0.043), ("gaussian", 0.5, 1e-4, 0.0)])
    assert finding(gaussian) == (
        "Perturbing at t = 0 by σ = 1e-4 (gaussian perturbation, 1 seed) gives a mean "
        "train-loss barrier of 0.043; at t = 0.5T it is exactly 0."
    )
    spawn = table([("spawn", 0.0, 0.0, 0.02), ("spawn", 0.5, 0.0, 0.0)])
    assert finding(spawn) == (
        "Spawned children (independent batches from t on, 1 seed) reach a mean train-loss "
        "barrier of 0.02 when spawned at t = 0 and 0 at t = 0.5T."
    )
    nothing = table([("batch", 0.0, 1e-4, 1.0, 0, {"diverged": 1}), ("control", 0.0, 0.0, 0.0)])
    assert finding(nothing).startswith("No child has a measured train-loss barrier")
    ft = pd.concat([
        table([("batch", 0.0, 1e-2, 0.5), ("batch", 0.5, 1e-2, 0.1)]).assign(pretrain_steps=0),
        table([("batch", 0.0, 1e-2, 0.002), ("batch", 0.5, 1e-2, 0.0)]).assign(pretrain_steps=40),
    ])  # fmt: skip
    assert finding(ft) == (
        "Perturbing at t = 0 by σ = 0.01 (batch perturbation, 1 seed) gives a mean train-loss "
        "barrier of 0.5 from random initialisation and 0.002 from 40 pre-training steps."
    )


def test_one_number_format() -> None:
    cases = [
        (0, "0"), (7, "7"), (np.int64(12), "12"), (0.0, "0"), (0.043, "0.043"), (0.25, "0.25"),
        (1e-4, "1e-4"), (1.23456e-8, "1.235e-8"), (-2e-5, "-2e-5"), (0.001, "0.001"),
        (9999.0, "9999"), (123456.0, "1.235e5"), (1.0, "1"), (float("nan"), "–"), (None, "–"),
        (np.float32(0.5), "0.5"), ("batch", "batch"),
    ]  # fmt: skip
    for v, want in cases:
        assert fmt_number(v) == want, v


def test_config_diff_lists_dotted_keys_with_each_runs_value() -> None:
    a = {"name": "x", "recipe": {"lr": 0.1, "warmup": 0.02}, "perturb": {"times": [0.0, 0.5]}}
    b = {"name": "x", "recipe": {"lr": 0.1, "warmup": 0.2}, "perturb": {"times": [0.0]},
         "pretrain": {"checkpoints": [0]}}  # fmt: skip
    c = {**a, "seeds": [1]}
    d = config_diff({"A": a, "B": b, "C": c})
    assert list(d.columns) == ["key", "A", "B", "C"]
    assert list(d["key"]) == ["perturb.times", "pretrain", "recipe.warmup", "seeds"]
    row = d.set_index("key").loc["recipe.warmup"]
    assert (row["A"], row["B"], row["C"]) == (0.02, 0.2, 0.02)
    assert d.set_index("key").loc["perturb.times", "B"] == "[0.0]"
    assert d.set_index("key").loc["seeds", "A"] is None
    assert config_diff({"A": a, "B": dict(a)}).empty


# ---- Figure 8, the cross-setting panels and the paper's tables -------------------------------
def test_figure8_performance_plots_each_childs_accuracy_and_loss(
    runs: dict, palette: F.Palette
) -> None:
    df = runs["A"]["df"]
    axes = grid(F.performance_figure(df, palette))
    assert set(axes) == {(i, j) for i in range(2) for j in range(2)}
    for i, kind in enumerate(["batch", "gaussian"]):
        assert axes[(i, 0)].get_yscale() == "symlog" and axes[(i, 0)].get_ylim()[0] == 0
        assert axes[(i, 1)].get_xscale() == "log"
        for tf in TIMES_A:
            d = full(df)
            want = d[(d["kind"] == kind) & (d["t_frac"] == tf)]
            for j, col in enumerate(["test_acc_b", "train_loss_b"]):
                pts = scatters(axes[(i, j)])[F.label_t(tf)]
                np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(want[col]))
                np.testing.assert_allclose(
                    np.sort(pts[:, 1]), np.sort(want["barrier_train_loss"])
                )


def test_settings_figure_colours_each_run_and_plots_its_main_kind(runs: dict) -> None:
    frames = {"A": runs["A"]["df"], "B": runs["B"]["df"]}
    fig = F.settings_figure(frames)
    axes = grid(fig)
    pts = scatters(axes[(0, 0)])
    assert set(pts) == {"A (batch)", "B (batch)"}
    for name, df in frames.items():
        d = full(df)
        d = d[d["kind"] == "batch"]
        got = pts[f"{name} (batch)"]
        np.testing.assert_allclose(np.sort(got[:, 0]), np.sort(d["l2"]))
        np.testing.assert_allclose(np.sort(got[:, 1]), np.sort(d["barrier_train_loss"]))
    colours = {label: c for label, c in labelled_colours(fig)}
    assert colours["A (batch)"] != colours["B (batch)"]


def test_tables_4_5_are_mean_and_std_over_seeds_of_each_seeds_mean(runs: dict) -> None:
    from butterfly.report.summary import pm_table

    df = runs["A"]["df"]
    tab = pm_table(df, "barrier_train_loss", ["kind", "t_frac"])
    assert list(tab.columns) == SIGMAS
    d = full(df)
    for kind in ("batch", "gaussian"):
        for tf in TIMES_A:
            for s in SIGMAS:
                cell = d[(d["kind"] == kind) & (d["t_frac"] == tf) & (d["sigma"] == s)]
                per_seed = cell.groupby("seed")["barrier_train_loss"].mean()
                assert len(per_seed) == 2
                want = f"{fmt_number(per_seed.mean())} ± {fmt_number(per_seed.std(ddof=1))}"
                assert tab.loc[(kind, tf), s] == want


def test_table1_is_one_row_per_run_of_final_accuracy_and_cross_entropy(runs: dict) -> None:
    from butterfly.report.summary import table1

    frames = {"A": runs["A"]["df"], "B": runs["B"]["df"]}
    tab = table1(frames).set_index("run")
    assert list(tab.index) == ["A", "B"]
    for name, df in frames.items():
        kids = children(df)
        for col, head in (("test_acc_b", "test accuracy"), ("train_loss_b", "train CE")):
            per_seed = kids.groupby("seed")[col].mean()
            want = fmt_number(per_seed.mean())  # one seed: the mean alone
            if len(per_seed) > 1:  # sample std over seeds
                want += f" ± {fmt_number(per_seed.std(ddof=1))}"
            assert tab.loc[name, head] == want
        assert tab.loc[name, "children"] == str(len(kids))
    # one seed: the mean alone, no spread to show
    b = children(frames["B"])
    assert b.seed.nunique() == 1
    assert tab.loc["B", "test accuracy"] == fmt_number(b.test_acc_b.mean())


def _curve_ends(training: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each seed's original before fine-tuning (step 0 of the t = 0 population) and at T (the
    last row of that population), restated from the training table."""
    pop = training[training["t"] == 0]
    before = pop[pop["step"] == 0].set_index("seed")
    after = pop[pop["step"] == pop.groupby("seed")["step"].transform("max")].set_index("seed")
    return before, after


def test_table3_is_the_original_before_and_after_fine_tuning_per_start_point(runs: dict) -> None:
    from butterfly.report.summary import table3, table3_cells

    starts = {0: ("random init", runs["A"]["training"]),
              40: ("pre-trained 40 steps", runs["B"]["training"])}  # fmt: skip
    tab = table3(starts)
    assert list(tab["pretrain_steps"]) == [0, 40] and list(tab["seeds"]) == [2, 1]
    cells = table3_cells(tab).set_index("start")
    for steps, (label, training) in starts.items():
        row = tab.set_index("pretrain_steps").loc[steps]
        before, after = _curve_ends(training)
        assert len(before) == len(after) == training["seed"].nunique()
        assert (after["step"] == 60).all() and (before["step"] == 0).all()  # T = 60 steps
        for stage, rows in (("before", before), ("after", after)):
            for col, head in (("test_acc", "test accuracy"), ("test_loss", "test CE")):
                vals = rows[col].astype(float)
                assert row[f"{stage}_{col}_mean"] == pytest.approx(vals.mean(), rel=1e-12)
                if len(vals) > 1:
                    assert row[f"{stage}_{col}_std"] == pytest.approx(vals.std(ddof=1))
                    want = f"{fmt_number(vals.mean())} ± {fmt_number(vals.std(ddof=1))}"
                else:
                    assert np.isnan(row[f"{stage}_{col}_std"])
                    want = fmt_number(vals.mean())
                assert cells.loc[label, f"{stage} fine-tuning: {head}"] == want
    # fine-tuning improves the original of this synthetic task
    assert (tab["after_test_loss_mean"] < tab["before_test_loss_mean"]).all()


def test_table3_without_a_t0_population_has_no_before_column_values(runs: dict) -> None:
    from butterfly.report.summary import table3, table3_cells

    late = runs["A"]["training"]
    late = late[late["t"] > 0]
    tab = table3({7: ("pre-trained 7 steps", late)})
    assert np.isnan(tab.loc[0, "before_test_acc_mean"]) and tab.loc[0, "seeds"] == 2
    t0 = late["t"].min()
    pop = late[late["t"] == t0]
    want = pop[pop["step"] == pop["step"].max()]["test_acc"].mean()
    assert tab.loc[0, "after_test_acc_mean"] == pytest.approx(want)
    cells = table3_cells(tab)
    assert cells.loc[0, "before fine-tuning: test accuracy"] == "–"


def test_a_fine_tuning_report_shows_table3_and_writes_its_csv(
    runs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fine-tuning folder made of runs A (step 0) and B (40 steps); figures left out."""
    import html
    import shutil

    from butterfly.report.summary import table3

    top = tmp_path / "ft"
    labels = {0: "random init", 40: "pre-trained 40 steps"}
    for steps, src in zip(labels, runs["dirs"], strict=True):
        (top / f"from-step{steps:07d}").mkdir(parents=True)
        shutil.copy(src / "results.db", top / f"from-step{steps:07d}" / "results.db")
    with Store(top / "results.db") as s:
        s.set_meta("pipeline", "finetune")
        s.set_meta("runs", [[k, f"from-step{k:07d}", v] for k, v in labels.items()])
    for name in ("all_figures", "finetune_figures", "compared_figures"):
        monkeypatch.setattr(H, name, lambda *a, **k: [])
    text = H.build_report([top]).read_text()
    assert "Table 3" in text
    body = text[text.index('<table class="table3">') :]
    body = body[: body.index("</table>")]
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body)]
    heads = re.findall(r"<th>(.*?)</th>", body)
    assert heads == ["start", "pre-training steps", "before fine-tuning: test accuracy",
                     "before fine-tuning: test CE", "after fine-tuning: test accuracy",
                     "after fine-tuning: test CE", "seeds"]  # fmt: skip
    want = table3({k: (v, runs[n]["training"]) for (k, v), n in zip(labels.items(), "AB",
                                                                        strict=True)})  # fmt: skip
    rows = [cells[i : i + len(heads)] for i in range(0, len(cells), len(heads))]
    assert [r[0] for r in rows] == list(labels.values())
    for r, (_, w) in zip(rows, want.iterrows(), strict=True):
        assert r[2].split(" ± ")[0] == fmt_number(w["before_test_acc_mean"])
        assert r[5].split(" ± ")[0] == fmt_number(w["after_test_loss_mean"])
    csv = pd.read_csv(top / "table3.csv")
    pd.testing.assert_frame_equal(csv, want, check_dtype=False)


def test_f1_and_matthews_correlation_match_scikit_learn() -> None:
    import torch

    from butterfly.metrics.ensemble import f1_and_mcc

    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        y = torch.randint(0, 2, (200,), generator=g)
        pred = torch.where(torch.rand(200, generator=g) < 0.7, y, 1 - y)
        f1, mcc = f1_and_mcc(pred, y)
        assert f1 == pytest.approx(sk.f1_score(y, pred), abs=1e-12)
        assert mcc == pytest.approx(sk.matthews_corrcoef(y, pred), abs=1e-12)
    assert f1_and_mcc(torch.zeros(10), torch.zeros(10)) == (0.0, 0.0)


def test_the_identity_table_counts_weight_matching_leaving_every_unit_in_place(runs: dict) -> None:
    from butterfly.report.html import _summary
    from butterfly.report.summary import identity_table

    df = runs["A"]["df"]
    tab = identity_table(df)
    kids = df[(df.control == 0) & df.kind.isin(["batch", "gaussian"])].dropna(
        subset=["fixed_point_fraction_wm"])  # fmt: skip
    assert len(kids) > 0 and int(tab["children"].sum()) == len(kids)
    for (kind, t_frac), row in tab.iterrows():
        d = kids[(kids.kind == kind) & (kids.t_frac == t_frac)]
        assert row["identity"] == int((d.fixed_point_fraction_wm == 1.0).sum())
        assert row["fixed_points"] == pytest.approx(d.fixed_point_fraction_wm.mean())
        assert row["barrier_wm"] == pytest.approx(d.barrier_train_loss_wm.mean())
    same = int((kids.fixed_point_fraction_wm == 1.0).sum())
    assert f"left every unit in place for {same} of {len(kids)} perturbed children" in _summary(df)
    # without weight matching there is no table
    assert identity_table(df.drop(columns=["fixed_point_fraction_wm"])).empty


# ---- writing figures: a pool of processes, the same files as one by one -----------------------
def _three_figures() -> list[Figure]:
    from butterfly.report.figures.style import figure_grid, legend

    figs = []
    for k in range(3):
        fig, axes = figure_grid(1, 2)
        for j, ax in enumerate(axes[0]):
            ax.plot(np.arange(10), np.arange(10) ** (k + j), label=f"line {k}")
            ax.set_yscale("log")
            ax.set_title(f"figure {k}, panel {j}")
        legend(fig)
        figs.append(fig)
    return figs


def test_figures_written_by_worker_processes_equal_those_written_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from butterfly import figure_files

    monkeypatch.setenv(figure_files.WORKERS_ENV, "1")
    here = figure_files.save_figures((f, tmp_path / "here" / f"f{i}.png")
                                     for i, f in enumerate(_three_figures()))  # fmt: skip
    monkeypatch.setenv(figure_files.WORKERS_ENV, "2")
    pooled = figure_files.save_figures((f, tmp_path / "pool" / f"f{i}.png")
                                       for i, f in enumerate(_three_figures()))  # fmt: skip
    assert [p.name for p in here] == [p.name for p in pooled] == ["f0.png", "f1.png", "f2.png"]
    for a, b in zip(here, pooled, strict=True):
        assert a.read_bytes() == b.read_bytes()  # the same pixels, size and metadata
        assert b.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        assert a.with_suffix(".pdf").stat().st_size == pytest.approx(
            b.with_suffix(".pdf").stat().st_size, rel=0.01)  # fmt: skip
    assert set(plt.get_fignums()) <= KEEP  # every figure closed (the module's shared ones stay)
    assert sorted(p.name for p in (tmp_path / "pool").iterdir()) == [
        "f0.pdf", "f0.png", "f1.pdf", "f1.png", "f2.pdf", "f2.png"]  # no temporary file left


def test_a_figure_that_cannot_be_pickled_is_written_here_and_a_bad_worker_count_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.ticker import FuncFormatter

    from butterfly import figure_files

    monkeypatch.setenv(figure_files.WORKERS_ENV, "2")
    figs = _three_figures()
    figs[1].axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"<{v:g}>"))
    paths = figure_files.save_figures((f, tmp_path / f"f{i}.png") for i, f in enumerate(figs))
    assert all(p.is_file() and p.with_suffix(".pdf").is_file() for p in paths)
    monkeypatch.setenv(figure_files.WORKERS_ENV, "zero")
    with pytest.raises(ValueError, match="BUTTERFLY_FIGURE_WORKERS must be a whole number >= 1"):
        figure_files.figure_workers()
