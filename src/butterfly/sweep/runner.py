"""Run a sweep: plan it, execute parents and population units, commit results, check the control.

Executors: in-process (``workers = 1``) or a pool of worker processes (default: one per core,
``runtime.threads`` intra-op threads each). Workers return rows; the driver alone writes the
store, committing each finished unit before it waits for the next.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from butterfly.config import ConfigError, RunConfig
from butterfly.sweep.plan import Unit, minimum_steps, plan
from butterfly.sweep.store import Store
from butterfly.sweep.unit import UnitResult, configure_torch, environment, run_parent, run_unit


class DeterminismError(RuntimeError):
    """The sigma = 0 control diverged from the original: training is not bit-exact."""


@dataclass
class SweepOutcome:
    run_dir: Path
    results: pd.DataFrame
    wall_s: float
    steps: int
    minimum_steps: int
    units_run: int
    units_skipped: int
    control_ok: bool


def resolve_workers(cfg: RunConfig, workers: int | None) -> int:
    n = cfg.runtime.workers if workers is None else workers
    return n if n > 0 else (os.cpu_count() or 1)


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create the run folder and save the resolved config; refuse a changed config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    resolved = cfg.to_dict()
    if cfg_path.is_file():
        old = yaml.safe_load(cfg_path.read_text())
        if old != resolved:
            changed = sorted(_diff(old or {}, resolved))
            raise ConfigError(
                f"{run_dir} holds a run with a different config (changed: {', '.join(changed)}); "
                "choose another --out folder or delete this one"
            )
    else:
        tmp = cfg_path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        os.replace(tmp, cfg_path)


def _diff(a: dict, b: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.add(prefix + k)
    return out


def check_control(df: pd.DataFrame) -> list[str]:
    """Problems with the sigma = 0 control rows (empty when every control is exactly zero)."""
    problems = []
    ctrl = df[df["control"] == 1]
    for _, r in ctrl.iterrows():
        bad = {
            c: r[c]
            for c in ("l2", "barrier_train_loss", "barrier_test_error")
            if not (r[c] is not None and r[c] == 0.0)
        }
        if bad or r["diverged"]:
            problems.append(
                f"seed {r['seed']} t={r['t']}: " + ", ".join(f"{k}={v!r}" for k, v in bad.items())
            )
    return problems


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_sweep(
    cfg: RunConfig,
    run_dir: str | Path,
    workers: int | None = None,
    quiet: bool = False,
    on_unit: Callable[[UnitResult], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep of ``cfg`` in ``run_dir`` and return its results."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    prepare_run_dir(cfg, run_dir)
    configure_torch(cfg.runtime.threads)
    units = plan(cfg)
    n_workers = resolve_workers(cfg, workers)
    store = Store(run_dir / "results.db")
    try:
        store.set_meta("config", cfg.to_dict())
        store.set_meta("environment", {**environment(cfg), "workers": n_workers})
        done = store.finished_units()
        todo = [u for u in units if (u.seed, u.t) not in done]
        skipped = len(units) - len(todo)
        if skipped:
            _log(f"resuming: {skipped} of {len(units)} units already finished", quiet)
        steps = 0
        n_done = skipped

        def commit(res: UnitResult) -> None:
            nonlocal steps, n_done
            store.commit_unit(
                res.seed, res.t, res.rows, res.trajectory, res.proxy, res.population, res.steps,
                res.wall_s, time.time(),
            )  # fmt: skip
            steps += res.steps
            n_done += 1
            _log(
                f"[{n_done}/{len(units)}] seed {res.seed} t={res.t}: {res.population} members, "
                f"{res.steps} member-steps, {res.wall_s:.1f} s",
                quiet,
            )
            if on_unit is not None:
                on_unit(res)

        if todo:
            _log(
                f"sweep '{cfg.name}': {len(units)} units ({len(cfg.seeds)} seeds x "
                f"{len(cfg.perturbation_steps())} times), population {len(units[0].members)}, "
                f"{n_workers} worker{'s' if n_workers > 1 else ''} -> {run_dir}",
                quiet,
            )
            runner = _run_inline if n_workers == 1 else _run_pool
            parent_steps = runner(cfg, todo, run_dir, n_workers, commit)
            steps += parent_steps
        df = store.results()
    finally:
        store.close()
    df.to_csv(run_dir / "results.csv", index=False)
    problems = check_control(df)
    return SweepOutcome(
        run_dir,
        df,
        time.perf_counter() - start,
        steps,
        minimum_steps(cfg),
        len(todo),
        skipped,
        not problems,
    )


def _by_seed(units: list[Unit]) -> dict[int, list[Unit]]:
    out: dict[int, list[Unit]] = {}
    for u in units:
        out.setdefault(u.seed, []).append(u)
    return out


def _run_inline(
    cfg: RunConfig,
    todo: list[Unit],
    run_dir: Path,
    n_workers: int,
    commit: Callable[[UnitResult], None],
) -> int:
    """Everything in this process, one unit after another; returns the parents' steps."""
    steps = 0
    for seed, units in _by_seed(todo).items():
        steps += run_parent(cfg, seed, run_dir)["steps"]
        for u in units:
            commit(run_unit(cfg, u, run_dir))
    return steps


def _run_pool(
    cfg: RunConfig,
    todo: list[Unit],
    run_dir: Path,
    n_workers: int,
    commit: Callable[[UnitResult], None],
) -> int:
    """Parents first (one task per seed); each parent's units are queued when it finishes.

    Returns the parents' steps (units' steps are counted by ``commit``).
    """
    by_seed = _by_seed(todo)
    steps = 0
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(n_workers, len(todo)),
        mp_context=ctx,
        initializer=configure_torch,
        initargs=(cfg.runtime.threads,),
    ) as pool:
        pending: dict[Future, tuple[str, int]] = {
            pool.submit(run_parent, cfg, seed, run_dir): ("parent", seed) for seed in by_seed
        }
        ready: list[Unit] = []
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    what, seed = pending.pop(fut)
                    res = fut.result()  # re-raises a worker's error here
                    if what == "parent":
                        steps += res["steps"]
                        ready.extend(by_seed[seed])
                    else:
                        commit(res)
                # longest units (earliest t) first keeps the workers balanced at the end
                ready.sort(key=lambda u: u.t)
                while ready and len(pending) < 2 * n_workers:
                    u = ready.pop(0)
                    pending[pool.submit(run_unit, cfg, u, run_dir)] = ("unit", u.seed)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return steps
