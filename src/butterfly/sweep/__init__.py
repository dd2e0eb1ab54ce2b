"""Orchestration: plan a sweep, run its tasks on an executor, keep every result in the store.

Knows nothing of the method's internals: it calls :mod:`butterfly.experiment` and stores the rows
it returns. Pipelines (a plain sweep, fine-tuning from pre-training checkpoints) sit on top in
:mod:`butterfly.sweep.pipelines`.
"""

from butterfly.sweep.plan import Unit, plan
from butterfly.sweep.runner import DeterminismError, SweepFailed, SweepOutcome, run_sweep
from butterfly.sweep.store import Store, read_results

__all__ = [
    "DeterminismError",
    "Store",
    "SweepFailed",
    "SweepOutcome",
    "Unit",
    "plan",
    "read_results",
    "run_sweep",
]
