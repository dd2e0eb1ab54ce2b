"""Perturbation directions, masks and the Eq. 6 scale (paper section 3.3, appendix B.3).

A perturbation is ``theta'_t = theta_t + sigma * eps`` with

    eps = (eps_hat * M) / ||eps_hat * M||_2 * sqrt(Var[theta_0 * M])        (Eq. 6)

where ``eps_hat`` is a batch gradient (Eq. 2) or a Kaiming-Gaussian sample (Eq. 3), ``M`` is a
0/1 mask and ``Var[theta_0 * M]`` is the *expected* initialisation variance summed over the
masked elements (2 / fan_in per weight; see :func:`butterfly.models.param_info`). So
``||eps|| = sqrt(sum of masked init variances)`` and ``sigma = 0.01`` is about 1% of the size of
the perturbed part of ``theta_0``. The fraction mask is drawn *before* normalising.

Every random choice is keyed by (seed, t, kind, direction index), never by sigma, so the sizes
of one sweep scan along one direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from butterfly.config import Mask
from butterfly.models import ParamInfo
from butterfly.rng import generator

Tensors = dict[str, torch.Tensor]

MASK_KINDS: dict[str, tuple[str, ...]] = {
    "weights": ("weight",),
    "weights+biases": ("weight", "bias"),
    "biases": ("bias",),
    "norm": ("norm",),
    "biases+norm": ("bias", "norm"),
    "all": ("weight", "bias", "norm"),
}


@dataclass(frozen=True)
class Perturbation:
    """A scaled direction ``eps`` (to be multiplied by sigma) and what produced it."""

    eps: Tensors
    n_masked: int
    expected_norm: float  # sqrt(Var[theta_0 * M]); ||eps|| when normalised


def eligible(info: dict[str, ParamInfo], mask: Mask) -> list[str]:
    """Names of the tensors a mask kind may touch."""
    kinds = MASK_KINDS[mask]
    names = [n for n, i in info.items() if i.kind in kinds]
    if not names:
        raise ValueError(f"perturb.mask = '{mask}' selects no parameter of this model")
    return names


def make_mask(
    shapes: dict[str, torch.Size], names: list[str], fraction: float, *key: object
) -> dict[str, torch.Tensor]:
    """0/1 float masks over ``names``: all ones, or exactly max(1, round(f n)) random elements."""
    if fraction >= 1.0:
        return {n: torch.ones(shapes[n]) for n in names}
    sizes = [math.prod(shapes[n]) for n in names]
    total = sum(sizes)
    k = max(1, round(fraction * total))
    chosen = torch.randperm(total, generator=generator("mask", *key))[:k]
    flat = torch.zeros(total)
    flat[chosen] = 1.0
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for n, size in zip(names, sizes, strict=True):
        out[n] = flat[offset : offset + size].reshape(shapes[n])
        offset += size
    return out


def gaussian_direction(
    shapes: dict[str, torch.Size], info: dict[str, ParamInfo], names: list[str], *key: object
) -> Tensors:
    """Eq. 3: each element ~ N(0, init variance of its tensor), i.e. N(0, 2/fan_in) for weights."""
    g = generator("gaussian", *key)
    return {n: torch.randn(shapes[n], generator=g) * math.sqrt(info[n].init_var) for n in names}


def scale_direction(
    direction: Tensors,
    mask: dict[str, torch.Tensor],
    info: dict[str, ParamInfo],
    normalize: bool = True,
) -> Perturbation:
    """Apply the mask and Eq. 6. Norms are taken in float64."""
    masked = {n: direction[n].to(torch.float64) * mask[n].to(torch.float64) for n in mask}
    n_masked = int(sum(int(m.count_nonzero()) for m in mask.values()))
    target = math.sqrt(
        sum(float((m.to(torch.float64) * info[n].init_var).sum()) for n, m in mask.items())
    )
    if normalize:
        norm = math.sqrt(sum(float(v.square().sum()) for v in masked.values()))
        if norm == 0.0 or not math.isfinite(norm):
            raise FloatingPointError(
                f"perturbation direction has norm {norm} on the masked weights; cannot normalise it"
            )
        factor = target / norm
        masked = {n: v * factor for n, v in masked.items()}
    eps = {n: v.to(direction[n].dtype) for n, v in masked.items()}
    return Perturbation(eps, n_masked, target)


def batch_direction(
    loss_grad: Callable[[Tensors], Tensors], params: Tensors, names: list[str]
) -> Tensors:
    """Eq. 2: the gradient of the training loss at theta_t on an independently drawn batch.

    ``loss_grad`` maps single-model parameters to their gradients on that batch.
    """
    grads = loss_grad(params)
    return {n: grads[n].detach() for n in names}


def apply_perturbation(params: Tensors, pert: Perturbation, sigma: float) -> None:
    """theta += sigma * eps, in place, on the perturbed tensors only."""
    with torch.no_grad():
        for n, e in pert.eps.items():
            params[n].add_(e.to(params[n].device), alpha=sigma)
