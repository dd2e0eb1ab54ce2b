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
    spec: PermutationSpec,
    perms: Perms,
    name: str,
    w: torch.Tensor,
    except_: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``w`` (the tensor ``name``) with every (axis, offset) entry of ``spec`` on it applied,
    except the one ``except_`` names."""
    by_axis: dict[int, list[tuple[int, str]]] = {}
    for axis, off, p in spec.slots.get(name, ()):
        if (axis, off) != except_:
            by_axis.setdefault(axis, []).append((off, p))
    for axis, parts in by_axis.items():
        if len(parts) == 1 and parts[0][0] == 0 and len(perms[parts[0][1]]) == w.shape[axis]:
            index = perms[parts[0][1]]
        else:  # parts of the axis (packed projections), each moved within its own range
            index = torch.arange(w.shape[axis])
            for off, p in parts:
                index[off : off + len(perms[p])] = perms[p] + off
        w = w.index_select(axis, index.to(w.device))
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


def is_identity(perms: Perms) -> bool:
    """Whether every permutation leaves every unit in place (permuting by it changes nothing)."""
    return all(torch.equal(v, torch.arange(len(v), device=v.device)) for v in perms.values())


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
    """A random permutation of every permutation of ``spec`` leaving round(f n) of its n units
    in place; those of a head group move heads as blocks (one head order for the group)."""
    sizes = spec.sizes(params)
    plans: dict[str, tuple[torch.Tensor, dict[int, int]]] = {}
    out: Perms = {}
    for p, n in sizes.items():
        if p not in spec.heads:
            out[p] = random_permutation(n, fixed_fraction, g)
            continue
        group, d = spec.heads[p]
        if group not in plans:
            plans[group] = head_plan(n // d, d, fixed_fraction, g)
        order, kept = plans[group]
        within = []
        for h in range(n // d):
            if order[h] != h:
                within.append(torch.randperm(d, generator=g))  # a moved head: every unit moves
            elif kept[h] == d:
                within.append(torch.arange(d))
            else:
                within.append(random_permutation(d, kept[h] / d, g))
        out[p] = (order[:, None] * d + torch.stack(within)).reshape(-1)
    return out


def head_plan(
    H: int, d: int, fixed_fraction: float, g: torch.Generator
) -> tuple[torch.Tensor, dict[int, int]]:
    """(head order, units left in place per head that keeps its place) for round(f H d) fixed
    units: whole heads fixed, one head (or two, when one would have to move a single unit) partly,
    the rest moved in a cycle; a single head left to move keeps its place and moves all its
    units instead. Exact except for n - 1 fixed units, or an odd number with two units a head."""
    m = round(fixed_fraction * H * d)
    whole, r = divmod(m, d)
    heads = torch.randperm(H, generator=g).tolist()
    kept = {h: d for h in heads[:whole]}
    rest = heads[whole:]
    if r and r == d - 1 and d >= 3 and len(rest) >= 2:  # d - 1 in one head cannot be: split
        kept[rest[0]], kept[rest[1]] = d - 2, 1
        rest = rest[2:]
    elif r and rest:
        kept[rest[0]] = r
        rest = rest[1:]
    if len(rest) == 1:
        kept[rest[0]] = 0
        rest = []
    order = torch.arange(H)
    if rest:
        moved = torch.tensor(rest)
        order[moved] = moved.roll(1)
    return order, kept


@torch.no_grad()
def spec_error(model: torch.nn.Module, spec: PermutationSpec, x: torch.Tensor) -> float:
    """How far a random permutation of every permutation in ``spec`` (no unit left in place)
    moves the model's outputs on ``x``: max |f_P(x) - f(x)| / max |f(x)|. Rounding-level for
    a correct spec; far above it for a wrong one (relative to the outputs' own scale, so that
    a freshly initialised transformer's small logits do not hide an error)."""
    from torch.func import functional_call

    params = {k: v.detach() for k, v in model.named_parameters()}
    perms = random_perms(spec, params, 0.0, torch.Generator().manual_seed(0))
    params.update(running_statistics(model))  # permuted with their channels
    a = functional_call(model, params, (x,))
    b = functional_call(model, apply_permutation(spec, perms, params), (x,))
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise ValueError("spec_error needs a model whose output is one tensor")
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
