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

from butterfly.config import ConfigError, RunConfig
from butterfly.experiment import check_control, configure_torch, rows
from butterfly.experiment.members import ORIGINAL, Member
from butterfly.experiment.setup import environment
from butterfly.experiment.threshold import (
    BracketSearch,
    Criterion,
    SigmaSearch,
    ThresholdResult,
    TimeSearch,
    key,
)
from butterfly.sweep import rundir
from butterfly.sweep.executors import check_executor, make_executor
from butterfly.sweep.lock import RunLock
from butterfly.sweep.plan import Unit
from butterfly.sweep.progress import Progress
from butterfly.sweep.runner import (
    SweepFailed,
    SweepOutcome,
    log,
    preflight,
    resolve_workers,
    schedule,
)
from butterfly.sweep.store import Store
from butterfly.sweep.tasks import UnitResult

PIPELINE = "threshold"
# what a search reads of its rows; the other measures are off unless a config asks for them
LEAN_EVAL = {
    "weight_matching": False, "activation_matching": False, "cka": False, "ensemble": False,
    "proxy_fractions": [], "trajectory_points": 0,
}  # fmt: skip


def searches_of(cfg: RunConfig) -> dict[tuple[int, str, float], BracketSearch]:
    """Every search of the config: (seed, kind, the fixed t or σ) -> its state machine."""
    th = cfg.threshold
    assert th is not None
    kinds = [k for k in cfg.perturb.kinds if k != "spawn"]
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
    cfg: RunConfig,
    run_dir: Path,
    workers: int | None = None,
    quiet: bool = False,
    executor: str = "local",
    address: str | None = None,
    progress: bool | None = None,
    on_round: Callable[[int], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) the threshold searches of ``cfg`` in ``run_dir``."""
    th = cfg.threshold
    assert th is not None
    start = time.perf_counter()
    if th.metric not in rows.names("results"):
        raise ConfigError(
            f"threshold.metric '{th.metric}' is not a result column; e.g. barrier_train_loss, "
            "barrier_test_error, l2"
        )
    for w in preflight(cfg, run_dir):
        log(f"note: {w}", quiet)
    check_executor(executor, address)
    steps_run = 0
    failures: list[str] = []
    with RunLock(run_dir):
        rundir.prepare_run_dir(cfg, run_dir, "a threshold search")
        configure_torch(cfg.runtime.threads, cfg.runtime.tf32)
        n_workers = resolve_workers(cfg, workers)
        store = Store(run_dir / rundir.STORE)
        try:
            store.set_meta("config", cfg.to_dict())
            store.set_meta("pipeline", PIPELINE)
            store.set_meta("environment", {**environment(cfg), "workers": n_workers,
                                           "executor": executor})  # fmt: skip
            pool = None
            units_run = 0
            resumed = len(store.finished_rounds())
            if resumed:
                log(f"resuming: {resumed} populations already measured", quiet)
            try:
                while True:
                    df = store.results()
                    rnd = next_round(cfg, df, store.finished_rounds())
                    if not rnd.units:
                        break
                    if pool is None:
                        pool = make_executor(executor, cfg, n_workers, address, False)
                    numbers = sorted(set(rnd.number.values()))
                    log(f"threshold round {'/'.join(map(str, numbers))}: {len(rnd.units)} "
                        f"populations, {sum(len(u.members) - 2 for u in rnd.units)} children",
                        quiet)  # fmt: skip
                    # the parent's states: the sweep's times, or (over t) every t asked so far
                    asked = sorted(set(cfg.perturbation_steps() if th.over == "sigma" else
                                       [int(x) for x in df["t"].unique()] + rnd.steps))  # fmt: skip
                    round_cfg = with_times(cfg, asked)
                    T = cfg.recipe.steps
                    bar = Progress(len(rnd.units), 0, sum(T - u.t for u in rnd.units), T,
                                   enabled=False)  # fmt: skip

                    def commit(res: UnitResult, rnd: Round = rnd) -> None:
                        nonlocal steps_run, units_run
                        store.commit_round(res.seed, res.t, rnd.number[(res.seed, res.t)],
                                           res.rows, res.population, res.steps, res.wall_s,
                                           time.time())  # fmt: skip
                        steps_run += res.steps
                        units_run += 1

                    def fail(seed: int, t: int | None, err: BaseException) -> None:
                        store.record_failure(seed, t, f"{type(err).__name__}: {err}", time.time())
                        where = f"seed {seed}" + (f" t={t}" if t is not None else " (parent)")
                        failures.append(f"{where}: {err}")
                        log(f"FAILED {where}: {type(err).__name__}: {err}", quiet)

                    # (not `steps_run += schedule(...)`: commit() adds to it while it runs)
                    parent_steps = schedule(round_cfg, rnd.units, run_dir, pool, commit, fail, bar)
                    steps_run += parent_steps
                    if failures:
                        break
                    if on_round is not None:
                        on_round(max(numbers))
            finally:
                if pool is not None:
                    pool.shutdown()
            df = store.results()
            table, results = results_of(cfg, df)
            store.set_thresholds(table)
        finally:
            store.close()
        df.to_csv(run_dir / rundir.CSV, index=False)
    if failures:
        raise SweepFailed(
            f"{len(failures)} unit{'s' if len(failures) > 1 else ''} failed (first: "
            f"{failures[0]}); finished rounds are saved in {run_dir}, run the same command to "
            "retry"
        )
    for (seed, kind, at), res in results:
        where = f"t={int(at)}" if th.over == "sigma" else f"σ={at:g}"
        log(f"seed {seed} {kind} {where}: {describe(res, th.over)}", quiet)
    return SweepOutcome(run_dir, df, time.perf_counter() - start, steps_run, steps_run,
                        units_run, resumed, not check_control(df))  # fmt: skip


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
