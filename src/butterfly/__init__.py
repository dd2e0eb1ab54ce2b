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

import importlib
from typing import TYPE_CHECKING, Any

from butterfly.config import ConfigError, RunConfig, load_config
from butterfly.version import __version__

if TYPE_CHECKING:
    from butterfly import data, metrics
    from butterfly.api import Experiment, Run, run
    from butterfly.comparison import compare
    from butterfly.experiment.perturb import perturb

# Imported on first use, so that the CLI's light commands (--version, presets, config, status)
# and worker processes do not pay for torch, pandas and the sweep machinery up front.
_LAZY = {
    "Experiment": "butterfly.api",
    "Run": "butterfly.api",
    "run": "butterfly.api",
    "compare": "butterfly.comparison",
    "perturb": "butterfly.experiment.perturb",
    "data": None,
    "metrics": None,
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'butterfly' has no attribute {name!r}")
    where = _LAZY[name]
    value = (importlib.import_module(f"butterfly.{name}") if where is None
             else getattr(importlib.import_module(where), name))  # fmt: skip
    globals()[name] = value
    return value


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
