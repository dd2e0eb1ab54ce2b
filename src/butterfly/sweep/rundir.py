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

from butterfly.config import ConfigError, RunConfig, build_config, parse_yaml

CONFIG = "config.yaml"
STORE = "results.db"
CSV = "results.csv"


def parent_path(run_dir: Path, seed: int | str, t: int) -> Path:
    return Path(run_dir) / "parents" / f"seed{seed}" / f"step{t:07d}.safetensors"


def member_path(run_dir: Path, seed: int, t: int, name: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"seed{seed}" / f"t{t:07d}" / f"{name}.safetensors"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    old = parse_yaml(path.read_text()) or {}
    try:
        return build_config(old).to_dict()
    except ConfigError:  # a key since removed or renamed: compare as written
        return old


def config_differs(cfg: RunConfig, run_dir: Path) -> bool:
    old = saved_config(run_dir)
    return old is not None and old != cfg.to_dict()


def prepare_run_dir(cfg: RunConfig, run_dir: Path, what: str = "a run") -> None:
    """Create the run folder and save the resolved config atomically; refuse a changed
    config (the caller holds the folder's lock)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.to_dict()
    old = saved_config(run_dir)
    if old is None:
        write_atomic(run_dir / CONFIG, yaml.safe_dump(resolved, sort_keys=False))
    elif old != resolved:
        changed = sorted(diff_keys(old, resolved))
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
