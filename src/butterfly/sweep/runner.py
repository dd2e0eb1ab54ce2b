"""A plain sweep: plan it, skip what is done, schedule the rest, return the outcome.

Everything around that (lock, folder, store, workers, failures, the ending) is the run
session's (:mod:`butterfly.sweep.session`); the config was resolved once at the top
(:mod:`butterfly.experiment.resolve`). Executors: in-process (``workers = 1``), a pool of
worker processes (default: one per core) or Ray. Workers return rows; the driver alone writes
the store, committing each finished unit in one transaction before it waits for the next.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from butterfly.config import ConfigError, RunConfig
from butterfly.experiment import Resolved
from butterfly.experiment.resolve import resolve
from butterfly.experiment.verdict import check_control, original_diverged
from butterfly.sweep.plan import minimum_steps, plan
from butterfly.sweep.progress import Progress
from butterfly.sweep.session import Execution, RunSession, SweepOutcome, fresh_folder
from butterfly.sweep.tasks import UnitResult


def sweep(
    resolved: Resolved,
    run_dir: Path,
    execution: Execution,
    on_unit: Callable[[UnitResult], None] | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep of a resolved config in ``run_dir``."""
    cfg = resolved.cfg
    for w in resolved.warnings:
        execution.log(f"note: {w}")
    units = plan(cfg)
    T = cfg.recipe.steps
    with RunSession(resolved, run_dir, execution) as session:
        done = session.store.finished_units()
        todo = [u for u in units if (u.seed, u.t) not in done]
        skipped = len(units) - len(todo)
        if skipped:
            session.log(f"resuming: {skipped} of {len(units)} units already finished")
        work = sum(max(T, cfg.child_end(u.t)) - u.t for u in todo)
        bar = Progress(len(units), skipped, work, T, enabled=execution.live,
                       erase=sys.stderr.isatty())  # fmt: skip
        steps = 0
        ran = 0

        def commit(res: UnitResult) -> None:
            nonlocal steps, ran
            session.store.commit_unit(
                res.seed, res.t, res.rows, res.trajectory, res.proxy, res.population,
                res.steps, res.wall_s, time.time(), res.training,
            )  # fmt: skip
            steps += res.steps
            ran += 1
            bar.unit_done(res.seed, res.t, max(T, cfg.child_end(res.t)) - res.t)
            if not bar.enabled:
                session.log(
                    f"[{bar.done}/{len(units)}] seed {res.seed} t={res.t}: {res.population} "
                    f"members, {res.steps} member-steps, {res.wall_s:.1f} s"
                )
            if on_unit is not None:
                on_unit(res)

        if todo:
            session.log(
                f"sweep '{cfg.name}': {len(units)} units ({len(cfg.seeds)} seeds x "
                f"{len(cfg.perturbation_steps())} times), population {len(units[0].members)}, "
                f"{session.workers} worker{'s' if session.workers > 1 else ''} "
                f"({execution.executor}) -> {session.run_dir}"
            )
            if resolved.census:
                session.log(resolved.census)
            try:  # (not `steps += ...`: commit() adds to steps while it runs)
                parent_steps = session.schedule(resolved, todo, commit, bar)
                steps += parent_steps
            finally:
                bar.close()
        df = session.store.results()
        session.results = df
    n_div = original_diverged(df)
    if n_div:
        execution.log(f"note: the original diverged (non-finite loss or weights) in {n_div} of "
                      f"{len(units)} populations; their rows say so (status); lower recipe.lr")  # fmt: skip
    return session.outcome(results=df, steps=steps, minimum_steps=minimum_steps(cfg),
                           units_run=ran, units_skipped=skipped, control_ok=not check_control(df),
                           units_pending=len(todo) - ran if session.detached else 0)  # fmt: skip


def run_sweep(
    cfg: RunConfig | Resolved,
    run_dir: str | Path,
    execution: Execution | None = None,
    on_unit: Callable[[UnitResult], None] | None = None,
    **options: Any,
) -> SweepOutcome:
    """Run (or resume) the plain sweep of ``cfg`` in ``run_dir`` and return its outcome.

    ``execution`` (or its fields as keywords: ``workers``, ``quiet``, ``executor``,
    ``address``, ``progress``, ``force_new``) says how it runs. A config with a ``pretrain``
    or ``threshold`` section is a pipeline: run it with
    :func:`butterfly.sweep.pipelines.run_pipeline`.
    """
    execution = execution or Execution(**options)
    given = cfg.cfg if isinstance(cfg, Resolved) else cfg
    if given.pretrain is not None or given.threshold is not None:
        raise ConfigError(
            "a config with a pretrain or threshold section is a pipeline: run it with "
            "butterfly.sweep.pipelines.run_pipeline (what `butterfly run` does)"
        )
    resolved = cfg if isinstance(cfg, Resolved) else resolve(cfg, Path(run_dir))
    for note in resolved.notes:
        execution.log(note)
    return sweep(resolved, fresh_folder(resolved, Path(run_dir), execution), execution, on_unit)
