"""Divergence metrics: L2 distance, loss/error barriers (Eq. 4), evaluation."""

from butterfly.metrics.barrier import alphas, barrier, excess_curve, interpolate
from butterfly.metrics.distance import is_finite, l2_distance, l2_norm
from butterfly.metrics.evaluate import Evaluation, evaluate

__all__ = [
    "Evaluation",
    "alphas",
    "barrier",
    "evaluate",
    "excess_curve",
    "interpolate",
    "is_finite",
    "l2_distance",
    "l2_norm",
]
