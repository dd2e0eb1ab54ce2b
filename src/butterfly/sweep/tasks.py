"""The two tasks executors run, in-process or in a worker: a parent per seed, a unit per
(seed, t). Each reads the parent's checkpoints, calls the experiment, writes checkpoints
atomically and returns rows; only the driver writes the store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from butterfly.checkpoint import damaged, load_checkpoint, save_checkpoint, set_aside
from butterfly.experiment import Resolved, make_setup, run_population, train_parent
from butterfly.experiment.lyapunov import linearised, lyapunov_exponent
from butterfly.experiment.measure import measure_children, permutation_proxy_rows
from butterfly.metrics.running import running_of
from butterfly.sweep.plan import Unit
from butterfly.sweep.rundir import member_path, parent_path
from butterfly.sweep.worker import may_write, progress_queue
from butterfly.train.population import RUNNING


def run_parent(
    resolved: Resolved, seed: int, run_dir: Path, steps: list[int] | None = None
) -> dict[str, Any]:
    """Train the parent of ``seed`` once, saving its full state at every perturbation time t
    (or at ``steps``, e.g. pre-training checkpoints; the last may be the final step T).

    Resumes from the latest saved state; never retrains past what is saved.
    """
    start = time.perf_counter()
    ts = sorted(steps) if steps is not None else resolved.cfg.perturbation_steps()
    for t in ts:  # a damaged saved state is set aside and made again, bit for bit
        path = parent_path(run_dir, seed, t)
        if path.is_file() and damaged(path) is not None:
            set_aside(path)
    missing = [t for t in ts if not parent_path(run_dir, seed, t).is_file()]
    if not missing:
        return {"seed": seed, "steps": 0, "wall_s": time.perf_counter() - start}
    setup = make_setup(resolved, seed, run_dir)
    saved = [t for t in ts if t < missing[0]]
    resume = None
    if saved:
        params, state, _ = load_checkpoint(parent_path(run_dir, seed, saved[-1]))
        resume = (params, state, saved[-1])

    def save(step: int, params: Any, state: Any) -> None:
        path = parent_path(run_dir, seed, step)
        guard_write(run_dir)
        if not path.is_file():
            meta = {"seed": seed, "step": step, "model_spec": setup.model_spec, "role": "parent"}
            save_checkpoint(path, params, state, meta)

    trained = train_parent(setup, missing, resume, save)
    return {"seed": seed, "steps": trained, "wall_s": time.perf_counter() - start}


class DriverGone(RuntimeError):
    """The driver of this worker died: nothing more is written into its run folder."""


def guard_write(run_dir: Path) -> None:
    """Refuse to write into ``run_dir`` from a worker whose driver (the lock holder) is gone."""
    if not may_write():
        raise DriverGone(f"the driver of {run_dir} is gone; not writing into it")


@dataclass
class UnitResult:
    seed: int
    t: int
    rows: list[dict[str, Any]]
    trajectory: list[dict[str, Any]]
    proxy: list[dict[str, Any]]
    steps: int
    wall_s: float
    population: int
    training: list[dict[str, Any]]


def run_unit(
    resolved: Resolved, unit: Unit, run_dir: Path, reporter: Any = None
) -> UnitResult:
    """Train one population from the parent's state at t and measure every child."""
    start = time.perf_counter()
    cfg = resolved.cfg
    setup = make_setup(resolved, unit.seed, run_dir)
    params_t, state_t, _ = load_checkpoint(parent_path(run_dir, unit.seed, unit.t))
    params_t = {k: v.to(setup.device) for k, v in params_t.items()}
    state_t = {s: {k: v.to(setup.device) for k, v in d.items()} for s, d in state_t.items()}

    reporter = reporter if reporter is not None else progress_queue()
    on_step = None
    if reporter is not None:
        every = max(1, (max(cfg.child_end(unit.t), cfg.recipe.steps) - unit.t) // 50)

        def on_step(step: int) -> None:
            if step % every == 0:
                reporter.put((unit.seed, unit.t, step))

    run = run_population(setup, unit.members, unit.t, params_t, state_t, on_step)
    guard_write(run_dir)
    if cfg.runtime.checkpoints:
        for tm in run.members:
            if tm.final is None:  # not trained: its perturbation was undefined
                continue
            m = tm.member
            meta = {
                "model_spec": setup.model_spec, "seed": unit.seed, "t": unit.t,
                "step": tm.end_step, "member": m.name, "kind": m.kind, "sigma": m.sigma,
                "fraction": m.fraction, "direction": m.direction,
                "data": cfg.data.model_dump(), "eval": cfg.eval.model_dump(),
            }  # fmt: skip
            own = running_of(tm.final)  # BatchNorm's running statistics, kept beside
            save_checkpoint(member_path(run_dir, unit.seed, unit.t, m.name), tm.final,
                            None if own is None else {RUNNING: own}, meta)  # fmt: skip
    rows = measure_children(setup.comparer, setup.init, unit.seed, cfg.recipe.steps, unit.t,
                            run.members, run.originals)  # fmt: skip
    original = run.original
    if cfg.eval.lyapunov and not original.diverged:
        result = lyapunov_exponent(setup, params_t, state_t, unit.t, until=cfg.recipe.steps,
                                   every=cfg.eval.lyapunov_every, seed=unit.seed)  # fmt: skip
        linearised(rows, run.trajectory, result)
    proxy: list[dict[str, Any]] = []
    first_t = unit.t == cfg.perturbation_steps()[0]
    if cfg.eval.proxy_fractions and first_t and not original.diverged and setup.comparer.aligns:
        assert original.final is not None
        proxy = permutation_proxy_rows(setup.comparer, unit.seed, original.final)
    wall = time.perf_counter() - start
    for r in rows:
        r["unit_wall_s"] = wall
    return UnitResult(unit.seed, unit.t, rows, run.trajectory, proxy, run.member_steps, wall,
                      len(unit.members), run.training)  # fmt: skip
