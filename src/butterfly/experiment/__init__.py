"""The paper's method, top to bottom, knowing nothing of scheduling or files.

* :mod:`~butterfly.experiment.resolve`: a config settled once for this machine and data set;
* :mod:`~butterfly.experiment.setup`: one seed of an experiment (data, θ0, trainer, comparer);
* :mod:`~butterfly.experiment.members`: who is in a population, and each member once trained;
* :mod:`~butterfly.experiment.perturb`: directions (Eq. 2, 3), masks, Eq. 6, the SGD-noise size;
* :mod:`~butterfly.experiment.spawn`: the parent run and the population run from it at t;
* :mod:`~butterfly.experiment.comparer`: every divergence measure between two networks;
* :mod:`~butterfly.experiment.measure`: the rows of a population;
* :mod:`~butterfly.experiment.verdict`: the control check and the determinism verdict;
* :mod:`~butterfly.experiment.rows`: the one row schema the store and the report share;
* :mod:`~butterfly.experiment.threshold`, :mod:`~butterfly.experiment.lyapunov`: the edge of
  stability and the linearised prediction.
"""

from butterfly.experiment.comparer import Comparer
from butterfly.experiment.members import (
    CONTROL,
    ORIGINAL,
    Member,
    TrainedMember,
    population_members,
)
from butterfly.experiment.resolve import Resolved
from butterfly.experiment.setup import Setup, configure_torch, make_setup
from butterfly.experiment.spawn import PopulationRun, run_population, train_parent
from butterfly.experiment.verdict import check_control

__all__ = [
    "CONTROL",
    "ORIGINAL",
    "Comparer",
    "Member",
    "PopulationRun",
    "Resolved",
    "Setup",
    "TrainedMember",
    "check_control",
    "configure_torch",
    "make_setup",
    "population_members",
    "run_population",
    "train_parent",
]
