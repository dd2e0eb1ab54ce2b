"""``butterfly run CONFIG --dry-run``: what a sweep will do and how long it will take, before
anything is written or trained for real.

The plan gives the work: parent steps, population units, member-steps, measurements. A few
real steps on the chosen device time it: a population of each size the plan trains, the parent
alone, one child's full measurement (barriers, alignment, CKA, ensemble) and one trajectory
point. The projection adds them up per unit and spreads them over the workers the run would
use (parents first, one per seed; then the units), as the scheduler does.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import torch

from butterfly.experiment import Comparer, Resolved, make_setup
from butterfly.experiment.setup import configure_torch
from butterfly.experiment.spawn import log_spaced_steps
from butterfly.sweep.plan import minimum_steps, plan
from butterfly.sweep.scheduler import joins
from butterfly.train import Population
from butterfly.train.population import Lane, clone
from butterfly.train.recipe import init_state

PROCESS_START_S = 3.0  # importing torch and building the data set, per worker process
PROBE = 128  # examples of each split a measurement is timed on (then scaled by the count)


@dataclass
class Projection:
    units: int
    seeds: int
    population: int
    parent_steps: int
    member_steps: int
    measurements: int
    trajectory_points: int
    workers: int
    device: str
    step_s: dict[int, float] = field(default_factory=dict)  # population size -> s per step
    measure_s: float = 0.0
    trajectory_s: float = 0.0
    parents_s: float = 0.0
    units_s: float = 0.0
    wall_s: float = 0.0
    timed_steps: int = 0
    preview: int | None = None  # the data set was read up to this many examples per split

    def lines(self) -> list[str]:
        return [plan_line(self.seeds, self.parent_steps, self.units, self.population,
                          self.member_steps, self.measurements, self.trajectory_points),
                *self.timing_lines()]  # fmt: skip

    def timing_lines(self) -> list[str]:
        per = ", ".join(f"P = {p}: {s * 1e3:.2f} ms/step ({p / s:,.0f} member-steps/s)"
                        for p, s in sorted(self.step_s.items()))  # fmt: skip
        return [
            f"timed on {self.device} ({self.timed_steps} real steps each): {per}; one child's "
            f"measurement {self.measure_s:.2f} s; one trajectory point {self.trajectory_s:.3f} s",
            f"projected wall time with {self.workers} worker{'s' if self.workers > 1 else ''}: "
            f"{fmt_duration(self.wall_s)} (parents {fmt_duration(self.parents_s)}, units "
            f"{fmt_duration(self.units_s)} of work)",
        ] + ([f"(the data set was read up to its first {self.preview:,} examples of each split; "
              "a measurement over more examples takes longer than projected)"]
             if self.preview else [])  # fmt: skip


def plan_line(seeds: int, parent_steps: int, units: int, population: int, member_steps: int,
              measurements: int, points: int, joined: int = 0) -> str:  # fmt: skip
    """The plan in one line; ``joined``: the steps of each seed's one original, shared by the
    populations of every t (else ``parent_steps``: parents trained to the last t)."""
    start = (f"plan: {seeds} seed{'s' if seeds != 1 else ''}, one original each ({joined:,} "
             "steps, joined at every t)" if joined else
             f"plan: {seeds} parents ({parent_steps:,} steps)")  # fmt: skip
    return (f"{start}, {units} population units of {population} members, {member_steps:,} "
            f"member-steps, {measurements} children measured, {points} trajectory points")


def the_plan(resolved: Resolved) -> str:
    """The plan in one line, before anything is timed."""
    cfg = resolved.cfg
    units = plan(cfg)
    P = len(units[0].members) if units else 2
    ts = cfg.perturbation_steps()
    points = sum(len(log_spaced_steps(u.t, cfg.child_end(u.t), cfg.eval.trajectory_points))
                 for u in units)  # fmt: skip
    return plan_line(len(cfg.seeds), len(cfg.seeds) * max(ts, default=0), len(units), P,
                     minimum_steps(cfg), len(units) * (P - 1), points,
                     cfg.recipe.steps if joins(resolved) else 0)  # fmt: skip


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _time_steps(setup, P: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per training step of a population of ``P`` members (after 2 warm-up steps)."""
    params = [clone(setup.init) for _ in range(P)]
    pop = Population.from_members([f"m{i}" for i in range(P)], params,
                                  [init_state(setup.trainer.update, p) for p in params], 0)  # fmt: skip
    trainer = setup.trainer
    trainer.train_lanes([Lane(pop, 2)])
    sync = torch.cuda.synchronize if setup.data.x_train.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    trainer.train_lanes([Lane(pop, 2 + steps)])
    sync()
    return (time.perf_counter() - start) / steps


