"""L2 distance between parameter vectors (paper section 3.4), accumulated in float64."""

from __future__ import annotations

import math

import torch

Tensors = dict[str, torch.Tensor]


def l2_distance(a: Tensors, b: Tensors) -> float:
    """||theta_a - theta_b||_2 over all tensors of ``a`` (which ``b`` must also have)."""
    total = 0.0
    for k, va in a.items():
        d = va.detach().to(torch.float64) - b[k].detach().to(torch.float64)
        total += float(d.square().sum())
    return math.sqrt(total)


def l2_norm(a: Tensors) -> float:
    return math.sqrt(sum(float(v.detach().to(torch.float64).square().sum()) for v in a.values()))


def is_finite(a: Tensors) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in a.values())
