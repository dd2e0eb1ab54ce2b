"""The plan: a config's grid turned into one parent run per seed and one unit per (seed, t).

Each unit is a population [original, control, children...] that starts from the parent's state
at t and trains to T (DESIGN contract 3). A child is one (kind, sigma, fraction, direction).
"""

from __future__ import annotations

from dataclasses import dataclass

from butterfly.config import RunConfig


@dataclass(frozen=True)
class ChildSpec:
    """One member of a population. The original has ``kind = 'original'``."""

    name: str
    kind: str  # "original" | "control" | "batch" | "gaussian" | "spawn"
    sigma: float
    fraction: float
    direction: int

    @property
    def control(self) -> bool:
        return self.kind == "control"


@dataclass(frozen=True)
class Unit:
    seed: int
    t: int
    members: tuple[ChildSpec, ...]

    @property
    def key(self) -> str:
        return f"seed{self.seed}-t{self.t}"


ORIGINAL = ChildSpec("original", "original", 0.0, 1.0, 0)
CONTROL = ChildSpec("control", "control", 0.0, 1.0, 0)


def child_name(kind: str, sigma: float, fraction: float, direction: int) -> str:
    return f"{kind}-s{sigma:.3g}-f{fraction:.3g}-d{direction}"


def population_members(cfg: RunConfig) -> tuple[ChildSpec, ...]:
    """[original, control, children...] in a fixed order."""
    p = cfg.perturb
    children = [
        ChildSpec(child_name(kind, sigma, frac, d), kind, float(sigma), float(frac), d)
        for kind in p.kinds
        if kind != "spawn"
        for sigma in p.sigmas
        for frac in p.fractions
        for d in range(p.directions)
    ]
    # Frankle et al.'s spawning baseline: no perturbation, an independent batch stream from t
    # (one stream per direction index).
    if "spawn" in p.kinds:
        children += [
            ChildSpec(child_name("spawn", 0.0, 1.0, d), "spawn", 0.0, 1.0, d)
            for d in range(p.directions)
        ]
    names = [c.name for c in children]
    if len(set(names)) != len(names):
        raise ValueError("perturb grid has duplicate (kind, sigma, fraction) entries")
    return (ORIGINAL, CONTROL, *children)


def plan(cfg: RunConfig) -> list[Unit]:
    """All units of the sweep, longest (earliest t) first within each seed."""
    members = population_members(cfg)
    return [Unit(seed, t, members) for seed in cfg.seeds for t in cfg.perturbation_steps()]


def minimum_steps(cfg: RunConfig) -> int:
    """Training steps the sweep cannot avoid: per seed, T for the original plus T - t per child."""
    T = cfg.recipe.steps
    n_children = len(population_members(cfg)) - 2
    ts = cfg.perturbation_steps()
    per_t = sum((T - t) + n_children * (cfg.child_end(t) - t) for t in ts)  # control + children
    return len(cfg.seeds) * (T + per_t)
