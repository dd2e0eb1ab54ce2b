"""Numbers from a run's results: the aggregates every table and figure uses, the one number
format of the report, the page's opening finding and the config differences between runs.

Aggregation is the same everywhere: a child's measure is averaged over its directions within a
seed, then over seeds (``seed_stats``: mean, standard error over seeds, number of seeds).
Figures and tables other than the fraction figure use the children that perturb the largest
fraction of weights (``full_fraction``; all weights unless ``perturb.fractions`` says otherwise).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from butterfly.experiment.rows import PERTURBED_KINDS, children, spawned
from butterfly.sweep.rundir import diff_keys
from butterfly.sweep.store import start_label

DASH = "–"


# ---- the one number format ------------------------------------------------------------------
def fmt_number(v: object) -> str:
    """Every number on the page: integers as they are; floats with 4 significant digits, in
    scientific notation (``1.234e-8``) below 1e-3 or from 1e4 on; 0 as ``0``; missing as –."""
    if v is None or v is pd.NA:
        return DASH
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        x = float(v)
        if math.isnan(x):
            return DASH
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if x == 0:
            return "0"
        if 1e-3 <= abs(x) < 1e4:
            return f"{x:.4g}"
        mantissa, exponent = f"{x:.3e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return str(v)


def fmt_t(t_frac: float) -> str:
    """A perturbation time as a fraction of T: ``0`` or ``0.25T``."""
    return "0" if float(t_frac) == 0 else f"{fmt_number(float(t_frac))}T"


# ---- which children ----------------------------------------------------------------------
def perturbed_kinds(d: pd.DataFrame) -> list[str]:
    """The perturbed kinds present in ``d``, in the schema's order (batch, gaussian)."""
    present = set(d["kind"])
    return [k for k in PERTURBED_KINDS if k in present]


def main_kind(d: pd.DataFrame) -> str | None:
    """The kind the one-line summaries speak of: batch if present, else the first perturbed kind
    present, else None."""
    kinds = perturbed_kinds(d)
    return kinds[0] if kinds else None


def full_fraction(d: pd.DataFrame) -> pd.DataFrame:
    """The perturbed rows with the largest fraction of weights perturbed (and every other row):
    figures other than the fraction figure do not average one-weight and all-weight children."""
    pert = d["kind"].isin(PERTURBED_KINDS)
    if not pert.any():
        return d
    fmax = d.loc[pert, "fraction"].max()
    return d[~pert | (d["fraction"] == fmax)]


