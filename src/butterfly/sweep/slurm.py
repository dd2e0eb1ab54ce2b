"""``--executor slurm``: a sweep's units as SLURM array tasks, with no head node and no database
on the shared file system.

How it works (``RUN_DIR/slurm/``):

* the driver (the process holding the run folder's lock) writes one file per piece of work
  into ``work/`` (a seed's parent, or a population unit) and submits array tasks with
  ``sbatch``, keeping at most ``runtime.slurm.array_cap`` of them queued;
* each array task (:mod:`butterfly.sweep.slurm_task`) claims work by creating
  ``claims/KEY`` exclusively, runs it (the same code as a local worker), and writes the result
  into ``done/KEY.json`` atomically (a Python error into ``failed/KEY.json``); checkpoints are
  written atomically as always. Tasks never touch ``results.db``: SQLite's locking is
  unreliable on NFS and Lustre;
* the driver ingests finished units into ``results.db`` (one transaction each), and gives back
  the claims of tasks that ended without finishing (``scancel``, a time limit, pre-emption, a
  dead node): the attempt is recorded in ``lost/`` with the reason and the work is claimed
  again, at most ``runtime.slurm.max_attempts`` times in all, then recorded as failed;
* with ``--detach`` the driver exits after submitting; ``butterfly run`` on the same folder
  later ingests what finished and submits only what is missing, and ``butterfly status`` shows
  the SLURM state of each unfinished unit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butterfly.atomic import write_atomic
from butterfly.config import ConfigError, SlurmConfig
from butterfly.experiment import Member, Resolved
from butterfly.safepath import inside
from butterfly.sweep.plan import Unit
from butterfly.sweep.progress import Progress
from butterfly.sweep.rundir import parent_path
from butterfly.sweep.tasks import UnitResult

FOLDER = "slurm"
PARTS = ("work", "claims", "done", "failed", "lost", "configs", "logs")
UNITS_ENV = "BUTTERFLY_SLURM_UNITS"
ATTEMPTS_ENV = "BUTTERFLY_SLURM_ATTEMPTS"
TASK_WAIT_S = 600.0  # a task with nothing to claim waits this long for parents being trained


# ---- the folder both sides read -------------------------------------------------------------


def folder(run_dir: Path, part: str | None = None) -> Path:
    """``RUN_DIR/slurm`` (or one of its parts), inside the run folder."""
    base = inside(run_dir, FOLDER)
    return base if part is None else inside(base, part)


def parent_key(seed: int) -> str:
    return f"parent-s{seed}"


def unit_key(unit: Unit) -> str:
    """A unit's key: its seed, t and members (a threshold search measures one (seed, t) in
    several rounds, each with its own members)."""
    names = ",".join(m.name for m in unit.members)
    digest = hashlib.blake2b(names.encode(), digest_size=4).hexdigest()
    return f"unit-s{unit.seed}-t{unit.t:07d}-{digest}"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def claim(path: Path, job: str) -> bool:
    """Create ``path`` with this task's job id in it, if no task has: the claim is this task's.

    The claim is written whole to a file of this task's own first and then hard-linked to
    ``path``; ``link`` fails if ``path`` exists, so at most one task wins, and no one ever reads
    a claim that exists but is still empty (``O_EXCL`` and then a write would allow that; link is
    also the exclusive create that holds on NFS)."""
    own = path.with_name(f".{path.name}.{os.uname().nodename}.{os.getpid()}")
    own.write_text(f"{job} {os.uname().nodename} {time.time():.0f}\n", encoding="utf-8")
    try:
        os.link(own, path)
    except FileExistsError:
        return False
    finally:
        own.unlink(missing_ok=True)
    return True


def holder(path: Path) -> str | None:
    """The job id of the task that holds the claim ``path``; None if no task holds it."""
    try:
        words = path.read_text(encoding="utf-8").split()
    except OSError:
        return None
    return words[0] if words else None


def job_of_this_task() -> str:
    """``ARRAYJOB_TASK`` (stable across requeues) or the plain job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "local")


