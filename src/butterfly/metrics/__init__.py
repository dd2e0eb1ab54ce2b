"""Divergence metrics: L2 distance, loss/error barriers (Eq. 4), angular CKA (Eq. 5),
ensembles, evaluation.

For two networks given as modules or state dicts: :func:`barrier` and :func:`l2`; for two
representation matrices: :func:`angular_cka`. The low-level pieces take already evaluated
values (:func:`curve_barrier`) or parameter dicts (:func:`l2_distance`).
"""

from butterfly.metrics.barrier import alphas, curve_barrier, excess_curve, interpolate
from butterfly.metrics.cka import angular_cka
from butterfly.metrics.distance import is_finite, l2_distance, l2_norm
from butterfly.metrics.evaluate import Bound, Evaluation, evaluate
from butterfly.metrics.pairwise import barrier, l2

__all__ = [
    "Bound",
    "Evaluation",
    "alphas",
    "angular_cka",
    "barrier",
    "curve_barrier",
    "evaluate",
    "excess_curve",
    "interpolate",
    "is_finite",
    "l2",
    "l2_distance",
    "l2_norm",
]
