"""Orchestration: plan a sweep, run its tasks on an executor, keep every result in the store.

Knows nothing of the method's internals: it calls :mod:`butterfly.experiment` and stores the rows
it returns. The run session (:mod:`butterfly.sweep.session`) is what every pipeline shares;
pipelines (a plain sweep, fine-tuning from pre-training checkpoints, a threshold search) sit on
top in :mod:`butterfly.sweep.pipelines`.
"""

from butterfly.sweep.plan import Unit, plan
from butterfly.sweep.runner import run_sweep
from butterfly.sweep.session import (
    DeterminismError,
    Execution,
    RunSession,
    SweepFailed,
    SweepOutcome,
)
from butterfly.sweep.store import Store, read_results

__all__ = [
    "DeterminismError",
    "Execution",
    "RunSession",
    "Store",
    "SweepFailed",
    "SweepOutcome",
    "Unit",
    "plan",
    "read_results",
    "run_sweep",
]
