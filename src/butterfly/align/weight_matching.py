"""Weight matching (Ainsworth et al., 2023, Algorithm 1): coordinate descent over permutations.

For each permutation P_l in a seeded random order, solve the linear assignment

    max_P  sum over (tensor, axis) of P_l:  < W_a, P W_b' >     (W_b' = W_b with its other axes
                                                                already permuted)

with SciPy's ``linear_sum_assignment``; repeat until a full pass improves nothing or
``max_iter`` passes are done. Computed in float64.

Attention heads (a spec's head groups) are solved together: for every pair (head i of a,
head k of b) and every permutation of the group, the best within-head assignment of the block
``A[i, k]`` is one linear assignment; the head order is then the assignment maximising the
sum of those blocks' values over the group, which is the exact optimum over block-structured
permutations with the other permutations held fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from butterfly.align.permute import Perms, identity, permute_param
from butterfly.align.spec import PermutationSpec, entry
from butterfly.layers import RUNNING_BUFFERS
from butterfly.rng import generator

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MatchResult:
    perms: Perms
    iterations: int
    converged: bool


def _similarity(spec: PermutationSpec, perms: Perms, p: str, a: Tensors, b: Tensors) -> np.ndarray:
    n = spec.sizes(a)[p]
    A = torch.zeros(n, n, dtype=torch.float64, device=next(iter(a.values())).device)
    for ax in spec.perm_to_axes[p]:
        name, axis, off = entry(ax)
        if name not in a and name.rsplit(".", 1)[-1] in RUNNING_BUFFERS:
            continue  # running statistics: permuted with their channels, never matched
        wa = a[name].detach().to(torch.float64).narrow(axis, off, n).movedim(axis, 0)
        wb = permute_param(spec, perms, name, b[name].detach().to(torch.float64), (axis, off))
        wb = wb.narrow(axis, off, n).movedim(axis, 0)
        A += wa.reshape(n, -1) @ wb.reshape(n, -1).T
    return A.cpu().numpy()  # computed where the weights are (a GPU's), assigned on the CPU


def _assign(A: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment  # here: 0.6 s a worker need not pay

    rows, cols = linear_sum_assignment(A, maximize=True)
    assert (rows == np.arange(len(rows))).all()
    return cols


def heads_assignment(blocks: list[np.ndarray], d: int) -> list[np.ndarray]:
    """The best block-structured permutations for similarity matrices sharing a head order."""
    H = blocks[0].shape[0] // d
    value = np.zeros((H, H))
    inner: dict[tuple[int, int, int], np.ndarray] = {}
    for j, A in enumerate(blocks):
        B = A.reshape(H, d, H, d)
        for h in range(H):
            for k in range(H):
                cols = _assign(B[h, :, k, :])
                inner[j, h, k] = cols
                value[h, k] += B[h, np.arange(d), k, cols].sum()
    order = _assign(value)
    return [np.concatenate([order[h] * d + inner[j, h, order[h]] for h in range(H)])
            for j in range(len(blocks))]  # fmt: skip


def weight_matching(
    spec: PermutationSpec,
    a: Tensors,
    b: Tensors,
    max_iter: int = 100,
    seed: int = 0,
    init: Perms | None = None,
) -> MatchResult:
    """Permutations of ``b``'s units that (locally) maximise its weight alignment with ``a``.

    With attention heads and no ``init``, the other permutations are matched first on the
    tensors no head permutation touches (a head permutation still unknown would blur every
    tensor it shares), and the whole spec is then matched from there."""
    attention = spec.attention_perms()
    if init is None and attention:
        touched = {x[0] for p in attention for x in spec.perm_to_axes[p]}
        rest = PermutationSpec(
            {p: kept for p, axes in spec.perm_to_axes.items() if p not in attention
             and (kept := tuple(x for x in axes if x[0] not in touched))},
            {p: n for p, n in spec.sizes(a).items() if p not in attention},
            {p: h for p, h in spec.heads.items() if p not in attention})  # fmt: skip
        first = weight_matching(rest, a, b, max_iter, seed).perms
        init = {**identity(spec, a), **first}
    perms = {k: v.clone() for k, v in (init or identity(spec, a)).items()}
    grouped = spec.head_groups()
    units = [[p] for p in spec.perm_to_axes if p not in spec.heads] + list(grouped.values())
    g = generator("weight-matching", seed)
    for it in range(1, max_iter + 1):
        progress = False
        for i in torch.randperm(len(units), generator=g).tolist():
            unit = units[i]
            As = [_similarity(spec, perms, p, a, b) for p in unit]
            if unit[0] in spec.heads:
                found = heads_assignment(As, spec.heads[unit[0]][1])
            else:
                found = [_assign(As[0])]
            at = np.arange(len(found[0]))
            old = sum(float(A[at, perms[p].numpy()].sum()) for p, A in zip(unit, As, strict=True))
            new = sum(float(A[at, c].sum()) for A, c in zip(As, found, strict=True))
            if new > old + 1e-12 * max(abs(old), 1.0):
                for p, c in zip(unit, found, strict=True):
                    perms[p] = torch.from_numpy(c).long()
                progress = True
        if not progress:
            return MatchResult(perms, it, True)
    return MatchResult(perms, max_iter, False)
