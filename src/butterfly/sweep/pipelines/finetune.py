"""The fine-tuning pipeline (paper section 4.4, Figures 5 and 17-19).

A config with a ``pretrain`` section runs in two stages inside one run folder:

1. ``pretrain/``: for each seed, one network is trained on ``pretrain.data`` with
   ``pretrain.recipe``; its full state is saved at every step in ``pretrain.checkpoints``
   (resumable, like any parent).
2. ``from-stepNNNNNNN/``: for each checkpoint, an ordinary spawn-and-perturb sweep on the
   config's own data and recipe, starting from the pre-trained weights with a freshly drawn
   head (``model.init_from``). Checkpoint 0 means random initialisation: the baseline.

Checkpoints made elsewhere (MultiBERT's or OLMo's intermediate checkpoints: Hugging Face
folders; safetensors files for built-in models) skip stage 1: ``pretrain.checkpoints`` lists
their paths, each with the pre-training step it was saved at (read from its name, e.g.
``step_20k``), and stage 2 fine-tunes from each one.

The top folder is prepared and locked like any run folder; its store holds the config and the
index of the sweeps (meta ``pipeline`` and ``runs``), which is all ``butterfly report`` and
``butterfly status`` need. The results of all sweeps are joined with a ``pretrain_steps`` column
into ``results.csv`` in the top folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from butterfly.config import RunConfig
from butterfly.experiment import Resolved
from butterfly.experiment.resolve import finetune_config, resolve
from butterfly.experiment.rows import PRETRAIN_STEPS
from butterfly.experiment.verdict import check_control
from butterfly.safepath import inside
from butterfly.sweep import rundir
from butterfly.sweep.lock import RunLock
from butterfly.sweep.pipelines.threshold import run_threshold
from butterfly.sweep.runner import sweep
from butterfly.sweep.session import Execution, RunSession, SweepOutcome
from butterfly.sweep.store import start_label
from butterfly.sweep.tasks import run_parent

PIPELINE = "finetune"
PRETRAIN = "pretrain"


def checkpoint_template(run_dir: Path, step: int) -> str:
    """The pre-trained parent's state at ``step``, with ``{seed}`` for the seed (init_from)."""
    return str(rundir.parent_path(inside(run_dir, PRETRAIN), "{seed}", step))


def sub_dir(run_dir: Path, step: int) -> Path:
    return inside(run_dir, f"from-step{step:07d}")


def zero_label(cfg: RunConfig) -> str:
    """What fine-tuning from step 0 starts from: a network drawn from the seed (random init)
    for built-in and user models, the weights as loaded for a Hugging Face model pre-trained in
    this run, or the checkpoint given for step 0."""
    if cfg.pretrain is not None and 0 in dict(cfg.pretrain.folders or []):
        return "step-0 checkpoint"
    return "loaded weights" if cfg.model.name == "hf" else "random init"


def sub_run(resolved: Resolved, run_dir: Path, step: int) -> Resolved:
    """The fine-tuning sweep from pre-training checkpoint ``step``, resolved: the first sweep's
    facts with its own start point; a Hugging Face folder made elsewhere is another model, so
    it is checked on its own."""
    cfg = resolved.cfg
    assert cfg.pretrain is not None and resolved.finetune is not None
    given = dict(cfg.pretrain.folders or [])
    start = checkpoint_template(run_dir, step) if step > 0 and step not in given else None
    sub = finetune_config(cfg, step, start)
    first = resolved.finetune.cfg.model
    if step in given and cfg.model.name == "hf" and sub.model.path != first.path:
        return resolve(sub, sub_dir(run_dir, step))
    return resolved.finetune.derive(sub)


def run_finetune(resolved: Resolved, run_dir: Path, execution: Execution) -> SweepOutcome:
    """Pre-train, then one sweep per checkpoint; returns a SweepOutcome over all of them."""
    cfg = resolved.cfg
    assert cfg.pretrain is not None
    given = cfg.pretrain.folders
    if given is None:
        steps = sorted(int(c) for c in cfg.pretrain.checkpoints)  # type: ignore[arg-type]
        wanted = [s for s in steps if s > 0]
    else:  # checkpoints made elsewhere: nothing to pre-train
        steps = [s for s, _ in given]
        wanted = []
    pre_dir = inside(run_dir, PRETRAIN)
    parent_steps = 0
    with RunSession(resolved, run_dir, execution, what="a fine-tuning run", pipeline=PIPELINE,
                    executes=False) as session:  # fmt: skip
        zero = zero_label(cfg)
        session.store.set_meta(
            "runs", [[s, sub_dir(run_dir, s).name, start_label(s, zero)] for s in steps]
        )
        if wanted:
            pre = resolved.pretrain
            assert given is None and pre is not None
            with RunLock(pre_dir):
                rundir.prepare_run_dir(pre.cfg, pre_dir, "a pre-training run")
                for seed in cfg.seeds:
                    t0 = time.perf_counter()
                    res = run_parent(pre, seed, pre_dir, steps=wanted)
                    parent_steps += res["steps"]
                    session.log(
                        f"pre-training seed {seed} on {cfg.pretrain.data.name}: checkpoints at "
                        f"{wanted} ({res['steps']} steps, {time.perf_counter() - t0:.1f} s)"
                    )
        frames = []
        outcomes = []
        for s in steps:
            where = f" ({dict(given)[s]})" if given else f" ({zero})" if s == 0 else ""
            session.log(f"fine-tuning from pre-training step {s}{where}")
            sub = sub_run(resolved, run_dir, s)
            if sub.cfg.threshold is not None:  # the edge of stability from each checkpoint
                out = run_threshold(sub, sub_dir(run_dir, s), execution)
            else:
                out = sweep(sub, sub_dir(run_dir, s), execution)
            outcomes.append(out)
            frames.append(out.results.assign(**{PRETRAIN_STEPS.name: s}))
        df = pd.concat(frames, ignore_index=True)
        session.results = df
    return session.outcome(
        results=df,
        steps=parent_steps + sum(o.steps for o in outcomes),
        minimum_steps=sum(o.minimum_steps for o in outcomes)
        + len(cfg.seeds) * max(wanted, default=0),
        units_run=sum(o.units_run for o in outcomes),
        units_skipped=sum(o.units_skipped for o in outcomes),
        control_ok=not check_control(df),
    )
