"""Optimizers and schedules as a user writes them, named by import path in the tests
(``optim_zoo:Lion``): a Lion from the paper's pseudo-code, an optimizer whose update couples the
members it is given (a LARS-style per-tensor trust ratio), one that cannot take parameter
groups, and schedules good and bad."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023), element-wise: p -= lr sign(b1 m + (1 - b1) g)."""

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):  # fmt: skip
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: object = None) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                c = m.mul(b1).add(p.grad, alpha=1 - b1)
                p.add_(c.sign(), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


class TrustSGD(torch.optim.Optimizer):
    """SGD scaled per tensor by ||p|| / ||g|| (LARS-style): the norm of a stacked tensor mixes
    the members, so butterfly must step each member alone."""

    def __init__(self, params: Iterable, lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: object = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                ratio = p.norm() / (p.grad.norm() + 1e-12)
                p.add_(p.grad * ratio, alpha=-group["lr"])


class NoGroups(torch.optim.Optimizer):
    """An optimizer that takes a list of tensors only, not parameter groups."""

    def __init__(self, params: Iterable, lr: float = 0.01):
        params = list(params)
        if params and isinstance(params[0], dict):
            raise TypeError("NoGroups takes tensors, not parameter groups")
        super().__init__(params, {"lr": lr})


def halve_at_half(step: int, T: int) -> float:
    return 1.0 if step < T // 2 else 0.5


def negative_late(step: int, T: int) -> float:
    return 1.0 if step < T - 3 else -0.1


def nan_schedule(step: int, T: int) -> float:
    return math.nan if step == 7 else 1.0
