"""Weight matching (Ainsworth et al., 2023, Algorithm 1): coordinate descent over permutations.

For each permutation P_l in a seeded random order, solve the linear assignment

    max_P  sum over (tensor, axis) of P_l:  < W_a, P W_b' >     (W_b' = W_b with its other axes
                                                                already permuted)

with SciPy's ``linear_sum_assignment``; repeat until a full pass improves nothing or
``max_iter`` passes are done. Computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from butterfly.align.permute import Perms, identity, permute_param
from butterfly.align.spec import PermutationSpec
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
    A = torch.zeros(n, n, dtype=torch.float64)
    for name, axis in spec.perm_to_axes[p]:
        if name not in a and name.rsplit(".", 1)[-1] in RUNNING_BUFFERS:
            continue  # running statistics: permuted with their channels, never matched
        wa = a[name].detach().to(torch.float64).movedim(axis, 0).reshape(n, -1)
        wb = permute_param(spec, perms, name, b[name].detach().to(torch.float64), except_axis=axis)
        A += wa @ wb.movedim(axis, 0).reshape(n, -1).T
    return A.numpy()


def weight_matching(
    spec: PermutationSpec,
    a: Tensors,
    b: Tensors,
    max_iter: int = 100,
    seed: int = 0,
    init: Perms | None = None,
) -> MatchResult:
    """Permutations of ``b``'s units that (locally) maximise its weight alignment with ``a``."""
    perms = {k: v.clone() for k, v in (init or identity(spec, a)).items()}
    names = list(spec.perm_to_axes)
    g = generator("weight-matching", seed)
    for it in range(1, max_iter + 1):
        progress = False
        for i in torch.randperm(len(names), generator=g).tolist():
            p = names[i]
            A = _similarity(spec, perms, p, a, b)
            rows, cols = linear_sum_assignment(A, maximize=True)
            assert (rows == np.arange(len(rows))).all()
            old = float(A[np.arange(len(cols)), perms[p].numpy()].sum())
            new = float(A[rows, cols].sum())
            if new > old + 1e-12 * max(abs(old), 1.0):
                perms[p] = torch.from_numpy(cols).long()
                progress = True
        if not progress:
            return MatchResult(perms, it, True)
    return MatchResult(perms, max_iter, False)
