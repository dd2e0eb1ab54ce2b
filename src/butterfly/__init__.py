"""butterfly: spawn-and-perturb experiments on neural network training stability.

>>> import butterfly
>>> df = butterfly.run(overrides=["seeds=[0]"], out="runs/quick")  # doctest: +SKIP
"""

from butterfly.api import run
from butterfly.config import ConfigError, RunConfig, load_config

__version__ = "0.1.0"
__all__ = ["ConfigError", "RunConfig", "__version__", "load_config", "run"]
