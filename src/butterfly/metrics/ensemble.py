"""Accuracy of the two-network ensemble that averages logits (paper Figure 3, right)."""

from __future__ import annotations

import torch
from torch import nn

from butterfly.metrics.evaluate import logits_of

Tensors = dict[str, torch.Tensor]


@torch.no_grad()
def ensemble_accuracy(
    model: nn.Module,
    members: list[Tensors],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
) -> float:
    logits = torch.stack([logits_of(model, p, x, batch_size) for p in members]).mean(0)
    return float((logits.argmax(-1) == y).double().mean())
