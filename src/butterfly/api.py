"""The Python API, mirroring the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from butterfly.config import RunConfig, build_config, load_config
from butterfly.report import build_report
from butterfly.sweep import DeterminismError
from butterfly.sweep.pipelines import run_pipeline


def resolve_config(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    if isinstance(config, RunConfig):
        return build_config(config.to_dict(), overrides) if overrides else config
    if isinstance(config, dict):
        return build_config(config, overrides)
    return load_config(config, overrides)


def run(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    out: str | Path = "runs/default",
    overrides: list[str] | None = None,
    workers: int | None = None,
    quiet: bool = True,
    check: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a sweep and return its results, one row per child.

    ``config`` is a :class:`RunConfig`, a dict of the YAML keys, a YAML path, or None for the
    default sweep; ``overrides`` are ``"key=value"`` strings like ``--set``. Raises
    :class:`DeterminismError` if a sigma = 0 control is not exactly zero (``check=False`` to
    return the results anyway).
    """
    cfg = resolve_config(config, overrides)
    outcome = run_pipeline(cfg, Path(out), workers=workers, quiet=quiet)
    build_report([outcome.run_dir])
    if check and not outcome.control_ok:
        raise DeterminismError(f"the sigma = 0 control is not exactly zero in {out}")
    return outcome.results
