"""Fine-tuning experiments (paper section 4.4, Figures 5 and 17-19).

A config with a ``pretrain`` section runs in two stages inside one run folder:

1. ``pretrain/``: for each seed, one network is trained on ``pretrain.data`` with
   ``pretrain.recipe``; its full state is saved at every step in ``pretrain.checkpoints``
   (resumable, like any parent).
2. ``from-stepNNNNNNN/``: for each checkpoint, an ordinary spawn-and-perturb sweep on the
   config's own data and recipe, starting from the pre-trained weights with a freshly drawn
   head (``model.init_from``). Checkpoint 0 means random initialisation: the baseline.

Each stage is an ordinary, resumable run folder; the results of all sweeps are concatenated
with a ``pretrain_steps`` column into ``results.csv`` in the top folder, and ``butterfly
report`` on the top folder compares them (Figure 5).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from butterfly.config import ConfigError, RunConfig, build_config
from butterfly.sweep.lock import RunLock

MANIFEST = "finetune.json"


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """The pre-training run: the sweep's model on ``pretrain.data`` with ``pretrain.recipe``."""
    assert cfg.pretrain is not None
    raw = cfg.to_dict()
    raw["data"] = cfg.pretrain.data.model_dump()
    raw["recipe"] = cfg.pretrain.recipe.model_dump()
    raw["pretrain"] = None
    raw["model"]["init_from"] = None
    raw["perturb"] = {"times": [0.0], "steps": []}
    raw["name"] = f"{cfg.name}-pretrain"
    return build_config(raw)


def checkpoint_template(run_dir: Path, step: int) -> str:
    return str(run_dir / "pretrain" / "parents" / "seed{seed}" / f"step{step:07d}.safetensors")


def sub_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"from-step{step:07d}"


def finetune_config(cfg: RunConfig, run_dir: Path, step: int) -> RunConfig:
    """The sweep that fine-tunes from pre-training checkpoint ``step`` (0: random init)."""
    raw = cfg.to_dict()
    raw["pretrain"] = None
    raw["model"]["init_from"] = checkpoint_template(run_dir, step) if step > 0 else None
    raw["name"] = f"{cfg.name}-from{step}"
    return build_config(raw)


def is_finetune_dir(run_dir: Path) -> bool:
    return (Path(run_dir) / MANIFEST).is_file()


def sub_runs(run_dir: Path) -> list[tuple[int, Path]]:
    """(pre-training steps, run folder) of each fine-tuning sweep of a fine-tuning run."""
    manifest = json.loads((Path(run_dir) / MANIFEST).read_text())
    return [(int(s), Path(run_dir) / d) for s, d in manifest["runs"]]


def run_finetune(
    cfg: RunConfig,
    run_dir: Path,
    workers: int | None = None,
    quiet: bool = False,
    executor: str = "local",
    address: str | None = None,
    progress: bool | None = None,
) -> Any:
    """Pre-train, then one sweep per checkpoint; returns a SweepOutcome over all of them."""
    from butterfly.sweep.runner import (
        SweepOutcome,
        _log,
        check_control,
        configure_torch,
        preflight,
        run_sweep,
    )
    from butterfly.sweep.unit import run_parent

    assert cfg.pretrain is not None
    start = time.perf_counter()
    pre = pretrain_config(cfg)
    preflight(pre)
    preflight(finetune_config(cfg, run_dir, 0))  # the fine-tuning task, from random init
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    if saved.is_file() and yaml.safe_load(saved.read_text()) != cfg.to_dict():
        raise ConfigError(
            f"{run_dir} holds a fine-tuning run with another config; use another --out or "
            "--force-new"
        )
    saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    steps = sorted(cfg.pretrain.checkpoints)
    manifest = {"runs": [[s, sub_dir(run_dir, s).name] for s in steps]}
    (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))

    wanted = [s for s in steps if s > 0]
    pre_dir = run_dir / "pretrain"
    parent_steps = 0
    if wanted:
        pre_dir.mkdir(parents=True, exist_ok=True)
        (pre_dir / "config.yaml").write_text(yaml.safe_dump(pre.to_dict(), sort_keys=False))
        with RunLock(pre_dir):
            configure_torch(cfg.runtime.threads)
            for seed in cfg.seeds:
                t0 = time.perf_counter()
                res = run_parent(pre, seed, pre_dir, steps=wanted)
                parent_steps += res["steps"]
                _log(
                    f"pre-training seed {seed} on {cfg.pretrain.data.name}: checkpoints at "
                    f"{wanted} ({res['steps']} steps, {time.perf_counter() - t0:.1f} s)",
                    quiet,
                )

    frames = []
    outcomes = []
    for s in steps:
        sub_cfg = finetune_config(cfg, run_dir, s)
        _log(
            f"fine-tuning from pre-training step {s}" + (" (random init)" if s == 0 else ""), quiet
        )
        out = run_sweep(
            sub_cfg, sub_dir(run_dir, s), workers=workers, quiet=quiet, executor=executor,
            address=address, progress=progress,
        )  # fmt: skip
        outcomes.append(out)
        frames.append(out.results.assign(pretrain_steps=s))
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(run_dir / "results.csv", index=False)
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


def finetune_table(df: pd.DataFrame, metric: str = "barrier_train_loss") -> pd.DataFrame:
    """Mean ``metric`` over seeds by (pre-training steps, kind, t) x sigma (perturbed only)."""
    d = df[(df["control"] == 0) & (df["diverged"] == 0) & (df["kind"] != "spawn")]
    return d.pivot_table(
        index=["pretrain_steps", "kind", "t_frac"], columns="sigma", values=metric, aggfunc="mean"
    )
