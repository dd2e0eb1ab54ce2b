"""The scheduling loop every local or Ray executor is driven by.

On CPU a seed's units train as one population with one original (one task per seed, or per
piece of a seed whose children are split over workers; :func:`schedule_seeds`). Where
populations are chunked (``runtime.max_population``, CUDA: a chunk's kernels may depend on its
size), parents first (one task per seed), then each parent's units as soon as it is done
(:func:`schedule`). A worker process that dies is replaced and its tasks are submitted again;
every finished unit is handed to ``commit`` before the next wait."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Generic, TypeVar

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


T = TypeVar("T")
RETRIES = 3  # a task whose worker process died is run again this many times at most


class InFlight(Generic[T]):
    """The tasks in flight on a pool, and what both scheduling loops do with them: wait for
    the next to finish, and when a worker process dies (killed, out of memory), which breaks
    the whole local pool, start the pool again and submit every task that was in flight again,
    each at most :data:`RETRIES` times; ``give_up(task, error)`` is told of one that died more
    often. Leaving the ``with`` block by an error cancels what is still queued."""

    def __init__(
        self,
        pool: Executor,
        bar: Progress,
        start: Callable[[T], Future],
        key: Callable[[T], Hashable],
        give_up: Callable[[T, BaseException], None],
    ):
        self.pool, self.bar, self.start, self.key, self.give_up = pool, bar, start, key, give_up
        self.pending: dict[Future, T] = {}
        self.tries: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self.pending)

    def __enter__(self) -> InFlight[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            for fut in self.pending:
                fut.cancel()

    def submit(self, task: T) -> None:
        self.pending[self.start(task)] = task

    def finished(self) -> list[tuple[T, Any, BaseException | None]]:
        """The tasks done since the last call, each with its result or its error (none when
        the pool broke: its tasks were submitted again). Ctrl-C in a worker is raised here."""
        done, _ = wait(self.pending, timeout=0.25, return_when=FIRST_COMPLETED)
        self.pool.drain(self.bar)
        if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
            lost = list(self.pending.values())  # a broken pool fails everything in flight
            self.pending.clear()
            self.pool.restart()
            for task in lost:
                self.tries[self.key(task)] += 1
                if self.tries[self.key(task)] > RETRIES:
                    self.give_up(task, RuntimeError(
                        f"its worker process died {RETRIES + 1} times (killed, or out of "
                        "memory?)"))  # fmt: skip
                else:
                    self.submit(task)
            return []
        out = []
        for fut in done:
            task, err = self.pending.pop(fut), fut.exception()
            if isinstance(err, KeyboardInterrupt):
                raise err
            out.append((task, None if err is not None else fut.result(), err))
        return out


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

    def start(task: Task) -> Future:
        what, seed, _, unit = task
        if what == "parent":
            return pool.submit(run_parent, resolved, seed, run_dir)
        return pool.submit(run_unit, resolved, unit, run_dir, pool.reporter)

    ready: list[Unit] = []
    limit = 2 * pool.slots
    with InFlight[Task](
        pool, bar, start, key=lambda task: task[1:3],
        give_up=lambda task, err: fail(task[1], task[2], err),
    ) as flight:  # fmt: skip
        for seed in by_seed:
            flight.submit(("parent", seed, None, None))
        while flight or ready:
            while ready and len(flight) < limit:
                u = ready.pop(0)
                flight.submit(("unit", u.seed, u.t, u))
            if not flight:
                continue
            for (what, seed, t, _), res, err in flight.finished():
                if err is not None:
                    fail(seed, t, err)
                elif what == "parent":
                    steps += res["steps"]
                    ready.extend(by_seed[seed])
                    ready.sort(key=lambda u: u.t)
                else:
                    commit(res)
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

    def lost(task: SeedTask, err: BaseException) -> None:
        failed.add(task.seed)
        fail(task.seed, task.units[0].t, err)

    def start(task: SeedTask) -> Future:
        return pool.submit(run_seed, resolved, task, run_dir, pool.reporter)

    with InFlight[SeedTask](
        pool, bar, start, key=lambda task: (task.seed, task.piece), give_up=lost
    ) as flight:
        for task in tasks:
            flight.submit(task)
        while flight:
            for task, results, err in flight.finished():
                if err is not None:
                    lost(task, err)
                    continue
                parts.setdefault(task.seed, []).append((task.piece, results))
                if task.seed in failed or len(parts[task.seed]) < count[task.seed]:
                    continue
                done = [r for _, r in sorted(parts.pop(task.seed), key=lambda p: p[0])]
                try:
                    merged = merge_seed(task.seed, done, full)
                except NotDeterministic as e:
                    failed.add(task.seed)
                    fail(task.seed, done[0][0].t, e)
                    continue
                for result in merged:
                    commit(result)


class NotDeterministic(RuntimeError):
    """The pieces of one seed trained originals that did not end bit-identical."""


def merge_seed(
    seed: int, pieces: list[list[UnitResult]], units: Mapping[tuple[int, int], Unit]
) -> list[UnitResult]:
    """One seed's unit results, t by t, from its pieces' results (piece 0 first), after checking
    that every piece's original ended bit-identical (:class:`NotDeterministic` if not)."""
    marks = {results[0].original for results in pieces if results}
    if len(marks) > 1:
        raise NotDeterministic(
            f"the original of seed {seed} did not end bit-identical in the {len(pieces)} pieces "
            "its children were split into: training is not deterministic"
        )
    by_t: dict[int, list[UnitResult]] = {}
    for results in pieces:
        for r in results:
            by_t.setdefault(r.t, []).append(r)
    return [merge(units[(seed, t)], by_t[t]) for t in sorted(by_t)]


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