def seed_stats(d: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean over seeds (of the per-seed mean over directions) of ``metric`` by ``by``, with the
    standard error over seeds (NaN for one seed) and the number of seeds; NaN rows dropped."""
    d = d.dropna(subset=[metric])
    if d.empty:
        index = pd.MultiIndex.from_tuples([], names=by) if len(by) > 1 else pd.Index([], name=by[0])
        return pd.DataFrame({"mean": [], "sem": [], "n": []}, index=index)
    per_seed = d.groupby([*by, "seed"])[metric].mean()
    g = per_seed.groupby(level=by)
    return pd.DataFrame({"mean": g.mean(), "sem": g.sem(), "n": g.count()})


# ---- tables ----------------------------------------------------------------------------------
def summary_table(
    df: pd.DataFrame, metric: str = "barrier_train_loss", by_fraction: bool = False
) -> pd.DataFrame:
    """Mean of ``metric`` over seeds: rows (kind, t/T), columns sigma; spawned children show as
    sigma 0. Only the largest perturbed fraction, unless ``by_fraction`` (rows then (kind,
    fraction, t/T))."""
    d = children(df, spawn=True)
    if not by_fraction:
        d = full_fraction(d)
    if d.empty:
        return pd.DataFrame()
    by = ["kind", "fraction", "t_frac"] if by_fraction else ["kind", "t_frac"]
    stats = seed_stats(d, [*by, "sigma"], metric)
    if stats.empty:
        return pd.DataFrame()
    return stats["mean"].unstack("sigma")


def hardware_noise_table(df: pd.DataFrame) -> pd.DataFrame:
    """Appendix C.2: how far rounding alone carries a network. By t/T, the mean over seeds of
    the twin's L2 and train-loss barrier to the original (no perturbation, the same batches,
    another code path), beside those of the smallest perturbation of each kind (the fewest
    weights perturbed, at the smallest σ used with them: one weight in fig11-fraction).
    Empty without twins."""
    ok = df[(df["diverged"] == 0)]
    twins = ok[ok["kind"] == "twin"]
    if twins.empty:
        return pd.DataFrame()
    cols: dict[str, pd.Series] = {
        "twin_l2": twins.groupby(["t_frac", "seed"])["l2"].mean().groupby(level=0).mean(),
        "twin_barrier": twins.groupby(["t_frac", "seed"])["barrier_train_loss"].mean()
        .groupby(level=0).mean(),
    }  # fmt: skip
    for kind in PERTURBED_KINDS:
        d = ok[(ok["kind"] == kind) & (ok["control"] == 0)]
        if d.empty:
            continue
        d = d[d["n_perturbed"] == d["n_perturbed"].min()]
        d = d[d["sigma"] == d["sigma"].min()]
        n, s = int(d["n_perturbed"].iloc[0]), float(d["sigma"].iloc[0])
        label = f"{kind} ({n:,} weight{'s' if n != 1 else ''}, σ = {fmt_number(s)})"
        for metric, tag in (("l2", "l2"), ("barrier_train_loss", "barrier")):
            cols[f"{label} {tag}"] = (d.groupby(["t_frac", "seed"])[metric].mean()
                                      .groupby(level=0).mean())  # fmt: skip
    return pd.DataFrame(cols)


def identity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Appendix C.5: how often weight matching returned the identity permutation (every unit
    left in place), by kind and t/T over every perturbed child it aligned: ``children``,
    ``identity`` (how many), ``fixed_points`` (the mean fraction of units left in place) and
    the mean train-loss barrier before and after matching. Empty without weight matching."""
    if "fixed_point_fraction_wm" not in df.columns:
        return pd.DataFrame()
    d = children(df).dropna(subset=["fixed_point_fraction_wm"])
    if d.empty:
        return pd.DataFrame()
    g = d.groupby(["kind", "t_frac"])
    return pd.DataFrame({
        "children": g.size(),
        "identity": g["fixed_point_fraction_wm"].agg(lambda s: int((s == 1.0).sum())),
        "fixed_points": g["fixed_point_fraction_wm"].mean(),
        "barrier": g["barrier_train_loss"].mean(),
        "barrier_wm": g["barrier_train_loss_wm"].mean(),
    })  # fmt: skip


def format_table(df: pd.DataFrame) -> str:
    """Barrier and L2 per (kind, t) x sigma, as printed at the end of ``butterfly run``."""
    by_fraction = children(df)["fraction"].nunique() > 1
    parts = []
    for metric in ("barrier_train_loss", "l2"):
        table = summary_table(df, metric, by_fraction=by_fraction)
        if table.empty:
            continue
        table.columns = [f"σ={fmt_number(s)}" for s in table.columns]
        if by_fraction:
            table.index = [f"{k:<8s} f={fmt_number(f)} t={fmt_t(t)}" for k, f, t in table.index]
        else:
            table.index = [f"{k:<8s} t={fmt_t(t)}" for k, t in table.index]
        text = table.to_string(float_format=lambda v: f"{fmt_number(v):>9s}", na_rep="–")
        parts.append(f"mean {metric} over seeds:\n{text}")
    return "\n\n".join(parts)


def finetune_table(df: pd.DataFrame, metric: str = "barrier_train_loss") -> pd.DataFrame:
    """Mean ``metric`` over seeds by (pre-training steps, kind, t) x sigma (perturbed children
    with the largest perturbed fraction only)."""
    d = full_fraction(children(df))
    stats = seed_stats(d, ["pretrain_steps", "kind", "t_frac", "sigma"], metric)
    if stats.empty:
        return pd.DataFrame()
    return stats["mean"].unstack("sigma")


