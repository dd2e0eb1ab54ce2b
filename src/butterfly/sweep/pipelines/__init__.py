"""Pipelines: what ``butterfly run`` runs for a config, above the sweep runner.

* a plain config is one sweep (:func:`butterfly.sweep.runner.run_sweep`);
* a config with a ``pretrain`` section is the fine-tuning pipeline
  (:func:`butterfly.sweep.pipelines.finetune.run_finetune`): pre-training, then one sweep per
  pre-training checkpoint, in one run folder;
* a config with a ``threshold`` section searches the edge of stability
  (:func:`butterfly.sweep.pipelines.threshold.run_threshold`): σ*(t) or t*(σ) by rounds of
  populations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from butterfly.config import RunConfig
from butterfly.experiment.setup import resolve_epochs
from butterfly.sweep import rundir
from butterfly.sweep.pipelines.finetune import run_finetune
from butterfly.sweep.pipelines.threshold import run_threshold
from butterfly.sweep.runner import SweepOutcome, log, run_sweep


def epochs_resolved(cfg: RunConfig, run_dir: Path | None, quiet: bool = True) -> RunConfig:
    """``cfg`` with epoch-based recipes turned into steps, saying what they became."""
    if not cfg.needs_epochs:
        return cfg
    out = resolve_epochs(cfg, run_dir)
    for what, before, after in (("recipe", cfg.recipe, out.recipe),
                                ("pretrain.recipe", cfg.pretrain and cfg.pretrain.recipe,
                                 out.pretrain and out.pretrain.recipe)):  # fmt: skip
        if before is not None and after is not None and before.epochs is not None:
            log(f"{what}.epochs = {before.epochs:g} at batch {after.batch_size}: "
                f"{after.steps:,} steps", quiet)  # fmt: skip
    return out


def run_pipeline(
    cfg: RunConfig,
    run_dir: str | Path,
    workers: int | None = None,
    quiet: bool = False,
    executor: str = "local",
    address: str | None = None,
    force_new: bool = False,
    progress: bool | None = None,
    **kwargs: Any,
) -> SweepOutcome:
    """Run (or resume) whatever ``cfg`` describes in ``run_dir``; returns its outcome.

    ``force_new``: if ``run_dir`` holds a run with another config, use a fresh ``run_dir-N``.
    """
    run_dir = Path(run_dir)
    cfg = epochs_resolved(cfg, run_dir, quiet)
    if force_new and rundir.config_differs(cfg, run_dir):
        run_dir = rundir.fresh_run_dir(run_dir)
        log(f"config differs from the existing run: starting a fresh run in {run_dir}", quiet)
    if cfg.pretrain is not None:
        return run_finetune(cfg, run_dir, workers, quiet, executor, address, progress)
    if cfg.threshold is not None:
        return run_threshold(cfg, run_dir, workers, quiet, executor, address, progress)
    return run_sweep(cfg, run_dir, workers=workers, quiet=quiet, executor=executor,
                     address=address, progress=progress, **kwargs)  # fmt: skip


__all__ = ["epochs_resolved", "run_finetune", "run_pipeline", "run_threshold"]
