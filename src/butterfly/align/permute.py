"""Applying, composing and drawing permutations. Permutations are index tensors and are applied
by indexing (``index_select``), never by multiplying permutation matrices.

Convention: ``perm[i]`` is the unit of the permuted network that lands at position ``i``, so
``apply(spec, perms, params)[name]`` is ``params[name].index_select(axis, perm)`` on every
permuted axis.
"""

from __future__ import annotations

import torch

from butterfly.align.spec import PermutationSpec

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
