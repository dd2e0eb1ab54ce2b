"""Pipelines: what ``butterfly run`` runs for a config, each on the one run session.

* a plain config is one sweep (:func:`butterfly.sweep.runner.sweep`);
* a config with a ``pretrain`` section is the fine-tuning pipeline
  (:func:`butterfly.sweep.pipelines.finetune.run_finetune`): pre-training, then one sweep per
  pre-training checkpoint, in one run folder;
* a config with a ``threshold`` section searches the edge of stability
  (:func:`butterfly.sweep.pipelines.threshold.run_threshold`): σ*(t) or t*(σ) by rounds of
  populations.

:func:`run_pipeline` resolves the config once (:func:`butterfly.experiment.resolve`), picks
the folder (``force_new``) and hands the resolved config to the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from butterfly.config import RunConfig
from butterfly.experiment import Resolved
from butterfly.experiment.resolve import resolve
from butterfly.sweep.pipelines.finetune import run_finetune
from butterfly.sweep.pipelines.threshold import run_threshold
from butterfly.sweep.runner import sweep
from butterfly.sweep.session import Execution, SweepOutcome, fresh_folder
from butterfly.sweep.tasks import UnitResult


def run_pipeline(
    cfg: RunConfig | Resolved,
    run_dir: str | Path,
    execution: Execution | None = None,
    on_unit: Callable[[UnitResult], None] | None = None,
    **options: Any,
) -> SweepOutcome:
    """Run (or resume) whatever ``cfg`` describes in ``run_dir``; returns its outcome.

    ``execution`` (or its fields as keywords: ``workers``, ``quiet``, ``executor``,
    ``address``, ``progress``, ``force_new``) says how it runs, never what it computes.
    """
    execution = execution or Execution(**options)
    run_dir = Path(run_dir)
    resolved = cfg if isinstance(cfg, Resolved) else resolve(cfg, run_dir)
    for note in resolved.notes:
        execution.log(note)
    run_dir = fresh_folder(resolved, run_dir, execution)
    if resolved.cfg.pretrain is not None:
        return run_finetune(resolved, run_dir, execution)
    if resolved.cfg.threshold is not None:
        return run_threshold(resolved, run_dir, execution)
    return sweep(resolved, run_dir, execution, on_unit)


__all__ = ["Execution", "run_finetune", "run_pipeline", "run_threshold"]