def attempts(run_dir: Path, key: str) -> list[dict[str, Any]]:
    """The lost attempts of one piece of work, oldest first."""
    lost = folder(run_dir, "lost")
    if not lost.is_dir():
        return []
    return [read_json(p) for p in sorted(lost.glob(f"{key}.*.json"))]


def give_back(run_dir: Path, key: str, why: str) -> None:
    """Record a lost attempt of ``key`` (its task ended without finishing) and free its claim,
    so that the work can be claimed again."""
    claim = folder(run_dir, "claims") / key
    job = holder(claim) or "?"
    n = len(attempts(run_dir, key))
    write_atomic(folder(run_dir, "lost") / f"{key}.{n:03d}.json",
                 json.dumps({"job": job, "why": why, "time": time.time()}))  # fmt: skip
    claim.unlink(missing_ok=True)


# ---- talking to SLURM ---------------------------------------------------------------------


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def check_slurm(slurm: SlurmConfig) -> None:
    """Refuse, before anything is written or submitted, a SLURM that cannot take the tasks:
    no ``sbatch`` here, an unknown partition, GPUs asked on a partition without them."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise ConfigError(
            "--executor slurm needs SLURM's sbatch and squeue on this machine's PATH; none found "
            "(run it on a cluster's login node; to try it on one machine: scripts/slurm-local "
            "install && scripts/slurm-local start)"
        )
    partition = slurm.partition
    if partition is not None:
        shown = _run(["scontrol", "show", "partition", partition], timeout=60)
        if shown.returncode != 0:
            raise ConfigError(
                f"runtime.slurm.partition = {partition} is not a partition of this cluster "
                f"({_first_line(shown.stderr or shown.stdout)}); `sinfo` lists them"
            )
    if slurm.gpus_per_task:
        args = ["sinfo", "-h", "-o", "%P %G"] + (["-p", partition] if partition else [])
        out = _run(args, timeout=60)
        rows = [ln.split(None, 1) for ln in out.stdout.splitlines() if ln.strip()]
        if partition is None:  # the default partition is marked with a *
            rows = [r for r in rows if r[0].endswith("*")] or rows
        gres = {r[1].strip() if len(r) > 1 else "(null)" for r in rows}
        if out.returncode == 0 and not any("gpu" in g for g in gres):
            where = partition or "the default partition"
            raise ConfigError(
                f"runtime.slurm.gpus_per_task = {slurm.gpus_per_task}, but {where} has no GPUs "
                f"(sinfo's GRES: {', '.join(sorted(gres)) or 'none'})"
            )


@dataclass(frozen=True)
class Job:
    """One array task in the queue: its id (``ARRAY_TASK``) and state (PENDING, RUNNING...)."""

    id: str
    state: str
    reason: str = ""


def queue(arrays: Iterable[str]) -> dict[str, Job] | None:
    """The queued and running tasks of ``arrays`` (None when squeue cannot answer)."""
    ids = sorted(set(arrays))
    if not ids:
        return {}
    try:
        out = _run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%r"], timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY"):
            jobs[parts[0]] = Job(parts[0], parts[1], parts[2])
    return jobs


ENDINGS = (("DUE TO TIME LIMIT", "timed out (the task's time limit)"),
           ("DUE TO PREEMPTION", "pre-empted"),
           ("DUE TO NODE FAILURE", "its node failed"),
           ("DUE TO JOB REQUEUE", "requeued"),
           ("CANCELLED", "cancelled (scancel)"),
           ("oom-kill", "killed for lack of memory"))  # fmt: skip


def why_ended(run_dir: Path, job: str) -> str:
    """Why a task ended without finishing, from what SLURM wrote into its log."""
    log = folder(run_dir, "logs") / f"{job}.out"
    try:
        text = log.read_text(encoding="utf-8", errors="replace")[-20000:]
    except OSError:
        text = ""
    for mark, why in ENDINGS:
        if mark in text:
            return why
    return "ended without finishing (killed, or its node lost)"


def sbatch_script(run_dir: Path, slurm: SlurmConfig, name: str, n_tasks: int) -> str:
    """The batch script of an array of ``n_tasks`` tasks."""
    logs = folder(run_dir, "logs").resolve()
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=butterfly-{name}",
             f"#SBATCH --array=0-{n_tasks - 1}",
             f"#SBATCH --output={logs}/%A_%a.out",
             "#SBATCH --open-mode=append",
             f"#SBATCH --time={slurm.time}",
             f"#SBATCH --cpus-per-task={slurm.cpus_per_task}",
             "#SBATCH --requeue"]  # fmt: skip
    for flag, value in (("partition", slurm.partition), ("account", slurm.account),
                        ("qos", slurm.qos), ("mem", slurm.mem)):  # fmt: skip
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    if slurm.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{slurm.gpus_per_task}")
    lines += [f"#SBATCH {x}" for x in slurm.extra]
    lines += list(slurm.setup)
    python = slurm.python or sys.executable
    lines += [f"export {UNITS_ENV}={slurm.units_per_task} {ATTEMPTS_ENV}={slurm.max_attempts}",
              f"exec {shlex.quote(python)} -m butterfly.sweep.slurm_task "
              f"{shlex.quote(str(Path(run_dir).resolve()))}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def submit(run_dir: Path, slurm: SlurmConfig, name: str, n_tasks: int) -> str:
    """Submit an array of ``n_tasks`` tasks; returns its job id."""
    base = folder(run_dir)
    jobs_file = base / "jobs.json"
    jobs = read_json(jobs_file) if jobs_file.is_file() else []
    script = inside(base, f"submit-{len(jobs):04d}.sh")
    write_atomic(script, sbatch_script(run_dir, slurm, name, n_tasks))
    out = _run(["sbatch", "--parsable", str(script.resolve())], timeout=120)
    job = out.stdout.strip().split(";")[0]
    if out.returncode != 0 or not job.isdigit():
        raise ConfigError(f"sbatch refused the tasks: {_first_line(out.stderr or out.stdout)}")
    jobs.append({"array": job, "tasks": n_tasks, "submitted": time.time()})
    write_atomic(jobs_file, json.dumps(jobs))
    return job


def arrays(run_dir: Path) -> list[str]:
    """The array jobs submitted for this run folder."""
    jobs_file = folder(run_dir) / "jobs.json"
    return [j["array"] for j in read_json(jobs_file)] if jobs_file.is_file() else []


# ---- the driver -------------------------------------------------------------------------------


def member_of(d: dict[str, Any]) -> Member:
    return Member(d["name"], d["kind"], float(d["sigma"]), float(d["fraction"]),
                  int(d["direction"]))  # fmt: skip


@dataclass
class SlurmExecutor:
    """The SLURM executor: it drives a batch of work itself (:meth:`run_all`) rather than
    taking one task at a time."""

    resolved: Resolved
    detach: bool = False
    quiet: bool = False
    slots: int = 1
    reporter: Any = None
    detached: bool = field(default=False, init=False)

    # the Executor interface, for what the session calls around run_all
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError("the SLURM executor runs batches (run_all)")

    def drain(self, bar: Progress) -> None:
        pass

    def restart(self) -> None:
        pass

    def shutdown(self, abort: bool = False) -> None:
        pass  # submitted tasks go on without the driver; the next run collects them

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def run_all(
        self,
        resolved: Resolved,
        todo: list[Unit],
        run_dir: Path,
        commit: Callable[[UnitResult], None],
        fail: Callable[[int, int | None, BaseException], None],
        bar: Progress,
    ) -> int:
        """Run the parents and units of ``todo`` as array tasks; returns the parents' steps."""
        cfg = resolved.cfg
        slurm = self.resolved.cfg.runtime.slurm
        for part in PARTS:
            folder(run_dir, part).mkdir(parents=True, exist_ok=True)
        config_json = json.dumps(cfg.to_dict(), sort_keys=True)
        config_name = hashlib.blake2b(config_json.encode(), digest_size=8).hexdigest() + ".json"
        config_file = folder(run_dir, "configs") / config_name
        if not config_file.is_file():
            write_atomic(config_file, config_json)
        units = {unit_key(u): u for u in todo}
        work: dict[str, Unit | int] = dict(units)
        for seed in sorted({u.seed for u in todo}):
            needed = sorted({u.t for u in todo if u.seed == seed})
            if not all(parent_path(run_dir, seed, t).is_file() for t in needed):
                work[parent_key(seed)] = seed
        for key, item in work.items():
            path = folder(run_dir, "work") / f"{key}.json"
            if isinstance(item, Unit):
                spec = {"kind": "unit", "seed": item.seed, "t": item.t, "config": config_name,
                        "members": [vars(m) for m in item.members]}  # fmt: skip
            else:
                ts = sorted({u.t for u in todo if u.seed == item})
                spec = {"kind": "parent", "seed": item, "steps": ts, "config": config_name}
            write_atomic(path, json.dumps(spec))
            (folder(run_dir, "failed") / f"{key}.json").unlink(missing_ok=True)  # a new try
        open_keys = set(work)
        parent_steps = 0
        submitted = False
        while True:
            parent_steps += self._ingest(run_dir, open_keys, units, commit, fail)
            jobs = queue(arrays(run_dir))
            if jobs is not None:
                self._reap(run_dir, open_keys, jobs, slurm)
            parent_steps += self._ingest(run_dir, open_keys, units, commit, fail)
            if not open_keys:
                return parent_steps
            if jobs is not None:
                self._top_up(run_dir, open_keys, jobs, slurm, cfg.name)
                submitted = True
            if self.detach and submitted:
                self.detached = True
                left = sum(1 for k in open_keys if k in units)
                self.log(f"submitted to SLURM (arrays {', '.join(arrays(run_dir)[-3:])}); "
                         f"{left} units to go: run the same command later to collect them "
                         f"(butterfly status {run_dir} shows where they are)")  # fmt: skip
                return parent_steps
            bar.draw()
            time.sleep(slurm.poll)

    def _ingest(self, run_dir: Path, open_keys: set[str], units: dict[str, Unit],
                commit: Callable[[UnitResult], None],
                fail: Callable[[int, int | None, BaseException], None]) -> int:  # fmt: skip
        """Commit every finished unit, count finished parents, record failed work."""
        steps = 0
        for key in sorted(open_keys):
            done = folder(run_dir, "done") / f"{key}.json"
            failed = folder(run_dir, "failed") / f"{key}.json"
            if done.is_file():
                res = read_json(done)
                if key in units:
                    commit(UnitResult(**res))
                else:
                    steps += int(res.get("steps", 0))
                open_keys.discard(key)
            elif failed.is_file():
                info = read_json(failed)
                seed, t = info.get("seed"), info.get("t")
                fail(int(seed), None if t is None else int(t), RuntimeError(info["error"]))
                open_keys.discard(key)
        return steps

    def _reap(self, run_dir: Path, open_keys: set[str], jobs: dict[str, Job],
              slurm: SlurmConfig) -> None:  # fmt: skip
        """Give back the claims of tasks that are gone; fail work lost too often."""
        claims = folder(run_dir, "claims")
        for key in sorted(open_keys):
            job = holder(claims / key)
            if job is None or job in jobs or (folder(run_dir, "done") / f"{key}.json").is_file():
                continue
            why = why_ended(run_dir, job)
            give_back(run_dir, key, why)
            n = len(attempts(run_dir, key))
            self.log(f"SLURM task {job} {why}; its {key} is tried again ({n} of "
                     f"{slurm.max_attempts} attempts lost)")  # fmt: skip
            if n >= slurm.max_attempts:
                spec = read_json(folder(run_dir, "work") / f"{key}.json")
                write_atomic(folder(run_dir, "failed") / f"{key}.json", json.dumps({
                    "seed": spec["seed"], "t": spec.get("t"), "error":
                    f"its SLURM task ended without finishing {n} times (last: {job} {why})"}))  # fmt: skip

    def _top_up(self, run_dir: Path, open_keys: set[str], jobs: dict[str, Job],
                slurm: SlurmConfig, name: str) -> None:  # fmt: skip
        """Submit tasks for the work no task will take, keeping at most ``array_cap`` of ours
        in the queue."""
        claims = folder(run_dir, "claims")
        unclaimed = [k for k in open_keys if not (claims / k).is_file()]
        waiting = sum(1 for j in jobs.values() if j.state in ("PENDING", "REQUEUED"))
        per = slurm.units_per_task or len(unclaimed) or 1  # 0: each task until none is left
        want = math.ceil(len(unclaimed) / per) if unclaimed else 0
        if not slurm.units_per_task:
            want = min(len(unclaimed), slurm.array_cap)
        n = min(slurm.array_cap - len(jobs), want - waiting)
        if n > 0:
            job = submit(run_dir, slurm, name, int(n))
            self.log(f"submitted SLURM array {job}: {int(n)} task{'s' if n > 1 else ''} for "
                     f"{len(unclaimed)} pieces of work")  # fmt: skip