def project(resolved: Resolved, workers: int, timed_steps: int = 10) -> Projection:
    """Time a few real steps of a resolved config and project the whole sweep on ``workers``
    workers."""
    cfg = resolved.cfg
    configure_torch(cfg.runtime.threads, cfg.runtime.tf32)
    units = plan(cfg)
    T = cfg.recipe.steps
    ts = cfg.perturbation_steps()
    # the original trains alone up to the first t when populations are joined (then beside
    # them, counted in the units), else the parent trains alone to the last t
    parent_steps = len(cfg.seeds) * (min(ts, default=0) if joins(resolved) else max(ts, default=0))
    P = len(units[0].members) if units else 2
    setup = make_setup(resolved, cfg.seeds[0])
    step_s = {P: _time_steps(setup, P, timed_steps)}
    parent_s = _time_steps(setup, 1, timed_steps)
    step_s.setdefault(1, parent_s)
    # one child's measurement: every measure the config asks for, on two networks, timed on
    # at most PROBE examples of each split and scaled to the examples a run evaluates
    a = clone(setup.init)
    b = {k: v + 1e-3 * torch.randn_like(v) for k, v in a.items()}
    ev = cfg.eval
    n_train = min(ev.max_train_examples or len(setup.data.y_train), len(setup.data.y_train))
    n_test = min(ev.max_test_examples or len(setup.data.y_test), len(setup.data.y_test))
    probe = ev.model_copy(update={"max_train_examples": min(n_train, PROBE),
                                  "max_test_examples": min(n_test, PROBE)})  # fmt: skip
    cmp = Comparer(setup.model, setup.data, probe, setup.seed, resolved.loss_fn())
    scale_both = (n_train + n_test) / (min(n_train, PROBE) + min(n_test, PROBE))
    start = time.perf_counter()
    cmp.compare(a, b)
    probe_s = time.perf_counter() - start
    start = time.perf_counter()  # the part that grows with the examples: endpoints, barriers
    cmp.barriers(a, b, cmp.endpoint(a), cmp.endpoint(b))
    measure_s = probe_s + (time.perf_counter() - start) * (scale_both - 1.0)
    marks = {t: log_spaced_steps(t, cfg.child_end(t), cfg.eval.trajectory_points) for t in ts}
    start = time.perf_counter()
    if cfg.eval.trajectory_barriers and cfg.eval.trajectory_points:
        cmp.train_loss_barrier(a, b)
    traj_s = (time.perf_counter() - start) * n_train / min(n_train, PROBE)
    n_children = P - 1
    unit_work = 0.0
    points = 0
    for u in units:
        steps = max(T, cfg.child_end(u.t)) - u.t
        n_marks = len(marks[u.t])
        points += n_marks
        unit_work += steps * step_s[P] + n_children * measure_s + n_marks * n_children * traj_s
    parents = parent_steps / max(len(cfg.seeds), 1) * parent_s
    lanes = max(1, min(workers, len(units)))
    startup = PROCESS_START_S if workers > 1 else 0.0
    # parents run side by side (one per seed), then the units fill the workers
    wall = startup + parents * math.ceil(len(cfg.seeds) / max(workers, 1)) + unit_work / lanes
    return Projection(
        units=len(units), seeds=len(cfg.seeds), population=P, parent_steps=parent_steps,
        member_steps=minimum_steps(cfg), measurements=len(units) * n_children,
        trajectory_points=points, workers=workers, device=resolved.device,
        step_s=step_s, measure_s=measure_s, trajectory_s=traj_s, parents_s=parents * len(cfg.seeds),
        units_s=unit_work, wall_s=wall, timed_steps=timed_steps,
        preview=resolved.preview if len(setup.data.y_train) >= (resolved.preview or 0) else None,
    )  # fmt: skip


def cores() -> int:
    return os.cpu_count() or 1