def pm(mean: float, std: float) -> str:
    """``mean ± std`` in the page's one number format; the mean alone where there is no std
    (one seed)."""
    return fmt_number(mean) if std != std else f"{fmt_number(mean)} ± {fmt_number(std)}"


def pm_table(df: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """``mean ± std`` over seeds (of each seed's mean over directions; the sample standard
    deviation, n - 1) of ``metric`` by ``by``
    (rows) and σ (columns): the paper's Tables 4-5 layout."""
    d = full_fraction(children(df)).dropna(subset=[metric])
    if d.empty:
        return pd.DataFrame()
    per_seed = d.groupby([*by, "sigma", "seed"])[metric].mean()
    g = per_seed.groupby(level=[*by, "sigma"])
    mean, std = g.mean(), g.std(ddof=1)
    cells = pd.Series([pm(m, sd) for m, sd in zip(mean, std, strict=True)], index=mean.index)
    return cells.unstack("sigma")


def table1(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's Table 1 across runs: the perturbed networks' final test accuracy and train
    cross-entropy, ``mean ± std`` over seeds of each seed's mean over its children (every
    perturbation time, size and kind), with the run's recipe."""
    rows = []
    for name, df in runs.items():
        d = children(df)
        cells = {"run": name}
        for col, head in (("test_acc_b", "test accuracy"), ("train_loss_b", "train CE")):
            per_seed = d.groupby("seed")[col].mean().dropna()
            cells[head] = pm(float(per_seed.mean()), float(per_seed.std(ddof=1))) if len(
                per_seed) else "–"  # fmt: skip
        cells["children"] = str(len(d))
        rows.append(cells)
    return pd.DataFrame(rows)


# what Table 3 shows of each start point's original: (stage, training-table column, heading)
TABLE3_CELLS = (
    ("before", "test_acc", "test accuracy"),
    ("before", "test_loss", "test CE"),
    ("after", "test_acc", "test accuracy"),
    ("after", "test_loss", "test CE"),
)


def start_and_end(training: pd.DataFrame) -> pd.DataFrame:
    """Each seed's original before fine-tuning and at its end, from a sweep's ``training``
    table: rows (seed, stage) with the table's columns. ``before`` is the curve's row at step 0
    of the population perturbed at t = 0 (θ0 of the sweep, evaluated before its first step:
    the pre-trained network with its freshly drawn head); a sweep without t = 0 has none.
    ``after`` is the last row (step T) of the seed's earliest population."""
    out = []
    for seed, g in training.groupby("seed"):
        pop = g[g["t"] == g["t"].min()]
        before = pop[(pop["t"] == 0) & (pop["step"] == 0)]
        after = pop[pop["step"] == pop["step"].max()]
        for stage, rows in (("before", before), ("after", after)):
            if len(rows):
                out.append({**rows.iloc[0].to_dict(), "seed": seed, "stage": stage})
    return pd.DataFrame(out)


def table3(starts: Mapping[int, tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The paper's Table 3 for a fine-tuning folder: per pre-training start point (``starts``:
    pre-training steps -> (its label, its sweep's ``training`` table)), the original's test
    accuracy and test cross-entropy before fine-tuning and at its end (``start_and_end``),
    mean and sample standard deviation (n - 1; NaN for one seed) over seeds. Columns
    ``pretrain_steps``, ``start``, ``seeds``, then ``{stage}_{column}_mean`` and ``_std``
    for each of ``TABLE3_CELLS``; NaN where nothing was measured."""
    rows = []
    for steps in sorted(starts):
        label, training = starts[steps]
        ends = start_and_end(training) if training is not None and len(training) else None
        row: dict[str, Any] = {"pretrain_steps": int(steps), "start": label,
                               "seeds": 0 if ends is None else int(ends["seed"].nunique())}  # fmt: skip
        for stage, col, _ in TABLE3_CELLS:
            vals = pd.Series(dtype=float)
            if ends is not None and col in ends:
                vals = ends.loc[ends["stage"] == stage, col].astype(float).dropna()
            row[f"{stage}_{col}_mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{stage}_{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def table3_cells(tab: pd.DataFrame) -> pd.DataFrame:
    """``table3`` as the page shows it: ``mean ± std`` over seeds (the mean alone for one seed,
    – where nothing was measured), one column per (stage, measure)."""
    out = pd.DataFrame({"start": tab["start"], "pre-training steps": tab["pretrain_steps"]})
    for stage, col, head in TABLE3_CELLS:
        mean, std = tab[f"{stage}_{col}_mean"], tab[f"{stage}_{col}_std"]
        out[f"{stage} fine-tuning: {head}"] = [
            DASH if m != m else pm(float(m), float(sd)) for m, sd in zip(mean, std, strict=True)
        ]
    out["seeds"] = tab["seeds"]
    return out


# ---- the page's opening sentence -----------------------------------------------------------
def _barrier_means(d: pd.DataFrame) -> pd.Series:
    """Mean train-loss barrier over seeds by (t_frac, sigma)."""
    return seed_stats(d, ["t_frac", "sigma"], "barrier_train_loss")["mean"]


PRETRAIN_LABEL = "pretrain_label"  # the report's name of each start point (fine-tuning)


def pretrain_labels(df: pd.DataFrame) -> Callable[[float], str]:
    """Names of the pre-training start points in ``df``: its ``pretrain_label`` column where
    the report set one (step 0 may be random init, loaded weights or a given checkpoint), else
    "random init" / "pre-trained N steps"."""
    given: dict[int, str] = {}
    if PRETRAIN_LABEL in df.columns:
        given = dict(zip(df["pretrain_steps"].astype(int), df[PRETRAIN_LABEL], strict=True))
    return lambda steps: given.get(int(steps)) or start_label(int(steps))


def _pretrained(steps: int, label: str) -> str:
    if steps:
        return f"from {steps} pre-training steps"
    return "from random initialisation" if label == "random init" else f"from the {label}"


def finding(df: pd.DataFrame) -> str:
    """One sentence, computed from the data, on how the barrier depends on when the network is
    perturbed: the mean train-loss barrier (over seeds) at the earliest t of the smallest σ that
    gives a non-zero one there (the smallest σ if none does), and from which later t on the same
    σ gives a barrier at least ten times smaller (else its value at the latest t). Batch
    perturbation if present, else the kind present; spawned children if nothing was perturbed;
    by pre-training duration for a fine-tuning folder (``pretrain_steps`` column)."""
    if "pretrain_steps" in df.columns and df["pretrain_steps"].notna().any():
        return _finetune_finding(df)
    d = full_fraction(children(df)).dropna(subset=["barrier_train_loss"])
    kind = main_kind(d)
    if kind is None:
        return _spawn_finding(df)
    d = d[d["kind"] == kind]
    m = _barrier_means(d)
    seeds = d["seed"].nunique()
    if (m == 0).all():
        return (
            f"Every {kind} perturbation (t from {fmt_t(m.index.get_level_values(0).min())} to "
            f"{fmt_t(m.index.get_level_values(0).max())}, σ from "
            f"{fmt_number(m.index.get_level_values(1).min())} to "
            f"{fmt_number(m.index.get_level_values(1).max())}) gives a mean train-loss barrier of "
            f"exactly 0 ({_seeds(seeds)})."
        )
    t0 = m.index.get_level_values("t_frac").min()
    at_t0 = m.xs(t0, level="t_frac").sort_index()
    # the smallest sigma with a non-zero barrier at the earliest t (else the smallest sigma)
    nonzero = at_t0[at_t0 > 0]
    s0 = nonzero.index[0] if len(nonzero) else at_t0.index[0]
    below = at_t0.index[at_t0.index < s0]
    by_t = m.xs(s0, level="sigma").sort_index()
    b0 = float(by_t.loc[t0])
    head = (
        f"Perturbing at t = {fmt_t(t0)} by σ = {fmt_number(s0)} ({kind} perturbation, "
        f"{_seeds(seeds)}) gives a mean train-loss barrier of "
        + ("exactly 0" if b0 == 0 else fmt_number(b0))
    )
    if len(below):
        smaller = "σ = " + fmt_number(below[0]) if len(below) == 1 else "every smaller σ"
        head += f" ({smaller} gives exactly 0)"
    later = by_t.iloc[1:]
    if later.empty:  # a single perturbation time: compare with the largest sigma instead
        smax = at_t0.index.max()
        if smax != s0:
            return f"{head}; σ = {fmt_number(smax)} gives {fmt_number(float(at_t0[smax]))}."
        return head + "."
    if b0 == 0:
        if (later == 0).all():
            return f"{head}, and so does every later t up to {fmt_t(later.index[-1])}."
        return (
            f"{head}; at later t it is at most {fmt_number(float(later.max()))} "
            f"(t = {fmt_t(later.idxmax())})."
        )
    for i, t_star in enumerate(later.index):
        rest = later.iloc[i:]
        if (rest <= b0 / 10).all():
            top = float(rest.max())
            if len(rest) == 1:
                value = "exactly 0" if top == 0 else fmt_number(top)
                return f"{head}; at t = {fmt_t(t_star)} it is {value}."
            if top == 0:
                return f"{head}; from t = {fmt_t(t_star)} on it is exactly 0."
            return f"{head}; from t = {fmt_t(t_star)} on it is at most {fmt_number(top)}."
    return (
        f"{head}; at t = {fmt_t(later.index[-1])} it is still {fmt_number(float(later.iloc[-1]))}"
        " (never ten times smaller)."
    )


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"mean over {n} seeds"


def _spawn_finding(df: pd.DataFrame) -> str:
    s = spawned(df).dropna(subset=["barrier_train_loss"])
    if s.empty:
        return "No child has a measured train-loss barrier (none trained, or every child diverged)."
    m = seed_stats(s, ["t_frac"], "barrier_train_loss")["mean"].sort_index()
    text = (
        f"Spawned children (independent batches from t on, {_seeds(s['seed'].nunique())}) reach a "
        f"mean train-loss barrier of {fmt_number(float(m.iloc[0]))} when spawned at "
        f"t = {fmt_t(m.index[0])}"
    )
    if len(m) > 1:
        text += f" and {fmt_number(float(m.iloc[-1]))} at t = {fmt_t(m.index[-1])}"
    return text + "."


def _finetune_finding(df: pd.DataFrame) -> str:
    d = full_fraction(children(df)).dropna(subset=["barrier_train_loss"])
    kind = main_kind(d)
    if kind is None:
        return "No fine-tuned child has a measured train-loss barrier."
    d = d[d["kind"] == kind]
    t0, s0 = d["t_frac"].min(), d.loc[d["t_frac"] == d["t_frac"].min(), "sigma"].min()
    cell = d[(d["t_frac"] == t0) & (d["sigma"] == s0)]
    m = seed_stats(cell, ["pretrain_steps"], "barrier_train_loss")["mean"].sort_index()
    name = pretrain_labels(df)
    parts = [f"{fmt_number(float(v))} {_pretrained(int(p), name(p))}" for p, v in m.items()]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (
        f"Perturbing at t = {fmt_t(t0)} by σ = {fmt_number(s0)} ({kind} perturbation, "
        f"{_seeds(cell['seed'].nunique())}) gives a mean train-loss barrier of {listed}."
    )


# ---- runs compared ------------------------------------------------------------------------
def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _config_value(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return v


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The dotted config keys whose values differ between runs: a row per key (sorted), a
    column per run with its value (None where the run's config lacks the key)."""
    names = list(configs)
    if len(names) < 2:
        return pd.DataFrame(columns=["key", *names])
    first = dict(configs[names[0]])
    keys: set[str] = set()
    for n in names[1:]:
        keys |= diff_keys(first, dict(configs[n]))
    rows = [
        {"key": k, **{n: _config_value(_lookup(configs[n], k)) for n in names}}
        for k in sorted(keys)
    ]
    return pd.DataFrame(rows, columns=["key", *names])
