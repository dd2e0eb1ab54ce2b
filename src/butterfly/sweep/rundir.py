"""The run folder: where each file lives, and preparing a folder for a config.

    RUN_DIR/config.yaml                                   the resolved config
    RUN_DIR/results.db                                    the store (SQLite)
    RUN_DIR/results.csv                                   the results table, for spreadsheets
    RUN_DIR/parents/seedS/stepNNNNNNN.safetensors         the parent's full state at each t
    RUN_DIR/checkpoints/seedS/tNNNNNNN/MEMBER.safetensors each member's final weights
    RUN_DIR/.lock                                         held by the one process writing it
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from butterfly.atomic import write_atomic
from butterfly.config import ConfigError, RunConfig, build_config, parse_yaml
from butterfly.safepath import inside

CONFIG = "config.yaml"
STORE = "results.db"
CSV = "results.csv"


LOCK = ".lock"
FIGURES = "figures"
PAGE = "report.html"


def parent_path(run_dir: Path, seed: int | str, t: int) -> Path:
    return inside(run_dir, "parents", f"seed{seed}", f"step{t:07d}.safetensors")


def member_path(run_dir: Path, seed: int, t: int, name: str) -> Path:
    return inside(run_dir, "checkpoints", f"seed{seed}", f"t{t:07d}", f"{name}.safetensors")


def check_no_links(run_dir: Path) -> None:
    """Refuse a run folder holding a symbolic link anywhere inside it (a received folder's
    ``figures/``, ``parents/``, a checkpoint...): its files must lie inside it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for root, dirs, files in os.walk(run_dir, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                inside(run_dir, *path.relative_to(run_dir).parts)  # raises, naming the link


def store_path(run_dir: Path) -> Path:
    return inside(run_dir, STORE)


def config_path(run_dir: Path) -> Path:
    return inside(run_dir, CONFIG)


def csv_path(run_dir: Path) -> Path:
    return inside(run_dir, CSV)


def figures_dir(page_dir: Path) -> Path:
    return inside(page_dir, FIGURES)


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out: set[str] = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.add(prefix + k)
    return out


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run folder was made with, read by today's schema (so a field
    added since, at its default, does not count as a change); None for a new folder."""
    path = config_path(run_dir)
    if not path.is_file():
        return None
    old = parse_yaml(path.read_text()) or {}
    try:
        return build_config(old).to_dict()
    except ConfigError:  # a key since removed or renamed: compare as written
        return old


# where and how wide a run executes, which never changes its numbers: a run folder may be resumed
# with other values (a longer SLURM time limit after a maintenance window, more workers)
NEUTRAL = ("runtime.workers", "runtime.slurm", "runtime.ray_cpus", "runtime.ray_gpus")


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ and change results (not :data:`NEUTRAL`)."""
    return sorted(k for k in diff_keys(old, new)
                  if not any(k == n or k.startswith(n + ".") for n in NEUTRAL))  # fmt: skip


def config_differs(cfg: RunConfig, run_dir: Path) -> bool:
    old = saved_config(run_dir)
    return old is not None and bool(changed_keys(old, cfg.to_dict()))


def prepare_run_dir(cfg: RunConfig, run_dir: Path, what: str = "a run") -> None:
    """Create the run folder and save the resolved config atomically; refuse a changed
    config (the caller holds the folder's lock)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.to_dict()
    old = saved_config(run_dir)
    if old is None:
        write_atomic(config_path(run_dir), yaml.safe_dump(resolved, sort_keys=False))
    elif changed_keys(old, resolved):
        changed = changed_keys(old, resolved)
        raise ConfigError(
            f"{run_dir} holds {what} with a different config (changed: {', '.join(changed)}); "
            "choose another --out folder, delete this one, or pass --force-new"
        )


def fresh_run_dir(run_dir: Path) -> Path:
    """``run_dir`` itself if free, else the first ``run_dir-N`` that does not exist."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return run_dir
    n = 2
    while (candidate := run_dir.with_name(f"{run_dir.name}-{n}")).exists():
        n += 1
    return candidate
