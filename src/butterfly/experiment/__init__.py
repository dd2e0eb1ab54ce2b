"""The paper's method, top to bottom, knowing nothing of scheduling or files.

* :mod:`~butterfly.experiment.setup`: one seed of an experiment (data, θ0, trainer, comparer);
* :mod:`~butterfly.experiment.members`: who is in a population;
* :mod:`~butterfly.experiment.perturb`: directions (Eq. 2, 3), masks, Eq. 6, the SGD-noise size;
* :mod:`~butterfly.experiment.spawn`: the parent run and the population run from it at t;
* :mod:`~butterfly.experiment.measure`: every divergence measure, trajectories, the control check;
* :mod:`~butterfly.experiment.rows`: the one row schema the store and the report share.
"""

from butterfly.experiment.measure import Comparer, check_control
from butterfly.experiment.members import CONTROL, ORIGINAL, Member, population_members
from butterfly.experiment.setup import Setup, configure_torch, make_setup
from butterfly.experiment.spawn import PopulationRun, run_population, train_parent

__all__ = [
    "CONTROL",
    "ORIGINAL",
    "Comparer",
    "Member",
    "PopulationRun",
    "Setup",
    "check_control",
    "configure_torch",
    "make_setup",
    "population_members",
    "run_population",
    "train_parent",
]
