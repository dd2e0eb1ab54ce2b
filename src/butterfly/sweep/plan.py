"""The plan: a config's grid turned into one parent run per seed and one unit per (seed, t).

Each unit is a population [original, control, children...] that starts from the parent's state
at t and trains to T (DESIGN contract 3); who is in it is the experiment's business
(:func:`~butterfly.experiment.members.population_members`).
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
