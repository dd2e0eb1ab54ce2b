"""What one SLURM array task runs: ``python -m butterfly.sweep.slurm_task RUN_DIR``.

It claims work in ``RUN_DIR/slurm/work/`` (a seed's parent first, then units whose parent
states exist) by creating ``claims/KEY`` exclusively, runs it with the same code as a local
worker (:func:`butterfly.sweep.tasks.run_parent`, :func:`~butterfly.sweep.tasks.run_unit`)
and writes the result into ``done/KEY.json`` atomically, up to ``BUTTERFLY_SLURM_UNITS``
pieces of work (0: until none is left). It never writes ``results.db``. Stopped by SLURM
(``scancel``, its time limit, pre-emption: SIGTERM), it records the lost attempt and frees its
claim, so the work is taken again; requeued, it first gives back what it held before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from butterfly.atomic import write_atomic
from butterfly.config import build_config
from butterfly.experiment import configure_torch
from butterfly.experiment.resolve import Resolved, resolve
from butterfly.sweep.plan import Unit
from butterfly.sweep.rundir import parent_path
from butterfly.sweep.slurm import (
    ATTEMPTS_ENV,
    TASK_WAIT_S,
    UNITS_ENV,
    attempts,
    claim,
    folder,
    give_back,
    holder,
    job_of_this_task,
    member_of,
    read_json,
)
from butterfly.sweep.tasks import run_parent, run_unit


class Stopped(Exception):
    """SLURM asked this task to stop (SIGTERM)."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped()


class Worker:
    def __init__(self, run_dir: Path, job: str, max_attempts: int):
        self.run_dir = run_dir
        self.job = job
        self.max_attempts = max_attempts
        self.resolved: dict[str, Resolved] = {}

    def config(self, name: str) -> Resolved:
        if name not in self.resolved:
            raw = read_json(folder(self.run_dir, "configs") / name)
            self.resolved[name] = resolve(build_config(raw), self.run_dir, check=False)
        return self.resolved[name]

    def settled(self, key: str) -> bool:
        return ((folder(self.run_dir, "done") / f"{key}.json").is_file()
                or (folder(self.run_dir, "failed") / f"{key}.json").is_file()
                or len(attempts(self.run_dir, key)) >= self.max_attempts)  # fmt: skip

    def next(self) -> tuple[str, dict[str, Any]] | bool | None:
        """The next piece of work, claimed; None when nothing is left; False when the units
        left wait for parents other tasks are training."""
        waiting = False
        for path in sorted(folder(self.run_dir, "work").glob("*.json")):  # parents sort first
            key = path.stem
            if self.settled(key) or (folder(self.run_dir, "claims") / key).exists():
                continue
            spec = read_json(path)
            if spec["kind"] == "unit" and not parent_path(self.run_dir, spec["seed"],
                                                           spec["t"]).is_file():  # fmt: skip
                waiting = True
                continue
            if claim(folder(self.run_dir, "claims") / key, self.job):
                return key, spec
        return False if waiting else None

    def run(self, key: str, spec: dict[str, Any]) -> None:
        resolved = self.config(spec["config"])
        configure_torch(resolved.cfg.runtime.threads, resolved.cfg.runtime.tf32)
        if spec["kind"] == "parent":
            out: dict[str, Any] = run_parent(resolved, spec["seed"], self.run_dir,
                                             steps=spec["steps"])  # fmt: skip
        else:
            unit = Unit(spec["seed"], spec["t"], tuple(member_of(m) for m in spec["members"]))
            out = dataclasses.asdict(run_unit(resolved, unit, self.run_dir))
        write_atomic(folder(self.run_dir, "done") / f"{key}.json", json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0])
    job = job_of_this_task()
    limit = int(os.environ.get(UNITS_ENV, "1") or 1)
    max_attempts = int(os.environ.get(ATTEMPTS_ENV, "3") or 3)
    worker = Worker(run_dir, job, max_attempts)
    signal.signal(signal.SIGTERM, _stop)
    # requeued (pre-empted, or by scontrol): what this task held before was lost
    for held in folder(run_dir, "claims").glob("[!.]*"):
        if holder(held) == job:
            give_back(run_dir, held.name, "requeued (pre-empted or by scontrol requeue)")
    try:
        return work(worker, limit)
    except Stopped:  # stopped while waiting: nothing held
        return 143


def work(worker: Worker, limit: int) -> int:
    """Claim and run work until ``limit`` pieces are done (0: until none is left)."""
    run_dir, job = worker.run_dir, worker.job
    done, idle_since = 0, None
    while limit == 0 or done < limit:
        got = worker.next()
        if got is None:
            break
        if got is False:  # units wait for parents other tasks are training
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > TASK_WAIT_S:
                break
            time.sleep(2.0)
            continue
        idle_since = None
        key, spec = got  # type: ignore[misc]
        try:
            worker.run(key, spec)
        except Stopped:
            give_back(run_dir, key, f"stopped by SLURM in {job} (cancelled, timed out or "
                                    "pre-empted)")  # fmt: skip
            return 143
        except Exception as err:  # the unit's own failure: recorded, like a local worker's
            traceback.print_exc()
            write_atomic(folder(run_dir, "failed") / f"{key}.json", json.dumps({
                "seed": spec["seed"], "t": spec.get("t"),
                "error": f"{type(err).__name__}: {err}"}))  # fmt: skip
        (folder(run_dir, "claims") / key).unlink(missing_ok=True)
        done += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
