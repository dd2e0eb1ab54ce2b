"""Loss and error barriers on the linear path between two networks (paper Eq. 4, appendix B.1).

    B = sup_alpha  l(theta(alpha)) - [(1 - alpha) l(theta_a) + alpha l(theta_b)]
    theta(alpha) = theta_a + alpha (theta_b - theta_a)

evaluated at ``n`` equidistant alphas in [0, 1] with the endpoints' losses *interpolated*
(Sharma et al., 2024), not averaged. This is the literal Eq. 4: the maximum of the excess over
the interpolated endpoints, not the excess at the alpha where the loss is largest. Both the path
and the interpolation are written as ``a + alpha (b - a)`` so that identical networks give a
barrier of exactly 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensors = dict[str, torch.Tensor]


def alphas(n: int = 11) -> list[float]:
    """``n`` equidistant interpolation weights from 0 to 1 inclusive."""
    return [i / (n - 1) for i in range(n)]


def interpolate(a: Tensors, b: Tensors, alpha: float) -> Tensors:
    """theta_a + alpha (theta_b - theta_a); exactly ``a`` at alpha 0 and ``b`` at alpha 1."""
    if alpha == 0.0:
        return dict(a)
    if alpha == 1.0:
        return dict(b)
    return {k: a[k] + alpha * (b[k] - a[k]) for k in a}


def excess_curve(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Excess of each path value over the line between the endpoint values."""
    if len(values) != len(weights) or len(values) < 2:
        raise ValueError("need one value per alpha and at least two alphas")
    if weights[0] != 0.0 or weights[-1] != 1.0:
        raise ValueError("alphas must start at 0 and end at 1")
    la, lb = float(values[0]), float(values[-1])
    return [float(v) - (la + w * (lb - la)) for v, w in zip(values, weights, strict=True)]


def curve_barrier(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """Eq. 4 on a path already evaluated: the largest excess of ``values`` (one per alpha in
    ``weights``) over the interpolated endpoints (0 at the endpoints). None if any value is
    None (a measure the model does not have, e.g. an error rate without class scores)."""
    if any(v is None for v in values):
        return None
    return max(excess_curve([float(v) for v in values], weights))  # type: ignore[arg-type]
