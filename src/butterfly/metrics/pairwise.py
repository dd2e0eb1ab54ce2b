"""Measures between two networks given as modules or state dicts, for use from Python.

>>> import torch, butterfly
>>> a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
>>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> butterfly.metrics.barrier(a, b, (x, y)) >= 0.0
True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from butterfly.layers import statistic_layers, trainable
from butterfly.metrics.barrier import alphas as alpha_grid
from butterfly.metrics.barrier import curve_barrier, interpolate
from butterfly.metrics.distance import l2_distance
from butterfly.metrics.evaluate import LossFn, evaluate
from butterfly.metrics.running import reestimated

Tensors = dict[str, torch.Tensor]
Network = nn.Module | dict[str, torch.Tensor]


def as_params(net: Network, like: nn.Module | None = None) -> tuple[nn.Module, Tensors]:
    """(an architecture to run, the parameters) of a module or a state dict. A state dict
    needs ``like``, a module of the same architecture (its own weights are not used)."""
    if isinstance(net, nn.Module):
        return net, {k: v.detach() for k, v in trainable(net).items()}
    if like is None:
        raise ValueError("a state dict needs model=, a module of the same architecture")
    names = set(trainable(like))
    params = {k: v.detach() for k, v in net.items() if k in names}
    missing = sorted(names - set(params))
    if missing:
        raise ValueError(f"the state dict lacks parameters {missing[:3]} of the architecture")
    return like, params


def split_of(data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of ``data``: an (x, y) pair, or a butterfly Dataset's train or test
    split."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test; got {split!r}")
    try:
        return getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    except AttributeError:
        raise ValueError("data must be an (x, y) pair or a butterfly Dataset") from None


def barrier(
    a: Network,
    b: Network,
    data: Any,
    *,
    model: nn.Module | None = None,
    split: str = "train",
    measure: str = "loss",
    alphas: int = 11,
    loss_fn: LossFn | None = None,
    batch_size: int = 2048,
) -> float | None:
    """The loss (or error) barrier of paper Eq. 4 on the straight line from ``a`` to ``b``:
    the largest excess, over ``alphas`` equidistant points, of the loss along the path above
    the line between the endpoint losses.

    ``a``, ``b``: modules or state dicts (then ``model`` gives the architecture); ``data``:
    an (x, y) pair or a butterfly Dataset (``split`` picks train or test); ``measure``: loss
    (cross-entropy, or ``loss_fn(model, (x, y))``) or error (0-1, for classifiers; None
    otherwise). 0.0 exactly for identical networks. A model with BatchNorm running statistics
    is evaluated at every point with statistics re-estimated on the training inputs of
    ``data`` (the pair's inputs; see :mod:`butterfly.metrics.running`).
    """
    if measure not in ("loss", "error"):
        raise ValueError(f"measure must be loss or error; got {measure!r}")
    arch, pa = as_params(a, model)
    _, pb = as_params(b, model or arch)
    if set(pa) != set(pb):
        raise ValueError("a and b have different parameters: not the same architecture")
    run = copy.deepcopy(arch).eval()
    x, y = split_of(data, split)
    ws = alpha_grid(alphas)
    stats = bool(statistic_layers(run))
    x_stats = split_of(data, "train")[0]  # statistics from training inputs, as a sweep does
    values = []
    for w in ws:
        p = interpolate(pa, pb, w)
        if stats:
            p = {**p, **reestimated(run, p, x_stats, batch_size)}
        e = evaluate(run, p, x, y, batch_size, loss_fn)
        values.append(e.loss if measure == "loss" else e.error)
    return curve_barrier(values, ws)


def l2(a: Network, b: Network, *, model: nn.Module | None = None) -> float:
    """||θ_a − θ_b||₂ over all parameters, in float64."""
    _, pa = as_params(a, model)
    _, pb = as_params(b, model if model is not None else (a if isinstance(a, nn.Module) else None))
    return l2_distance(pa, pb)
