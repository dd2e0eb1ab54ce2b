"""The threshold pipeline (``butterfly threshold``): find the edge of stability by adaptive
searches instead of a fixed grid.

``threshold.over: sigma`` (default): for every seed, perturbation time t and kind, the critical
size σ*(t), the smallest σ whose barrier (``threshold.metric``) reaches ε
(:class:`~butterfly.experiment.threshold.SigmaSearch`). Each *round* of a (seed, t) is one
population holding every σ that round proposes, for every kind still searching: a round costs
one population, not one run per σ.

``threshold.over: t``: for a fixed size σ, the critical time t*(σ), the earliest t after which
the barrier stays below ε (:class:`~butterfly.experiment.threshold.TimeSearch`); every proposed
t is its own population, started from the parent's state at t (the parent is extended to any new
t from its last saved state, bit for bit).

It is a sweep like any other: each finished population commits its rows (tagged with their
``round``) and a ``rounds`` row in one transaction; a search's whole state is its measured
rows, so running the same command again after a crash re-reads them, proposes exactly the same
next values, and trains nothing that is done. The answer of every search goes into the
``thresholds`` table, and parents, workers, Ray and the report work as for a grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from butterfly.config import RunConfig, build_config, deep_merge
from butterfly.experiment import Resolved, rows
from butterfly.experiment.members import ORIGINAL, Member
from butterfly.experiment.threshold import (
    BracketSearch,
    Criterion,
    SigmaSearch,
    ThresholdResult,
    TimeSearch,
    key,
)
from butterfly.experiment.verdict import check_control
from butterfly.sweep.plan import Unit
from butterfly.sweep.progress import Progress
from butterfly.sweep.session import Execution, RunSession, SweepOutcome
from butterfly.sweep.tasks import UnitResult

PIPELINE = "threshold"
# what a search reads of its rows; the other measures are off unless a config asks for them
LEAN_EVAL = {
    "weight_matching": False, "activation_matching": False, "cka": False, "ensemble": False,
    "proxy_fractions": [], "trajectory_points": 0,
}  # fmt: skip


def search_config(
    raw: dict[str, Any], options: dict[str, Any], overrides: list[str] | None = None
) -> tuple[RunConfig, str]:
    """``butterfly threshold``'s config: ``raw`` (a config or preset) with the lean evaluation
    a search reads, a ``threshold`` section with ``options`` (None: the config's, else the
    section's defaults), and ``overrides`` on top; and the folder name under ``runs/``
    (``threshold``, or ``NAME-threshold`` for a named config)."""
    named = "name" in raw
    raw = deep_merge({"eval": LEAN_EVAL, "threshold": {}}, raw)
    given = {k: v for k, v in options.items() if v is not None}
    raw["threshold"] = {**(raw["threshold"] or {}), **given}
    if not named:
        raw["name"] = "threshold"
    cfg = build_config(raw, overrides)
    return cfg, (f"{cfg.name}-threshold" if named else cfg.name)


def searches_of(cfg: RunConfig) -> dict[tuple[int, str, float], BracketSearch]:
    """Every search of the config: (seed, kind, the fixed t or σ) -> its state machine."""
    th = cfg.threshold
    assert th is not None
    kinds = [k for k in cfg.perturb.kinds if k not in ("spawn", "twin")]
    out: dict[tuple[int, str, float], BracketSearch] = {}
    common = {"per_round": th.per_round, "resolution": th.resolution,
              "max_rounds": th.max_rounds, "eps": th.eps}  # fmt: skip
    for seed in cfg.seeds:
        for kind in kinds:
            if th.over == "sigma":
                for t in cfg.perturbation_steps():
                    out[(seed, kind, float(t))] = SigmaSearch(lo=th.sigma_min, hi=th.sigma_max,
                                                              **common)  # fmt: skip
            else:
                sigma = th.sigma if th.sigma is not None else cfg.perturb.sigmas[0]
                out[(seed, kind, key(sigma))] = TimeSearch.for_steps(cfg.recipe.steps, **common)
    return out


def criterion(cfg: RunConfig) -> Criterion:
    th = cfg.threshold
    assert th is not None
    return Criterion(th.metric, th.eps, th.relative)


def points_of(df: pd.DataFrame, cfg: RunConfig, seed: int, kind: str, at: float) -> list:
    """The measured points of one search, from the stored rows of every round."""
    th = cfg.threshold
    assert th is not None
    if df.empty:
        return []
    d = df[(df["seed"] == seed) & (df["kind"] == kind) & (df["control"] == 0)]
    d = d[d["t"] == int(at)] if th.over == "sigma" else d[d["sigma"].map(key) == at]
    crit = criterion(cfg)
    return [crit.point(r, th.over) for r in d.to_dict("records")]


def member_name(kind: str, sigma: float, fraction: float, direction: int, round_: int) -> str:
    return f"{kind}-s{key(sigma):.6g}-f{fraction:.3g}-d{direction}-r{round_}"


@dataclass
class Round:
    """The units of one round, with the round number of each (seed, t)."""

    units: list[Unit]
    number: dict[tuple[int, int], int]
    steps: list[int]  # perturbation times this round needs parent states at


def next_round(cfg: RunConfig, df: pd.DataFrame, done: set[tuple[int, int, int]]) -> Round:
    """What to measure next, given every stored row: a pure function of the stored points."""
    th = cfg.threshold
    assert th is not None
    frac = cfg.perturb.fractions[0]
    wants: dict[tuple[int, int], list[tuple[str, float]]] = {}  # (seed, t) -> (kind, σ)
    for (seed, kind, at), search in searches_of(cfg).items():
        xs = search.propose(points_of(df, cfg, seed, kind, at)) or []
        for x in xs:
            t, sigma = (int(at), x) if th.over == "sigma" else (int(x), at)
            wants.setdefault((seed, t), []).append((kind, sigma))
    rounds_done: dict[tuple[int, int], int] = {}
    for s, t, r in done:
        rounds_done[(s, t)] = max(rounds_done.get((s, t), 0), r)
    units, number = [], {}
    for (seed, t), kid in sorted(wants.items()):
        r = rounds_done.get((seed, t), 0) + 1
        members = [ORIGINAL, Member(f"control-r{r}", "control", 0.0, 1.0, 0)]
        members += [
            Member(member_name(kind, sigma, frac, d, r), kind, float(key(sigma)), frac, d)
            for kind, sigma in sorted(kid)
            for d in range(cfg.perturb.directions)
        ]
        units.append(Unit(seed, t, tuple(members)))
        number[(seed, t)] = r
    return Round(units, number, sorted({u.t for u in units}))


def results_of(cfg: RunConfig, df: pd.DataFrame) -> tuple[list[dict[str, Any]], list]:
    """The thresholds rows, and each search's result, from every stored row."""
    th = cfg.threshold
    assert th is not None
    out, results = [], []
    for (seed, kind, at), search in searches_of(cfg).items():
        res: ThresholdResult = search.result(points_of(df, cfg, seed, kind, at))
        results.append(((seed, kind, at), res))
        out.append(rows.make_row(
            "thresholds", seed=seed, kind=kind, over=th.over, at=at, status=res.status,
            estimate=res.estimate, lo=res.lo, hi=res.hi, rounds=res.rounds,
            points=len(res.points), crossings=res.crossings, metric=th.metric, eps=th.eps,
            relative=int(th.relative),
        ))  # fmt: skip
    return out, results


def with_times(cfg: RunConfig, steps: list[int]) -> RunConfig:
    """The config with its perturbation times replaced (the parent's saved states)."""
    perturb = cfg.perturb.model_copy(update={"times": [], "steps": list(steps)})
    return cfg.model_copy(update={"perturb": perturb})


def run_threshold(
    resolved: Resolved,
    run_dir: Path,
    execution: Execution,
    on_round: Callable[[int], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) the threshold searches of a resolved config in ``run_dir``: its round
    loop; the run session does the rest."""
    cfg = resolved.cfg
    th = cfg.threshold
    assert th is not None
    for w in resolved.warnings:
        execution.log(f"note: {w}")
    steps_run = 0
    units_run = 0
    with RunSession(resolved, run_dir, execution, what="a threshold search", pipeline=PIPELINE,
                    saved="rounds") as session:  # fmt: skip
        store = session.store
        resumed = len(store.finished_rounds())
        if resumed:
            session.log(f"resuming: {resumed} populations already measured")
        while True:
            df = store.results()
            rnd = next_round(cfg, df, store.finished_rounds())
            if not rnd.units:
                break
            numbers = sorted(set(rnd.number.values()))
            session.log(f"threshold round {'/'.join(map(str, numbers))}: {len(rnd.units)} "
                        f"populations, {sum(len(u.members) - 2 for u in rnd.units)} children")  # fmt: skip
            # the parent's states: the sweep's times, or (over t) every t asked so far
            asked = sorted(set(cfg.perturbation_steps() if th.over == "sigma" else
                               [int(x) for x in df["t"].unique()] + rnd.steps))  # fmt: skip
            T = cfg.recipe.steps
            bar = Progress(len(rnd.units), 0, sum(T - u.t for u in rnd.units), T, enabled=False)

            def commit(res: UnitResult, rnd: Round = rnd) -> None:
                nonlocal steps_run, units_run
                store.commit_round(res.seed, res.t, rnd.number[(res.seed, res.t)], res.rows,
                                   res.population, res.steps, res.wall_s, time.time())  # fmt: skip
                steps_run += res.steps
                units_run += 1

            # (not `steps_run += ...`: commit() adds to it while it runs)
            parent_steps = session.schedule(resolved.derive(with_times(cfg, asked)), rnd.units,
                                            commit, bar)  # fmt: skip
            steps_run += parent_steps
            if session.failures:
                break
            if on_round is not None:
                on_round(max(numbers))
        df = store.results()
        table, results = results_of(cfg, df)
        store.set_thresholds(table)
        session.results = df
    for (seed, kind, at), res in results:
        where = f"t={int(at)}" if th.over == "sigma" else f"σ={at:g}"
        execution.log(f"seed {seed} {kind} {where}: {describe(res, th.over)}")
    return session.outcome(results=df, steps=steps_run, minimum_steps=steps_run,
                           units_run=units_run, units_skipped=resumed,
                           control_ok=not check_control(df))  # fmt: skip


def describe(res: ThresholdResult, over: str) -> str:
    """One line for a search's answer."""
    if over == "sigma":
        f = lambda v: f"{v:.3g}"  # noqa: E731
        if res.estimate is not None:
            return (f"σ* = {f(res.estimate)} (bracket [{f(res.lo)}, {f(res.hi)}], {res.rounds} "
                    f"rounds, {res.status})")  # fmt: skip
        if res.status == "above":
            return f"σ* above the bracket: stable up to σ = {f(res.lo)} ({res.rounds} rounds)"
        if res.status == "below":
            return f"σ* below the bracket: unstable already at σ = {f(res.hi)} ({res.rounds} rounds)"
        return f"σ*: {res.status}"
    if res.estimate is not None:
        return (f"t* = {int(res.estimate)} (unstable at {int(res.lo)}, stable from "
                f"{int(res.hi)} on; {res.rounds} rounds, {res.status})")  # fmt: skip
    if res.status == "always_stable":
        return f"stable at every t measured, from t = {int(res.hi)} ({res.rounds} rounds)"
    if res.status == "never_stable":
        return f"never stable: unstable still at t = {int(res.lo)} ({res.rounds} rounds)"
    return f"t*: {res.status}"


def threshold_table(thresholds: pd.DataFrame) -> str:
    """σ*(t) (or t*(σ)) per kind: the mean over seeds of the resolved estimates, and how many
    seeds' searches ended outside the bracket, as printed by ``butterfly threshold``."""
    if thresholds.empty:
        return "no threshold searches"
    over = str(thresholds["over"].iloc[0])
    name, at = ("σ*", "t") if over == "sigma" else ("t*", "σ")
    lines = [f"{name} by {at} (mean over seeds of resolved searches; open: outside the bracket):"]
    for (kind, value), g in thresholds.groupby(["kind", "at"], sort=True):
        got = g["estimate"].dropna()
        where = f"t = {int(value)}" if over == "sigma" else f"σ = {value:g}"
        est = f"{float(got.mean()):.4g}" if len(got) else "–"
        opened = g[g["estimate"].isna()]["status"].tolist()
        extra = f"; open: {', '.join(opened)}" if opened else ""
        lines.append(f"  {kind:<8s} {where:<14s} {name} = {est} ({len(got)}/{len(g)} seeds{extra})")
    return "\n".join(lines)
