"""Where units run: in this process, in a pool of worker processes, or as Ray tasks.

Every executor returns ``concurrent.futures.Future`` objects, so one scheduling loop
(:func:`butterfly.sweep.runner.schedule`) drives them all. Workers only compute and return
rows; the driver alone writes the store.

A new executor plugs in here: a class with the :class:`Executor` interface (``slots``,
``reporter``, ``submit``, ``drain``, ``restart``, ``shutdown``), a constructor
``(resolved, n_workers, address, report)`` and a ``check(address)`` class method that refuses,
before anything is written, an executor that cannot start; then one entry in
:data:`EXECUTORS`. The run session (:mod:`butterfly.sweep.session`) checks it, makes it and
shuts it down; the scheduler submits the two tasks of :mod:`butterfly.sweep.tasks` to it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, NamedTuple, Protocol

from butterfly.config import ConfigError
from butterfly.experiment import Resolved, configure_torch
from butterfly.sweep.progress import Progress
from butterfly.sweep.slurm import check_slurm, make_slurm
from butterfly.sweep.worker import init_worker


class Executor(Protocol):
    slots: int
    reporter: Any  # passed to run_unit; has .put((seed, t, step)), or None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future: ...
    def drain(self, bar: Progress) -> None: ...
    def restart(self) -> None: ...
    def shutdown(self, abort: bool = False) -> None: ...


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

    def restart(self) -> None:
        pass

    def shutdown(self, abort: bool = False) -> None:
        pass


class PoolExecutor:
    """A pool of ``n`` spawned worker processes, ``runtime.threads`` intra-op threads each.

    Workers exit when the driver dies (:mod:`butterfly.sweep.worker`); if a worker dies, the
    pool is started again (:meth:`restart`) and the scheduler resubmits what was in flight.
    """

    reporter = None  # workers report progress through the queue they were given at start

    def __init__(self, resolved: Resolved, n: int, report: bool):
        self._ctx = mp.get_context("spawn")
        self.slots = n
        self._threads = resolved.cfg.runtime.threads
        self._tf32 = resolved.cfg.runtime.tf32
        self._gpus = resolved.gpus()
        self._counter = self._ctx.Value("i", 0) if self._gpus else None
        self._queue = self._ctx.Queue() if report else None
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.slots, mp_context=self._ctx, initializer=init_worker,
            initargs=(self._threads, os.getpid(), self._queue, self._tf32, self._gpus,
                      self._counter),
        )  # fmt: skip

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def restart(self) -> None:
        """A fresh pool after a worker died (the old one is broken for good)."""
        self._abort()
        self._pool = self._start()

    def drain(self, bar: Progress) -> None:
        if self._queue is None:
            return
        while True:
            try:
                bar.step(*self._queue.get_nowait())
            except queue.Empty:
                return

    def _abort(self) -> None:
        for p in list(getattr(self._pool, "_processes", {}).values()):
            if p.is_alive():
                p.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def shutdown(self, abort: bool = False) -> None:
        """Wait for the workers to finish (``abort``: stop them now, e.g. on Ctrl-C)."""
        if abort:
            self._abort()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._queue is not None:
            self._queue.close()
            self._queue.join_thread()


class RayExecutor:
    """Units as Ray tasks (``pip install 'butterfly[ray]'``), retried when a worker is lost."""

    def __init__(self, resolved: Resolved, n: int, address: str | None, report: bool = False):
        cfg = resolved.cfg
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'butterfly[ray]'") from None
        self._ray = ray
        self._started = False
        self.options = ray_resources(resolved)
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=False,
                    configure_logging=False, **({} if address else {"num_cpus": n}),
                )  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError(
                    f"cannot reach the Ray cluster at {address or 'a new local instance'} "
                    f"({first}); check --address (run `ray status` on the head node)"
                ) from None
            self._started = True
        total = ray.cluster_resources()
        by = [total.get("CPU", n) / self.options["num_cpus"]]
        if self.options["num_gpus"]:
            by.append(total.get("GPU", 0) / self.options["num_gpus"])
        self.slots = max(1, int(min(by)))
        self.reporter = None
        threads, tf32 = cfg.runtime.threads, cfg.runtime.tf32

        def call(fn: Callable[..., Any], *args: Any) -> Any:
            configure_torch(threads, tf32)
            return fn(*args)

        self._remote = ray.remote(**self.options, max_retries=3, retry_exceptions=False)(call)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._remote.remote(fn, *args).future()

    def drain(self, bar: Progress) -> None:
        pass

    def restart(self) -> None:
        pass  # Ray retries a task whose worker was lost by itself (max_retries)

    def shutdown(self, abort: bool = False) -> None:
        if self._started:
            self._ray.shutdown()


def ray_resources(resolved: Resolved) -> dict[str, float]:
    """What each unit asks Ray for: ``runtime.ray_cpus`` CPUs and ``runtime.ray_gpus`` GPUs
    (default: one GPU when the run is on CUDA, none on CPU), so a GPU cluster places one unit
    per GPU."""
    rt = resolved.cfg.runtime
    gpus = rt.ray_gpus
    if gpus is None:
        gpus = 1.0 if resolved.cuda else 0.0
    return {"num_cpus": float(rt.ray_cpus), "num_gpus": float(gpus)}


def check_ray(address: str | None, timeout: float = 5.0) -> None:
    """Refuse Ray when it is not installed, or an address nothing answers at (Ray itself would
    wait for minutes)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'butterfly[ray]' (in a checkout: "
            ".venv/bin/pip install -e '.[ray]')"
        ) from None
    if not address or address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or err}); check --address "
            "(`ray status` on the head node prints it)"
        ) from None


def local_executor(resolved: Resolved, execution: Any, n: int, report: bool) -> Executor:
    """This process (one worker) or a pool of worker processes."""
    return InlineExecutor(report) if n == 1 else PoolExecutor(resolved, n, report)


def ray_executor(resolved: Resolved, execution: Any, n: int, report: bool) -> Executor:
    return RayExecutor(resolved, n, execution.address, report)


def _no_check(execution: Any, resolved: Resolved) -> None:
    pass


class ExecutorKind(NamedTuple):
    """An executor: how to make one (from the resolved run, the :class:`Execution`, the
    number of workers and whether to report progress), how to check before anything is
    written that it can start, and whether its workers run elsewhere (objects defined only in
    this process cannot run there)."""

    make: Callable[[Resolved, Any, int, bool], Executor]
    check: Callable[[Any, Resolved], None]
    remote: bool


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind(local_executor, _no_check, remote=False),
    "ray": ExecutorKind(ray_executor, lambda ex, r: check_ray(ex.address), remote=True),
    "slurm": ExecutorKind(make_slurm, lambda ex, r: check_slurm(r.cfg.runtime.slurm), remote=True),
}


def executor_kind(kind: str) -> ExecutorKind:
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor '{kind}'; choose {', '.join(EXECUTORS)}")
    return EXECUTORS[kind]


def check_executor(execution: Any, resolved: Resolved) -> None:
    """Refuse, before anything is written, an executor that cannot start."""
    executor_kind(execution.executor).check(execution, resolved)


def make_executor(resolved: Resolved, execution: Any, n_workers: int, report: bool) -> Executor:
    return executor_kind(execution.executor).make(resolved, execution, n_workers, report)
