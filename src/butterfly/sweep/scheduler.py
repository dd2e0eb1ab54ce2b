"""The scheduling loop every local or Ray executor is driven by.

On CPU a seed's units train as one population with one original (one task per seed, or per
piece of a seed whose children are split over workers; :func:`schedule_seeds`). Where
populations are chunked (``runtime.max_population``, CUDA: a chunk's kernels may depend on its
size), parents first (one task per seed), then each parent's units as soon as it is done
(:func:`schedule`). A worker process that dies is replaced and its tasks are submitted again;
every finished unit is handed to ``commit`` before the next wait."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from butterfly.experiment import Resolved
from butterfly.sweep.executors import Executor
from butterfly.sweep.plan import SeedTask, Unit, seed_tasks
from butterfly.sweep.progress import Progress
from butterfly.sweep.tasks import UnitResult, run_parent, run_seed, run_unit


def _by_seed(units: list[Unit]) -> dict[int, list[Unit]]:
    out: dict[int, list[Unit]] = {}
    for u in units:
        out.setdefault(u.seed, []).append(u)
    return out


RETRIES = 3  # a task whose worker process died is run again this many times at most


def joins(resolved: Resolved) -> bool:
    """Whether a seed's units train together with one original: on CPU without a cap on the
    population (a capped or CUDA run trains each t's population in chunks of its own)."""
    return not resolved.cuda and resolved.cfg.runtime.max_population is None


def schedule(
    resolved: Resolved,
    todo: list[Unit],
    run_dir: Path,
    pool: Executor,
    commit: Callable[[UnitResult], None],
    fail: Callable[[int, int | None, BaseException], None],
    bar: Progress,
) -> int:
    """Parents first (one task per seed); each parent's units are queued when it finishes,
    earliest t (longest) first. Returns the parents' steps (units' steps are counted by
    ``commit``). Runs that join populations go to :func:`schedule_seeds`.

    A worker process that dies (killed, out of memory) breaks the whole local pool: the pool is
    started again and every task that was in flight is submitted again, each at most
    :data:`RETRIES` times, so one lost worker costs a rerun of its unit, not a failed sweep.
    """
    if joins(resolved):
        schedule_seeds(resolved, todo, run_dir, pool, commit, fail, bar)
        return 0
    by_seed = _by_seed(todo)
    steps = 0
    Task = tuple[str, int, int | None, Unit | None]
    pending: dict[Future, Task] = {}
    tries: dict[tuple[int, int | None], int] = {}

    def submit(task: Task) -> None:
        what, seed, _, unit = task
        if what == "parent":
            fut = pool.submit(run_parent, resolved, seed, run_dir)
        else:
            fut = pool.submit(run_unit, resolved, unit, run_dir, pool.reporter)
        pending[fut] = task

    for seed in by_seed:
        submit(("parent", seed, None, None))
    ready: list[Unit] = []
    limit = 2 * pool.slots
    try:
        while pending or ready:
            while ready and len(pending) < limit:
                u = ready.pop(0)
                submit(("unit", u.seed, u.t, u))
            if not pending:
                continue
            finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            pool.drain(bar)
            broken = [f for f in finished if isinstance(f.exception(), BrokenProcessPool)]
            if broken:
                lost = list(pending.values())  # a broken pool fails everything in flight
                pending.clear()
                pool.restart()
                for task in lost:
                    key = (task[1], task[2])
                    tries[key] = tries.get(key, 0) + 1
                    if tries[key] > RETRIES:
                        fail(task[1], task[2], RuntimeError(
                            f"its worker process died {RETRIES + 1} times (killed, or out of "
                            "memory?)"))  # fmt: skip
                    else:
                        submit(task)
                continue
            for fut in finished:
                what, seed, t, _ = pending.pop(fut)
                err = fut.exception()
                if err is not None:
                    if isinstance(err, KeyboardInterrupt):
                        raise err
                    fail(seed, t, err)
                    continue
                res = fut.result()
                if what == "parent":
                    steps += res["steps"]
                    ready.extend(by_seed[seed])
                    ready.sort(key=lambda u: u.t)
                else:
                    commit(res)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    return steps


def schedule_seeds(
    resolved: Resolved,
    todo: list[Unit],
    run_dir: Path,
    pool: Executor,
    commit: Callable[[UnitResult], None],
    fail: Callable[[int, int | None, BaseException], None],
    bar: Progress,
) -> None:
    """One task per seed (or per piece of a seed, :func:`~butterfly.sweep.plan.seed_tasks`),
    largest first; a seed's units are committed when all its pieces are done, each unit's
    pieces merged into one result (rows in the unit's member order) after checking that every
    piece's original ended bit-identical. A failed piece fails its seed's units (they run
    again when the sweep is resumed)."""
    tasks = seed_tasks(todo, pool.slots, resolved.cfg.recipe.steps,
                       split=not resolved.cfg.eval.lyapunov)  # fmt: skip
    count = Counter(task.seed for task in tasks)
    full = {(u.seed, u.t): u for u in todo}
    parts: dict[int, list[tuple[int, list[UnitResult]]]] = {}  # seed: (piece, its results)
    failed: set[int] = set()
    pending: dict[Future, SeedTask] = {}
    tries: dict[tuple[int, int], int] = {}

    def submit(task: SeedTask) -> None:
        pending[pool.submit(run_seed, resolved, task, run_dir, pool.reporter)] = task

    for task in tasks:
        submit(task)
    try:
        while pending:
            finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            pool.drain(bar)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in finished):
                lost = list(pending.values())  # a broken pool fails everything in flight
                pending.clear()
                pool.restart()
                for task in lost:
                    key = (task.seed, task.piece)
                    tries[key] = tries.get(key, 0) + 1
                    if tries[key] > RETRIES:
                        failed.add(task.seed)
                        fail(task.seed, task.units[0].t, RuntimeError(
                            f"its worker process died {RETRIES + 1} times (killed, or out of "
                            "memory?)"))  # fmt: skip
                    else:
                        submit(task)
                continue
            for fut in finished:
                task = pending.pop(fut)
                err = fut.exception()
                if err is not None:
                    if isinstance(err, KeyboardInterrupt):
                        raise err
                    failed.add(task.seed)
                    fail(task.seed, task.units[0].t, err)
                    continue
                parts.setdefault(task.seed, []).append((task.piece, fut.result()))
                if task.seed in failed or len(parts[task.seed]) < count[task.seed]:
                    continue
                done = [results for _, results in sorted(parts.pop(task.seed),
                                                         key=lambda p: p[0])]  # fmt: skip
                marks = {results[0].original for results in done if results}
                if len(marks) > 1:
                    failed.add(task.seed)
                    fail(task.seed, done[0][0].t, RuntimeError(
                        f"the original of seed {task.seed} did not end bit-identical in the "
                        f"{len(done)} pieces its children were split into: training is not "
                        "deterministic"))  # fmt: skip
                    continue
                by_t: dict[int, list[UnitResult]] = {}
                for results in done:
                    for r in results:
                        by_t.setdefault(r.t, []).append(r)
                for t in sorted(by_t):
                    commit(merge(full[(task.seed, t)], by_t[t]))
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def merge(unit: Unit, pieces: list[UnitResult]) -> UnitResult:
    """One unit's result from its pieces (piece 0 first): the rows of every child in the
    unit's member order, piece 0's training curve and proxy, the member-steps of all."""
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    order = {m.name: i for i, m in enumerate(unit.members)}
    rows = sorted((r for p in pieces for r in p.rows), key=lambda r: order[r["member"]])
    wall = max(p.wall_s for p in pieces)
    for r in rows:
        r["unit_wall_s"] = wall
    return UnitResult(
        first.seed, first.t, rows, [r for p in pieces for r in p.trajectory], first.proxy,
        sum(p.steps for p in pieces), wall, len(unit.members), first.training, first.original,
    )  # fmt: skip
