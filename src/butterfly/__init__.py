"""butterfly: spawn-and-perturb experiments on neural network training stability.

>>> import butterfly
>>> df = butterfly.run(overrides=["seeds=[0]"], out="runs/quick")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from butterfly.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from butterfly.api import run

__version__ = "0.1.0"
__all__ = ["ConfigError", "RunConfig", "__version__", "load_config", "run"]


def __getattr__(name: str) -> Any:
    # imported lazily so that worker processes do not load matplotlib and pandas plotting
    if name == "run":
        from butterfly.api import run

        return run
    raise AttributeError(f"module 'butterfly' has no attribute {name!r}")
