"""Accuracy of the two-network ensemble that averages logits (paper Figure 3, right)."""

from __future__ import annotations

import torch


@torch.no_grad()
def ensemble_accuracy(logits: list[torch.Tensor], y: torch.Tensor) -> float:
    """Accuracy of the mean of the members' logits."""
    mean = torch.stack(logits).mean(0)
    return float((mean.argmax(-1) == y).double().mean())


def f1_and_mcc(pred: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """F1 of class 1 and Matthews' correlation of two-class predictions (GLUE's MRPC/QQP and
    CoLA metrics); 0.0 where a denominator is 0."""
    p, t = pred.long() == 1, y.long() == 1
    tp = float((p & t).sum())
    fp = float((p & ~t).sum())
    fn = float((~p & t).sum())
    tn = float((~p & ~t).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    den = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    mcc = (tp * tn - fp * fn) / den if den else 0.0
    return f1, mcc
