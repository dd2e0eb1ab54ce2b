"""L2 distance between parameter vectors (paper section 3.4), accumulated in float64."""

from __future__ import annotations

import math

import torch

Tensors = dict[str, torch.Tensor]


def l2_distance(a: Tensors, b: Tensors) -> float:
    """||theta_a - theta_b||_2 over all tensors of ``a`` (which ``b`` must also have), summed
    in float64 over the tensors in sorted name order (so the same weights give the same bits
    whatever order their dict holds them in: a model's, or a checkpoint's)."""
    total = 0.0
    for k in sorted(a):
        d = a[k].detach().to(torch.float64) - b[k].detach().to(torch.float64)
        total += float(d.square().sum())
    return math.sqrt(total)


def l2_norm(a: Tensors) -> float:
    """||theta||_2 over all tensors, summed in sorted name order as :func:`l2_distance`."""
    return math.sqrt(sum(float(a[k].detach().to(torch.float64).square().sum()) for k in sorted(a)))


def is_finite(a: Tensors) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in a.values())
