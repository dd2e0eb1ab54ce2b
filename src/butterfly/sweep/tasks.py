"""The tasks executors run, in-process or in a worker: a seed's units trained together with
one original (:func:`run_seed`, the local and Ray executors), or a parent per seed and a unit
per (seed, t) from the parent's checkpoints (:func:`run_parent`, :func:`run_unit`: SLURM, and
runs that chunk their populations). Each calls the experiment, writes checkpoints atomically
and returns rows; only the driver writes the store."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from butterfly.checkpoint import damaged, load_checkpoint, save_checkpoint, set_aside
from butterfly.experiment import Resolved, make_setup, run_population, train_parent
from butterfly.experiment.lyapunov import linearised, lyapunov_exponent
from butterfly.experiment.measure import measure_children, permutation_proxy_rows
from butterfly.experiment.members import TrainedMember
from butterfly.experiment.spawn import PopulationRun, run_joined
from butterfly.metrics.running import running_of
from butterfly.sweep.plan import SeedTask, Unit
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
    original: str = ""  # a digest of the original's weights at T (pieces of a seed must agree)


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
    return unit_result(resolved, setup, unit.seed, unit.t, run, run_dir, (params_t, state_t),
                       start)  # fmt: skip


def unit_result(
    resolved: Resolved,
    setup: Any,
    seed: int,
    t: int,
    run: PopulationRun,
    run_dir: Path,
    state_t: tuple[Any, Any] | None,
    start: float,
    reference: bool = True,
) -> UnitResult:
    """A trained population's checkpoints (``runtime.checkpoints``), result rows, Lyapunov
    exponent (from the original's state at t, ``state_t``) and permutation proxy. Without
    ``reference`` (a later piece of a seed), the original is not saved and has no proxy."""
    cfg = resolved.cfg
    guard_write(run_dir)
    if cfg.runtime.checkpoints:
        for tm in run.members[0 if reference else 1 :]:
            if tm.final is None:  # not trained: its perturbation was undefined
                continue
            m = tm.member
            meta = {
                "model_spec": setup.model_spec, "seed": seed, "t": t,
                "step": tm.end_step, "member": m.name, "kind": m.kind, "sigma": m.sigma,
                "fraction": m.fraction, "direction": m.direction,
                "data": cfg.data.model_dump(), "eval": cfg.eval.model_dump(),
            }  # fmt: skip
            own = running_of(tm.final)  # BatchNorm's running statistics, kept beside
            save_checkpoint(member_path(run_dir, seed, t, m.name), tm.final,
                            None if own is None else {RUNNING: own}, meta)  # fmt: skip
    rows = measure_children(setup.comparer, setup.init, seed, cfg.recipe.steps, t,
                            run.members, run.originals)  # fmt: skip
    original = run.original
    if cfg.eval.lyapunov and not original.diverged and state_t is not None:
        result = lyapunov_exponent(setup, state_t[0], state_t[1], t, until=cfg.recipe.steps,
                                   every=cfg.eval.lyapunov_every, seed=seed)  # fmt: skip
        linearised(rows, run.trajectory, result)
    proxy: list[dict[str, Any]] = []
    first_t = t == cfg.perturbation_steps()[0]
    if (cfg.eval.proxy_fractions and first_t and reference and not original.diverged
            and setup.comparer.aligns):  # fmt: skip
        assert original.final is not None
        proxy = permutation_proxy_rows(setup.comparer, seed, original.final)
    wall = time.perf_counter() - start
    for r in rows:
        r["unit_wall_s"] = wall
    return UnitResult(seed, t, rows, run.trajectory, proxy, run.member_steps, wall,
                      len(run.members), run.training)  # fmt: skip


def digest(tm: TrainedMember) -> str:
    """A digest of a trained member's weights (every bit), or of its divergence."""
    if tm.final is None:
        return "untrained"
    h = hashlib.sha256()
    for k in sorted(tm.final):
        v = tm.final[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def run_seed(
    resolved: Resolved, task: SeedTask, run_dir: Path, reporter: Any = None
) -> list[UnitResult]:
    """Train a seed's units as one population with one original (members join at their t;
    :func:`~butterfly.experiment.spawn.run_joined`) and measure every child, one result per
    unit. The original starts from the latest parent state saved at or before the first t
    (by an earlier, interrupted run), else from θ0; piece 0 saves its state at every
    perturbation time it passes, so a run stopped later resumes from there."""
    start = time.perf_counter()
    cfg = resolved.cfg
    seed = task.seed
    ts = [u.t for u in task.units]
    steps = sorted({*cfg.perturbation_steps(), *ts})
    begin = None
    for s in reversed([s for s in steps if s <= min(ts)]):
        path = parent_path(run_dir, seed, s)
        if path.is_file() and damaged(path) is not None:
            set_aside(path)
        if path.is_file():
            begin = (*load_checkpoint(path)[:2], s)
            break
    setup = make_setup(resolved, seed, run_dir)
    if begin is not None:
        params, state, s0 = begin
        order = [*(k for k in setup.init if k in params), *(k for k in params if k not in setup.init)]
        begin = ({k: params[k].to(setup.device) for k in order},  # θ0's order, not the file's
                 {s: {k: v.to(setup.device) for k, v in d.items()} for s, d in state.items()},
                 s0)  # fmt: skip
    first = 0 if begin is None else begin[2]
    reference = task.piece == 0
    missing = tuple(s for s in steps if s >= first and not parent_path(run_dir, seed, s).is_file())

    def save(step: int, params: Any, state: Any) -> None:
        path = parent_path(run_dir, seed, step)
        guard_write(run_dir)
        if not path.is_file():
            meta = {"seed": seed, "step": step, "model_spec": setup.model_spec, "role": "parent"}
            save_checkpoint(path, params, state, meta)

    reporter = reporter if reporter is not None else progress_queue()
    on_step = None
    if reporter is not None:
        end = max(max(cfg.child_end(t), cfg.recipe.steps) for t in ts)
        every = max(1, (end - min(ts)) // 50)

        def on_step(step: int) -> None:
            if step % every == 0:
                for t in ts:
                    if t < step:
                        reporter.put((seed, t, step))

    joined = run_joined(setup, [(u.t, u.members) for u in task.units], begin,
                        save if reference else None, missing if reference else (), on_step,
                        reference=reference, keep_states=cfg.eval.lyapunov and reference)  # fmt: skip
    results = [unit_result(resolved, setup, seed, u.t, joined.runs[u.t], run_dir,
                           joined.states.get(u.t), start, reference)
               for u in task.units]  # fmt: skip
    if task.pieces > 1:  # the driver checks that every piece's original ended the same
        mark = digest(joined.runs[ts[0]].original)
        for r in results:
            r.original = mark
    return results
