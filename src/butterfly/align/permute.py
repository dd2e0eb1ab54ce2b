"""Applying, composing and drawing permutations. Permutations are index tensors and are applied
by indexing (``index_select``), never by multiplying permutation matrices.

Convention: ``perm[i]`` is the unit of the permuted network that lands at position ``i``, so
``apply(spec, perms, params)[name]`` is ``params[name].index_select(axis, perm)`` on every
permuted axis.
"""

from __future__ import annotations

import torch

from butterfly.align.spec import PermutationSpec
from butterfly.layers import running_statistics

Tensors = dict[str, torch.Tensor]
Perms = dict[str, torch.Tensor]


def permute_param(
    spec: PermutationSpec, perms: Perms, name: str, w: torch.Tensor, except_axis: int | None = None
) -> torch.Tensor:
    for axis, p in spec.axes_to_perm.get(name, {}).items():
        if axis != except_axis:
            w = w.index_select(axis, perms[p].to(w.device))
    return w


def apply_permutation(spec: PermutationSpec, perms: Perms, params: Tensors) -> Tensors:
    """The network ``params`` with its hidden units permuted by ``perms``; same function."""
    return {k: permute_param(spec, perms, k, v) for k, v in params.items()}


def identity(spec: PermutationSpec, params: Tensors) -> Perms:
    return {p: torch.arange(n) for p, n in spec.sizes(params).items()}


def compose(outer: Perms, inner: Perms) -> Perms:
    """The permutation equal to applying ``inner`` and then ``outer``."""
    return {p: inner[p][outer[p]] for p in outer}


def fixed_point_fraction(perms: Perms) -> tuple[float, dict[str, float]]:
    """Fraction of units left in place: pooled over all permutations, and per permutation."""
    per = {p: float((v == torch.arange(len(v))).double().mean()) for p, v in perms.items()}
    total = sum(len(v) for v in perms.values())
    pooled = sum(int((v == torch.arange(len(v))).sum()) for v in perms.values()) / max(total, 1)
    return pooled, per


def random_permutation(n: int, fixed_fraction: float, g: torch.Generator) -> torch.Tensor:
    """A permutation of ``n`` with exactly round(f n) fixed points (one more if the rest is 1)."""
    k = round(fixed_fraction * n)
    order = torch.randperm(n, generator=g)
    moved = order[k:]
    perm = torch.arange(n)
    if len(moved) >= 2:
        perm[moved] = moved.roll(1)  # a cycle through the moved units: none stays in place
    return perm


def random_perms(
    spec: PermutationSpec, params: Tensors, fixed_fraction: float, g: torch.Generator
) -> Perms:
    return {p: random_permutation(n, fixed_fraction, g) for p, n in spec.sizes(params).items()}


@torch.no_grad()
def spec_error(model: torch.nn.Module, spec: PermutationSpec, x: torch.Tensor) -> float:
    """How far a random permutation of every permutation in ``spec`` (no unit left in place)
    moves the model's outputs on ``x``: max |f_P(x) - f(x)| / (1 + max |f(x)|). Rounding-level
    for a correct spec; of order one for a wrong one."""
    from torch.func import functional_call

    params = {k: v.detach() for k, v in model.named_parameters()}
    perms = random_perms(spec, params, 0.0, torch.Generator().manual_seed(0))
    params.update(running_statistics(model))  # permuted with their channels
    a = functional_call(model, params, (x,))
    b = functional_call(model, apply_permutation(spec, perms, params), (x,))
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise ValueError("spec_error needs a model whose output is one tensor")
    return float((a - b).abs().max() / (1 + a.abs().max()))
