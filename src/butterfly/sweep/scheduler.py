"""The scheduling loop every executor is driven by: parents first (one task per seed), then each
parent's units as soon as it is done; a worker process that dies is replaced and its tasks are
submitted again; every finished unit is handed to ``commit`` before the next wait."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from butterfly.experiment import Resolved
from butterfly.sweep.executors import Executor
from butterfly.sweep.plan import Unit
from butterfly.sweep.progress import Progress
from butterfly.sweep.tasks import UnitResult, run_parent, run_unit


def _by_seed(units: list[Unit]) -> dict[int, list[Unit]]:
    out: dict[int, list[Unit]] = {}
    for u in units:
        out.setdefault(u.seed, []).append(u)
    return out


RETRIES = 3  # a task whose worker process died is run again this many times at most


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
    ``commit``).

    A worker process that dies (killed, out of memory) breaks the whole local pool: the pool is
    started again and every task that was in flight is submitted again, each at most
    :data:`RETRIES` times, so one lost worker costs a rerun of its unit, not a failed sweep.
    """
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
