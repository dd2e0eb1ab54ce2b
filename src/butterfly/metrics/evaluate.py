"""Evaluation of many parameter sets on a data set: mean cross-entropy and 0-1 error.

Two code paths: :func:`evaluate` runs one parameter set at a time, :func:`evaluate_stacked` K
stacked sets in one vectorised pass. Within one path every parameter set goes through the same
operations with the same chunking, so identical parameters give bit-identical numbers (the two
paths agree to rounding, not bit for bit). :func:`evaluate` sums each chunk's cross-entropy in
the model's dtype and accumulates the chunks in float64; :func:`evaluate_stacked` sums
per-example losses in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    loss: float
    error: float

    @property
    def accuracy(self) -> float:
        return 1.0 - self.error


@torch.no_grad()
def evaluate(
    model: nn.Module, params: Tensors, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> Evaluation:
    """Mean cross-entropy and error rate of ``model`` with ``params`` on ``(x, y)``."""
    loss_sum = 0.0
    wrong = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = functional_call(model, params, (xb,))
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum").to(torch.float64))
        wrong += int((logits.argmax(-1) != yb).sum())
    n = len(y)
    return Evaluation(loss_sum / n, wrong / n)


@torch.no_grad()
def logits_of(
    model: nn.Module, params: Tensors, x: torch.Tensor, batch_size: int = 2048
) -> torch.Tensor:
    return torch.cat(
        [
            functional_call(model, params, (x[i : i + batch_size],))
            for i in range(0, len(x), batch_size)
        ]
    )


@torch.no_grad()
def evaluate_stacked(
    model: nn.Module, params: Tensors, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> list[Evaluation]:
    """:func:`evaluate` for K parameter sets stacked on a leading axis, in one vectorised pass
    per chunk of examples (K x chunk <= ``batch_size`` rows at a time)."""
    K = next(iter(params.values())).shape[0]
    chunk = max(1, batch_size // K)
    forward = vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))
    loss_sum = torch.zeros(K, dtype=torch.float64)
    wrong = torch.zeros(K, dtype=torch.int64)
    for i in range(0, len(y), chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        logits = forward(params, xb)  # (K, B, C)
        ce = F.cross_entropy(logits.flatten(0, 1), yb.repeat(K), reduction="none")
        loss_sum += ce.view(K, -1).to(torch.float64).sum(1).cpu()
        wrong += (logits.argmax(-1) != yb).sum(1).cpu()
    n = len(y)
    return [Evaluation(float(loss_sum[k]) / n, int(wrong[k]) / n) for k in range(K)]