def make_slurm(resolved: Resolved, execution: Any, n_workers: int, report: bool) -> SlurmExecutor:
    return SlurmExecutor(resolved, detach=bool(getattr(execution, "detach", False)),
                         quiet=bool(getattr(execution, "quiet", False)))  # fmt: skip


# ---- butterfly status -------------------------------------------------------------------------


def status_lines(run_dir: Path, finished: set[tuple[int, int]]) -> list[str]:
    """Where each unfinished unit of a SLURM run stands, and the SLURM jobs."""
    base = inside(run_dir, FOLDER)
    if not base.is_dir():
        return []
    jobs = queue(arrays(run_dir))
    work = sorted(folder(run_dir, "work").glob("*.json"))
    counts: dict[str, int] = {}
    for j in (jobs or {}).values():
        counts[j.state] = counts.get(j.state, 0) + 1
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none queued"
    lines = [f"SLURM: arrays {', '.join(arrays(run_dir)) or 'none'}; tasks now: "
             + (states if jobs is not None else "unknown (squeue does not answer)")]  # fmt: skip
    for path in work:
        key = path.stem
        spec = read_json(path)
        if (folder(run_dir, "done") / f"{key}.json").is_file():
            continue
        seed, t = spec["seed"], spec.get("t")
        if spec["kind"] == "unit" and (seed, t) in finished:
            continue
        what = f"seed {seed} parent" if spec["kind"] == "parent" else f"seed {seed} t={t}"
        lost = attempts(run_dir, key)
        failed = folder(run_dir, "failed") / f"{key}.json"
        claim = folder(run_dir, "claims") / key
        if failed.is_file():
            where = f"failed: {read_json(failed)['error']}"
        elif (job := holder(claim)) is not None:
            j = (jobs or {}).get(job)
            where = (f"task {job} {j.state.lower()}" if j else
                     f"task {job} gone ({why_ended(run_dir, job)})")  # fmt: skip
        else:
            waiting = [j for j in (jobs or {}).values() if j.state == "PENDING"]
            where = ("waiting for a task (" + (f"{len(waiting)} pending" if waiting else
                     "none queued: run the same command to submit") + ")")  # fmt: skip
        if lost:
            where += f"; {len(lost)} attempt{'s' if len(lost) > 1 else ''} lost (last: " \
                     f"{lost[-1]['why']})"  # fmt: skip
        lines.append(f"  {what}: {where}")
    return lines


