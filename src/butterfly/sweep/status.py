"""``butterfly status RUN_DIR``: what a run folder holds and whether it is healthy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from butterfly.config import ConfigError, build_config, parse_yaml
from butterfly.experiment.verdict import verdict
from butterfly.sweep import rundir
from butterfly.sweep.lock import is_locked
from butterfly.sweep.plan import plan
from butterfly.sweep.slurm import status_lines as slurm_status
from butterfly.sweep.store import Store, pipeline_runs


def run_status(run_dir: Path) -> tuple[str, bool]:
    """(a summary, healthy?) for a run folder; a fine-tuning folder summarises each of its
    sweeps."""
    run_dir = Path(run_dir)
    rundir.check_no_links(run_dir)
    subs = pipeline_runs(run_dir) if rundir.store_path(run_dir).is_file() else None
    if subs is not None:
        parts = [f"fine-tuning run {run_dir}: {len(subs)} sweeps, one per pre-training checkpoint"]
        healthy = True
        for _, sub, label in subs:
            if not rundir.store_path(sub).is_file():
                parts.append(f"[{label}] {sub}: not started")
                healthy = False
                continue
            text, ok = run_status(sub)
            healthy &= ok
            parts.append(f"[{label}] " + text.replace("\n", "\n    "))
        return "\n".join(parts), healthy
    cfg_path = rundir.config_path(run_dir)
    db = rundir.store_path(run_dir)
    if not cfg_path.is_file() or not db.is_file():
        raise ConfigError(f"{run_dir} is not a butterfly run folder (no config.yaml/results.db)")
    cfg = build_config(parse_yaml(cfg_path.read_text()))
    if cfg.threshold is not None:
        return threshold_status(run_dir, cfg)
    units = plan(cfg)
    with Store(db) as store:
        done = store.finished_units()
        failures = store.failures()
        df = store.results()
        env = store.get_meta("environment") or {}
        unit_rows = store.units()
    running = is_locked(run_dir)
    todo = [u for u in units if (u.seed, u.t) not in done]
    failed_keys = {(int(r.seed), None if pd.isna(r.t) else int(r.t)) for r in failures.itertuples()}
    lines = [
        f"run {run_dir} ('{cfg.name}'): {len(done)}/{len(units)} units done"
        + (f", {len(todo)} to do" if todo else "")
        + (" — a process is running it now" if running else ""),
        f"environment: torch {env.get('torch', '?')}, device {env.get('device', '?')}, "
        f"{env.get('threads', '?')} thread(s), {env.get('workers', '?')} worker(s)",
    ]
    if len(unit_rows):
        lines.append(
            f"compute: {int(unit_rows.steps.sum())} member-steps in "
            f"{unit_rows.wall_s.fillna(0).sum():.1f} s of unit time"
        )
    lines += slurm_status(run_dir, done)
    if failed_keys:
        lines.append(f"failed units ({len(failed_keys)}), retried by running the same command:")
        for r in failures.itertuples():
            where = f"seed {int(r.seed)}" + (" (parent)" if pd.isna(r.t) else f" t={int(r.t)}")
            lines.append(f"  {where}: {r.error}")
    exact, text = verdict(df)
    if len(df):
        lines.append(text)
    healthy = exact and not (failed_keys and not running)
    return "\n".join(lines), healthy


def threshold_status(run_dir: Path, cfg: object) -> tuple[str, bool]:
    """A threshold search's folder: populations measured per round, the answers so far."""
    from butterfly.sweep.pipelines.threshold import threshold_table

    with Store(rundir.store_path(run_dir)) as store:
        rounds = pd.read_sql_query("SELECT round, COUNT(*) AS n FROM rounds GROUP BY round",
                                   store.conn)  # fmt: skip
        df = store.results()
        table = store.thresholds()
        failures = store.failures()
    running = is_locked(run_dir)
    per = ", ".join(f"round {int(r.round)}: {int(r.n)}" for r in rounds.itertuples())
    lines = [f"threshold search {run_dir}: {int(rounds.n.sum()) if len(rounds) else 0} "
             f"populations measured ({per or 'none yet'})"
             + (" — a process is running it now" if running else "")]  # fmt: skip
    lines.append(threshold_table(table) if len(table) else "no answers yet (still searching)")
    for r in failures.itertuples():
        where = f"seed {int(r.seed)}" + (" (parent)" if pd.isna(r.t) else f" t={int(r.t)}")
        lines.append(f"  failed: {where}: {r.error}")
    exact, text = verdict(df)
    if len(df):
        lines.append(text)
    return "\n".join(lines), exact and not (len(failures) and not running)
