"""Plan, execute and store sweeps."""

from butterfly.sweep.plan import Unit, plan
from butterfly.sweep.runner import DeterminismError, SweepOutcome, check_control, run_sweep
from butterfly.sweep.store import Store, read_results

__all__ = [
    "DeterminismError",
    "Store",
    "SweepOutcome",
    "Unit",
    "check_control",
    "plan",
    "read_results",
    "run_sweep",
]
