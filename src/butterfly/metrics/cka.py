"""Angular CKA with a linear kernel and the reduced-bias HSIC estimator (paper Eq. 5, app. B.2).

    HSIC(X, Y) = 2 / (m (m - 3)) < tril(H X X^T H), tril(H Y Y^T H) >_F
    CKA(X, Y)  = arccos( HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)) )

``tril`` keeps the strictly lower triangle: the diagonal of the centred Gram matrices is ignored
(Lange et al., 2023). Everything is computed in float64: in float32 a true distance of 1.4e-3
rad reads as 0.0.
"""

from __future__ import annotations

import math

import torch


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64).reshape(len(x), -1)
    k = x @ x.T
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _hsic(k: torch.Tensor, g: torch.Tensor) -> float:
    m = k.shape[0]
    lower = torch.tril(torch.ones(m, m, dtype=torch.bool, device=k.device), diagonal=-1)
    return float(2.0 / (m * (m - 3)) * (k[lower] * g[lower]).sum())


def angular_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """The angle in radians between representations ``x`` (m, p) and ``y`` (m, q); 0 = same."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 4:
        raise ValueError("angular CKA needs at least 4 examples (the estimator divides by m - 3)")
    k, g = _centred_gram(x), _centred_gram(y)
    kl, kk, ll = _hsic(k, g), _hsic(k, k), _hsic(g, g)
    if kk <= 0 or ll <= 0:
        return float("nan")
    c = kl / math.sqrt(kk * ll)
    return math.acos(min(1.0, max(-1.0, c)))
