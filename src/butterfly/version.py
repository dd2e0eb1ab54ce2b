"""butterfly's version (one owner: the package, the CLI and every run's environment read it)."""

__version__ = "0.1.0"
