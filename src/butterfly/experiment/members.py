"""Who is in a population: the original continuation, the sigma = 0 control and the children
of the perturbation grid, in a fixed order (the order of every result table)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from butterfly.config import RunConfig

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Member:
    """One member of a population. The original has ``kind = 'original'``, the sigma = 0
    control ``kind = 'control'``; children are ``batch``, ``gaussian``, ``spawn`` or ``twin``."""

    name: str
    kind: str
    sigma: float
    fraction: float
    direction: int

    @property
    def control(self) -> bool:
        return self.kind == "control"


@dataclass
class TrainedMember:
    """A member after training: its ``final`` weights (None: not trained, because its
    perturbation was ``undefined``, which says why), whether it ``diverged``, the noise it
    was given (``noise_l2`` = ‖σε‖ over ``n_perturbed`` weights), the step it trained to
    (``end_step``), and the member ``chunk`` it trained in (it is measured against that
    chunk's original)."""

    member: Member
    final: Tensors | None
    diverged: bool
    noise_l2: float = 0.0
    n_perturbed: int = 0
    end_step: int = 0
    chunk: int = 0
    undefined: str | None = None


ORIGINAL = Member("original", "original", 0.0, 1.0, 0)
CONTROL = Member("control", "control", 0.0, 1.0, 0)
TWIN = Member("twin", "twin", 0.0, 1.0, 0)
TWIN_REFUSED = ("perturb.kinds twin needs a second code path, and model '{model}' trains only "
                "member by member (loop mode: running statistics, or a model vmap cannot run)")


def member_name(kind: str, sigma: float, fraction: float, direction: int) -> str:
    return f"{kind}-s{sigma:.3g}-f{fraction:.3g}-d{direction}"


def population_members(cfg: RunConfig, t: int | None = None) -> tuple[Member, ...]:
    """[original, control, children...] of the population perturbed at step ``t``, in a fixed
    order: every (kind, sigma, fraction, direction) of the grid, then one spawned child per
    direction index. The sizes are those of ``t`` (``perturb.sigmas_at`` of its time, else
    ``perturb.sigmas``; ``t = None``: ``perturb.sigmas``)."""
    p = cfg.perturb
    sigmas = p.sigmas if t is None else cfg.sigmas_at_step(t)
    children = [
        Member(member_name(kind, sigma, frac, d), kind, float(sigma), float(frac), d)
        for kind in p.kinds
        if kind not in ("spawn", "twin")
        for sigma in sigmas
        for frac in p.fractions
        for d in range(p.directions)
    ]
    # Frankle et al.'s spawning baseline: no perturbation, an independent batch stream from t
    # (one stream per direction index).
    if "spawn" in p.kinds:
        children += [
            Member(member_name("spawn", 0.0, 1.0, d), "spawn", 0.0, 1.0, d)
            for d in range(p.directions)
        ]
    # the twin: no perturbation, the same batches, trained by another code path (hardware /
    # summation-order noise, appendix C.2)
    if "twin" in p.kinds:
        children.append(TWIN)
    names = [c.name for c in children]
    if len(set(names)) != len(names):
        raise ValueError("perturb grid has duplicate (kind, sigma, fraction) entries")
    return (ORIGINAL, CONTROL, *children)
