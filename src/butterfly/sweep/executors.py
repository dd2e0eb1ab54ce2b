"""Where units run: in this process, in a pool of worker processes, or as Ray tasks.

Every executor returns ``concurrent.futures.Future`` objects, so one scheduling loop
(:func:`butterfly.sweep.runner.schedule`) drives them all. Workers only compute and return
rows; the driver alone writes the store.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

from butterfly.config import ConfigError, RunConfig
from butterfly.experiment import configure_torch
from butterfly.sweep.progress import Progress


class Executor(Protocol):
    slots: int
    reporter: Any  # passed to run_unit; has .put((seed, t, step)), or None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future: ...
    def drain(self, bar: Progress) -> None: ...
    def shutdown(self) -> None: ...


class _ListReporter:
    """In-process reporter: a plain list of (seed, t, step)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, int]] = []

    def put(self, item: tuple[int, int, int]) -> None:
        self.items.append(item)


class InlineExecutor:
    """Runs each task at once in this process (``workers = 1``)."""

    slots = 1

    def __init__(self, report: bool):
        self.reporter = _ListReporter() if report else None
        self._bar: Progress | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # reported by the scheduler, which records the failure
            fut.set_exception(err)
        return fut

    def drain(self, bar: Progress) -> None:
        if self.reporter is not None:
            for item in self.reporter.items:
                bar.step(*item)
            self.reporter.items.clear()

    def shutdown(self) -> None:
        pass


class PoolExecutor:
    """A pool of ``n`` spawned worker processes, ``runtime.threads`` intra-op threads each."""

    def __init__(self, cfg: RunConfig, n: int, report: bool):
        ctx = mp.get_context("spawn")
        self.slots = n
        self._manager = ctx.Manager() if report else None
        self.reporter = self._manager.Queue() if self._manager is not None else None
        self._pool = ProcessPoolExecutor(
            max_workers=n, mp_context=ctx, initializer=configure_torch,
            initargs=(cfg.runtime.threads,),
        )  # fmt: skip

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def drain(self, bar: Progress) -> None:
        if self.reporter is None:
            return
        while True:
            try:
                bar.step(*self.reporter.get_nowait())
            except queue.Empty:
                return

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._manager is not None:
            self._manager.shutdown()


class RayExecutor:
    """Units as Ray tasks (``pip install 'butterfly[ray]'``), retried when a worker is lost."""

    def __init__(self, cfg: RunConfig, n: int, address: str | None):
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'butterfly[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(
                address=address, include_dashboard=False, log_to_driver=False,
                configure_logging=False, **({} if address else {"num_cpus": n}),
            )  # fmt: skip
            self._started = True
        self.slots = max(1, int(ray.cluster_resources().get("CPU", n)))
        self.reporter = None
        threads = cfg.runtime.threads

        def call(fn: Callable[..., Any], *args: Any) -> Any:
            configure_torch(threads)
            return fn(*args)

        self._remote = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(call)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._remote.remote(fn, *args).future()

    def drain(self, bar: Progress) -> None:
        pass

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(
    kind: str, cfg: RunConfig, n_workers: int, address: str | None, report: bool
) -> Executor:
    if kind == "ray":
        return RayExecutor(cfg, n_workers, address)
    if kind != "local":
        raise ConfigError(f"unknown executor '{kind}'; choose local or ray")
    if n_workers == 1:
        return InlineExecutor(report)
    return PoolExecutor(cfg, n_workers, report)
