"""The run session: what every pipeline does around its own work, written once.

A pipeline (a plain sweep, a threshold search, fine-tuning) opens one :class:`RunSession` on
its run folder with a resolved config and an :class:`Execution`, and inside it does only what
is its own (plan and schedule units; rounds; two stages). The session owns the rest:

* before anything is written: the executor can start, and objects that exist only in this
  process are not sent to other machines;
* the folder's lock, the folder itself (config saved, a changed config refused), data given
  from Python written into it, torch's switches, the number of workers;
* the store and its meta (config, pipeline, environment);
* :meth:`RunSession.fail` (a failed unit is recorded and the others go on), the executor and
  :meth:`RunSession.schedule`;
* the ending: the executor shut down (at once on Ctrl-C), the store closed, ``results.csv``
  written, the lock released, and :class:`SweepFailed` when some units failed.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

from butterfly.atomic import atomic_path
from butterfly.config import STORED, ConfigError, RunConfig
from butterfly.data.user import STORED_FILE, recall, save_stored
from butterfly.experiment import Resolved, configure_torch
from butterfly.experiment.setup import environment
from butterfly.imports import is_local, unguarded_main
from butterfly.safepath import inside
from butterfly.sweep import rundir
from butterfly.sweep.executors import Executor, check_executor, executor_kind, make_executor
from butterfly.sweep.lock import RunLock
from butterfly.sweep.plan import Unit
from butterfly.sweep.progress import Progress
from butterfly.sweep.scheduler import schedule
from butterfly.sweep.store import Store
from butterfly.sweep.tasks import UnitResult


@dataclass(frozen=True)
class Execution:
    """How a run executes, never what it computes: ``workers`` (None: ``runtime.workers``,
    else one per core or GPU), ``quiet``, the ``executor`` (``local`` or ``ray``) and its
    ``address``, live ``progress`` on stderr (None: only when stderr is a terminal),
    ``force_new`` (a folder holding another config: start a fresh ``RUN_DIR-N``) and ``detach``
    (a batch executor, SLURM: submit and return; the same command later collects)."""

    workers: int | None = None
    quiet: bool = False
    executor: str = "local"
    address: str | None = None
    progress: bool | None = None
    force_new: bool = False
    detach: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ConfigError("--workers must be >= 0 (0 = one per core)")

    def log(self, msg: str) -> None:
        """A progress message on stderr (the pipelines' one voice)."""
        log(msg, self.quiet)

    @property
    def live(self) -> bool:
        """Whether to draw live progress."""
        return self.progress if self.progress is not None else (
            not self.quiet and sys.stderr.isatty())  # fmt: skip


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@dataclass(kw_only=True)
class SweepOutcome:
    """What a run did: its folder, its results, wall time, member-steps run (and the minimum
    the grid needs), units run and resumed, and whether every σ = 0 control was exact."""

    run_dir: Path
    results: pd.DataFrame
    wall_s: float
    steps: int
    minimum_steps: int
    units_run: int
    units_skipped: int
    control_ok: bool
    units_pending: int = 0  # left running elsewhere (--detach): the same command collects them


class SweepFailed(RuntimeError):
    """Some units failed; finished units are saved. ``tracebacks``: each failure's traceback
    as the process that ran it saw it (a worker's included), for ``--debug``."""

    def __init__(self, message: str, tracebacks: list[str] | None = None):
        super().__init__(message)
        self.tracebacks = list(tracebacks or [])


class DeterminismError(RuntimeError):
    """The sigma = 0 control diverged from the original: training is not bit-exact."""


def resolve_workers(resolved: Resolved, workers: int | None) -> int:
    """Worker processes: ``workers``, else ``runtime.workers``, else one per GPU with
    ``runtime.gpus``, else one per CPU core (on CUDA without ``gpus``: one process)."""
    n = resolved.cfg.runtime.workers if workers is None else workers
    if n > 0:
        return n
    gpus = resolved.gpus()
    if gpus:
        return gpus
    if resolved.cuda:
        return 1  # one process drives the one GPU; several would only share it
    return os.cpu_count() or 1


def must_run_here(cfg: RunConfig) -> list[str]:
    """The config's objects that only this process can find (defined in a notebook, a lambda,
    a nested function): the work then runs in this process."""
    return [name for _, name in cfg.code_named() if is_local(name)]


def store_data(cfg: RunConfig, run_dir: Path) -> None:
    """Write data given from Python into the run folder once (workers and resumes read it)."""
    data = recall(cfg.data.fingerprint)
    path = inside(run_dir, cfg.data.path or STORED_FILE)
    if data is not None:
        save_stored(data, path)
    elif not path.is_file():
        raise ConfigError(f"the run's data file {path} is missing: pass the data again from Python")


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


class RunSession:
    """One run folder being run by this process (a context manager; see the module).

    ``what`` names the run in errors ("a threshold search"); ``pipeline`` is stored as the
    folder's meta ``pipeline``; ``executes``: False for a folder whose work runs in sessions of
    its own (fine-tuning's top folder). Inside, :attr:`store` is open and :attr:`workers` known;
    set :attr:`results` to have ``results.csv`` written at the end."""

    def __init__(
        self,
        resolved: Resolved,
        run_dir: Path,
        execution: Execution,
        *,
        what: str = "a run",
        pipeline: str | None = None,
        saved: str = "units",
        executes: bool = True,
    ):
        self.resolved = resolved
        self.cfg = resolved.cfg
        self.run_dir = Path(run_dir)
        self.execution = execution
        self.what = what
        self.pipeline = pipeline
        self.saved = saved
        self.executes = executes
        self.failures: list[str] = []
        self.tracebacks: list[str] = []
        self.results: pd.DataFrame | None = None
        self.started = time.perf_counter()
        self._lock = RunLock(self.run_dir)
        self._pool: Executor | None = None
        self.workers = 1
        self.store: Store

    # ---- opening ----------------------------------------------------------------------------

    def __enter__(self) -> RunSession:
        ex = self.execution
        if ex.detach and ex.executor != "slurm":
            raise ConfigError("--detach is for --executor slurm (the tasks go on without this "
                              "process)")  # fmt: skip
        check_executor(ex, self.resolved)
        local = must_run_here(self.cfg)
        if local and executor_kind(ex.executor).remote:
            raise ConfigError(
                f"{', '.join(local)} {'exists' if len(local) == 1 else 'exist'} only in this "
                f"Python process, so {ex.executor} workers cannot find it: define it in an "
                "importable module"
            )
        self._lock.acquire()
        try:
            self._open(local)
        except BaseException:
            self._lock.release()
            raise
        return self

    def _open(self, local: list[str]) -> None:
        cfg, ex = self.cfg, self.execution
        rundir.check_no_links(self.run_dir)
        rundir.prepare_run_dir(cfg, self.run_dir, self.what)
        if cfg.data.name == STORED:
            store_data(cfg, self.run_dir)
        configure_torch(cfg.runtime.threads, cfg.runtime.tf32)
        n = resolve_workers(self.resolved, ex.workers) if self.executes else 1
        if n > 1 and ex.executor == "local" and (local or unguarded_main()):
            verb = "exists" if len(local) == 1 else "exist"
            why = (f"{', '.join(local)} {verb} only in this process" if local else
                   "the script has no `if __name__ == \"__main__\":` guard, which worker "
                   "processes need")  # fmt: skip
            self.log(f"note: running in this process, not {n} workers: {why}")
            n = 1
        self.workers = n
        self.store = Store(rundir.store_path(self.run_dir))
        self.store.set_meta("config", cfg.to_dict())
        if self.pipeline is not None:
            self.store.set_meta("pipeline", self.pipeline)
        self.store.set_meta("environment", {**environment(self.resolved), "workers": n,
                                            "executor": ex.executor})  # fmt: skip

    # ---- during -----------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        self.execution.log(msg)

    def fail(self, seed: int, t: int | None, err: BaseException) -> None:
        """Record a failed task; the others go on, and the session ends with SweepFailed."""
        self.store.record_failure(seed, t, f"{type(err).__name__}: {err}", time.time())
        where = f"seed {seed}" + (f" t={t}" if t is not None else " (parent)")
        self.failures.append(f"{where}: {err}")
        # a worker's exception arrives with its own traceback chained as the cause
        self.tracebacks.append(f"{where}:\n" + "".join(traceback.format_exception(err)))
        self.log(f"FAILED {where}: {type(err).__name__}: {err}")

    def pool(self, report: bool = False) -> Executor:
        """The executor, started on first use."""
        if self._pool is None:
            self._pool = make_executor(self.resolved, self.execution, self.workers, report)
        return self._pool

    def schedule(
        self,
        resolved: Resolved,
        units: list[Unit],
        commit: Callable[[UnitResult], None],
        bar: Progress,
    ) -> int:
        """Run the parents of ``units`` and then the units on the executor, committing each
        finished unit; returns the parents' member-steps. An executor that drives a batch of
        work itself (``run_all``: SLURM) is handed all of it at once."""
        pool = self.pool(bar.enabled)
        if hasattr(pool, "run_all"):
            return pool.run_all(resolved, units, self.run_dir, commit, self.fail, bar)
        return schedule(resolved, units, self.run_dir, pool, commit, self.fail, bar)

    @property
    def detached(self) -> bool:
        """Whether the work was left running without this process (``--detach``)."""
        return bool(getattr(self._pool, "detached", False))

    def outcome(self, **kw: Any) -> SweepOutcome:
        """The run's outcome (fields by keyword; wall time from the session's start)."""
        return SweepOutcome(run_dir=self.run_dir, wall_s=time.perf_counter() - self.started,
                            **kw)  # fmt: skip

    # ---- the ending -------------------------------------------------------------------------

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._pool is not None:
                self._pool.shutdown(abort=kind is not None)  # Ctrl-C, SIGTERM: stop them now
        finally:
            try:
                if hasattr(self, "store"):
                    self.store.close()
                if kind is None and self.results is not None:
                    write_csv(self.results, rundir.csv_path(self.run_dir))
            finally:
                self._lock.release()
        if kind is None and self.failures:
            n = len(self.failures)
            raise SweepFailed(
                f"{n} unit{'s' if n > 1 else ''} failed (first: {self.failures[0]}); finished "
                f"{self.saved} are saved in {self.run_dir}, run the same command to retry",
                self.tracebacks,
            )


def fresh_folder(resolved: Resolved, run_dir: Path, execution: Execution) -> Path:
    """``run_dir``, or with ``force_new`` and another config already there, a fresh
    ``run_dir-N`` (said once)."""
    if execution.force_new and rundir.config_differs(resolved.cfg, run_dir):
        fresh = rundir.fresh_run_dir(run_dir)
        execution.log(f"config differs from the existing run: starting a fresh run in {fresh}")
        return fresh
    return run_dir
