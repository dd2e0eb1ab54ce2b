"""butterfly: spawn-and-perturb experiments on neural network training stability.

Train a network to step t, copy it, perturb the copy by sigma * eps, train both on identical
batches, and measure how far they end up apart (paper: "The Butterfly Effect: Neural Network
Training Trajectories Are Highly Sensitive to Initial Conditions", ICML 2025).

Sweeps:

* :func:`run` -- a sweep from a config, a YAML file or a preset (the default sweep with none);
* :class:`Experiment` -- a sweep of your own ``nn.Module``, data and loss function;
* :class:`Run` -- what both return: results, the run folder, the report.

Measures and perturbations on any two networks (modules or state dicts):

* :func:`compare` -- every divergence measure between two networks on some data;
* :func:`perturb` -- a copy of a network perturbed by sigma * eps (paper Eq. 2, 3, 6);
* ``butterfly.metrics.barrier``, ``butterfly.metrics.l2``, ``butterfly.metrics.angular_cka``;
* ``butterfly.data.from_tensors`` -- your tensors as a data set.

>>> import butterfly
>>> run = butterfly.run(overrides=["seeds=[0]"], out="runs/quick")  # doctest: +SKIP
"""

from __future__ import annotations

from butterfly import data, metrics
from butterfly.api import Experiment, Run, run
from butterfly.compare import compare
from butterfly.config import ConfigError, RunConfig, load_config
from butterfly.experiment.perturb import perturb

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "Experiment",
    "Run",
    "RunConfig",
    "__version__",
    "compare",
    "data",
    "load_config",
    "metrics",
    "perturb",
    "run",
]
