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

from butterfly.config import ConfigError, RunConfig, build_config
from butterfly.experiment import check_control, configure_torch
from butterfly.experiment.rows import PRETRAIN_STEPS
from butterfly.experiment.setup import environment
from butterfly.sweep import rundir
from butterfly.sweep.lock import RunLock
from butterfly.sweep.pipelines.threshold import run_threshold
from butterfly.sweep.runner import SweepOutcome, log, preflight, run_sweep
from butterfly.sweep.store import Store, start_label
from butterfly.sweep.tasks import run_parent

PIPELINE = "finetune"


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """The pre-training run: the sweep's model on ``pretrain.data`` with ``pretrain.recipe``."""
    assert cfg.pretrain is not None
    raw = cfg.to_dict()
    raw["data"] = cfg.pretrain.data.model_dump()
    raw["recipe"] = cfg.pretrain.recipe.model_dump()
    raw["pretrain"] = None
    raw["threshold"] = None  # pre-training is one parent per seed; only fine-tuning searches
    raw["model"]["init_from"] = None
    raw["perturb"] = {"times": [0.0], "steps": []}
    raw["name"] = f"{cfg.name}-pretrain"
    return build_config(raw)


def checkpoint_template(run_dir: Path, step: int) -> str:
    """The pre-trained parent's state at ``step``, with ``{seed}`` for the seed (init_from)."""
    return str(rundir.parent_path(run_dir / "pretrain", "{seed}", step))


def sub_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"from-step{step:07d}"


def finetune_config(cfg: RunConfig, run_dir: Path, step: int) -> RunConfig:
    """The sweep that fine-tunes from pre-training checkpoint ``step`` (0: random init, or a
    Hugging Face model as loaded), or, for checkpoints made elsewhere, from the one saved at
    ``step``: a Hugging Face folder becomes ``model.path``, a safetensors file
    ``model.init_from``."""
    assert cfg.pretrain is not None
    raw = cfg.to_dict()
    raw["pretrain"] = None
    raw["name"] = f"{cfg.name}-from{step}"
    given = dict(cfg.pretrain.folders or [])
    if step in given:
        path = str(Path(given[step]).expanduser())
        if cfg.model.name == "hf":
            raw["model"]["path"] = path
        else:
            raw["model"]["init_from"] = path
    else:
        raw["model"]["init_from"] = checkpoint_template(run_dir, step) if step > 0 else None
    return build_config(raw)


def zero_label(cfg: RunConfig) -> str:
    """What fine-tuning from step 0 starts from: a network drawn from the seed (random init)
    for built-in and user models, the weights as loaded for a Hugging Face model pre-trained in
    this run, or the checkpoint given for step 0."""
    if cfg.pretrain is not None and 0 in dict(cfg.pretrain.folders or []):
        return "step-0 checkpoint"
    return "loaded weights" if cfg.model.name == "hf" else "random init"


def _check_given(cfg: RunConfig) -> None:
    """Checkpoints made elsewhere must exist, as folders (hf) or files (built-in models)."""
    assert cfg.pretrain is not None
    for step, path in cfg.pretrain.folders or []:
        p = Path(path).expanduser()
        hf = cfg.model.name == "hf"
        if not (p.is_dir() if hf else p.is_file()):
            raise ConfigError(
                f"pretrain.checkpoints: {path} (step {step}) is not a "
                + ("model folder" if hf else "checkpoint file")
                + (" (model.name = hf loads Hugging Face folders)" if hf else
                   " (built-in models start from safetensors files; hf models from folders)")
            )  # fmt: skip


def run_finetune(
    cfg: RunConfig,
    run_dir: Path,
    workers: int | None = None,
    quiet: bool = False,
    executor: str = "local",
    address: str | None = None,
    progress: bool | None = None,
) -> SweepOutcome:
    """Pre-train, then one sweep per checkpoint; returns a SweepOutcome over all of them."""
    assert cfg.pretrain is not None
    start = time.perf_counter()
    given = cfg.pretrain.folders
    if given is None:
        pre = pretrain_config(cfg)
        preflight(pre)
        steps = sorted(int(c) for c in cfg.pretrain.checkpoints)  # type: ignore[arg-type]
        wanted = [s for s in steps if s > 0]
        preflight(finetune_config(cfg, run_dir, 0))  # the fine-tuning task, from random init
    else:  # checkpoints made elsewhere: nothing to pre-train
        _check_given(cfg)
        steps = [s for s, _ in given]
        wanted = []
        preflight(finetune_config(cfg, run_dir, steps[0]))
    pre_dir = run_dir / "pretrain"
    parent_steps = 0
    with RunLock(run_dir):
        rundir.prepare_run_dir(cfg, run_dir, "a fine-tuning run")
        with Store(run_dir / rundir.STORE) as store:
            store.set_meta("config", cfg.to_dict())
            store.set_meta("pipeline", PIPELINE)
            zero = zero_label(cfg)
            store.set_meta(
                "runs", [[s, sub_dir(run_dir, s).name, start_label(s, zero)] for s in steps]
            )
            store.set_meta("environment", environment(cfg))
        if wanted:
            assert given is None
            with RunLock(pre_dir):
                rundir.prepare_run_dir(pre, pre_dir, "a pre-training run")
                configure_torch(cfg.runtime.threads, cfg.runtime.tf32)
                for seed in cfg.seeds:
                    t0 = time.perf_counter()
                    res = run_parent(pre, seed, pre_dir, steps=wanted)
                    parent_steps += res["steps"]
                    log(
                        f"pre-training seed {seed} on {cfg.pretrain.data.name}: checkpoints at "
                        f"{wanted} ({res['steps']} steps, {time.perf_counter() - t0:.1f} s)",
                        quiet,
                    )
        frames = []
        outcomes = []
        for s in steps:
            where = f" ({dict(given)[s]})" if given else f" ({zero})" if s == 0 else ""
            log(f"fine-tuning from pre-training step {s}{where}", quiet)
            sub_cfg = finetune_config(cfg, run_dir, s)
            if sub_cfg.threshold is not None:  # the edge of stability from each checkpoint
                out = run_threshold(sub_cfg, sub_dir(run_dir, s), workers, quiet, executor,
                                    address, progress)  # fmt: skip
            else:
                out = run_sweep(sub_cfg, sub_dir(run_dir, s), workers=workers, quiet=quiet,
                                executor=executor, address=address, progress=progress)  # fmt: skip
            outcomes.append(out)
            frames.append(out.results.assign(**{PRETRAIN_STEPS.name: s}))
        df = pd.concat(frames, ignore_index=True)
        df.to_csv(run_dir / rundir.CSV, index=False)
    return SweepOutcome(
        run_dir,
        df,
        time.perf_counter() - start,
        parent_steps + sum(o.steps for o in outcomes),
        sum(o.minimum_steps for o in outcomes) + len(cfg.seeds) * max(wanted, default=0),
        sum(o.units_run for o in outcomes),
        sum(o.units_skipped for o in outcomes),
        not check_control(df),
    )
