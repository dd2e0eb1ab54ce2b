"""The plan: a config's grid turned into one unit per (seed, t), and the units into tasks.

Each unit is a population [original, control, children...] perturbed at t from the original's
state there and trained to T (DESIGN contract 3); who is in it is the experiment's business
(:func:`~butterfly.experiment.members.population_members`). A unit is what the store records
as finished. A :class:`SeedTask` trains a seed's units together, with one original for every
t; :func:`seed_tasks` splits the children of some seeds over workers so that they are kept
equally busy.
"""

from __future__ import annotations

from dataclasses import dataclass

from butterfly.config import RunConfig
from butterfly.experiment.members import Member, population_members


@dataclass(frozen=True)
class Unit:
    seed: int
    t: int
    members: tuple[Member, ...]


def plan(cfg: RunConfig) -> list[Unit]:
    """All units of the sweep, earliest t (longest) first within each seed; each unit's
    members are those of its t (``perturb.sigmas_at``)."""
    members = {t: population_members(cfg, t) for t in cfg.perturbation_steps()}
    return [Unit(seed, t, members[t]) for seed in cfg.seeds for t in cfg.perturbation_steps()]


def minimum_steps(cfg: RunConfig) -> int:
    """Training steps the sweep cannot avoid: per seed, T for the original plus T - t per child."""
    T = cfg.recipe.steps
    ts = cfg.perturbation_steps()
    per_t = sum((T - t) + (len(population_members(cfg, t)) - 2) * (cfg.child_end(t) - t)
                for t in ts)  # control + children  # fmt: skip
    return len(cfg.seeds) * (T + per_t)


@dataclass(frozen=True)
class SeedTask:
    """A seed's units trained as one population with one original (members join at their t):
    piece ``piece`` of ``pieces``, holding that share of every unit's children. Every piece
    trains the original; piece 0 also holds the σ = 0 controls, and measures the original's
    training curve and trajectory."""

    seed: int
    units: tuple[Unit, ...]
    piece: int = 0
    pieces: int = 1


def seed_tasks(units: list[Unit], slots: int, T: int, split: bool = True) -> list[SeedTask]:
    """The tasks that train ``units`` on ``slots`` workers: one per seed, largest first; when
    the seeds do not divide evenly over the workers, the children of the last seeds are split
    into pieces (as many pieces as workers among them), each piece with its own copy of the
    original. So 3 seeds on 2 workers are 2 whole seeds and one seed in two halves: 1.5 seeds'
    work per worker for one extra original. ``split`` False: one task per seed."""
    by_seed: dict[int, list[Unit]] = {}
    for u in units:
        by_seed.setdefault(u.seed, []).append(u)
    seeds = list(by_seed)
    left = len(seeds) % slots if split else 0
    whole, split = seeds[: len(seeds) - left], seeds[len(seeds) - left :]
    tasks = [SeedTask(s, tuple(sorted(by_seed[s], key=lambda u: u.t))) for s in whole]
    for j, s in enumerate(split):
        n = slots // left + (1 if j < slots % left else 0)
        tasks += split_seed(SeedTask(s, tuple(sorted(by_seed[s], key=lambda u: u.t))), n, T)
    return tasks


def split_seed(task: SeedTask, n: int, T: int) -> list[SeedTask]:
    """``task`` in (at most) ``n`` pieces of even work: every piece trains the original (from
    the first t to ``T``), piece 0 the controls, and each child goes to the piece with the
    least work so far (its work: its ``T - t`` steps). A piece without children is left
    out."""
    n = max(1, min(n, sum(len(u.members) - 2 for u in task.units)))
    if n == 1:
        return [task]
    load = [T - task.units[0].t] * n
    shares: list[list[Unit]] = [[] for _ in range(n)]
    for u in task.units:
        original, control, children = u.members[0], u.members[1], u.members[2:]
        own: list[list] = [[control]] + [[] for _ in range(n - 1)]
        load[0] += T - u.t
        for c in children:
            k = min(range(n), key=lambda j: (load[j], j))
            own[k].append(c)
            load[k] += T - u.t
        for k in range(n):
            if k == 0 or own[k]:
                shares[k].append(Unit(u.seed, u.t, (original, *own[k])))
    return [SeedTask(task.seed, tuple(units), k, n) for k, units in enumerate(shares) if units]
