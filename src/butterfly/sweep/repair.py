"""``butterfly repair RUN_DIR``: rebuild a damaged ``results.db`` from what can still be read and
from the checkpoints.

1. If SQLite's integrity check passes, there is nothing to do.
2. Otherwise the damaged file is moved aside (``results.db.damaged-TIME``, with its ``-wal`` and
   ``-shm``), a new store is made, and every table that can still be read is copied into it:
   the rows of units whose ``units`` row and results survived are kept as they were.
3. A finished unit whose rows were lost is measured again from its members' final checkpoints
   (``checkpoints/seedS/tT/*.safetensors``), the same code on the same weights, so its result
   rows equal the lost ones; its trajectories and training curve (recorded during training)
   cannot be recovered
   and its unit time is unknown (NULL). A unit without complete checkpoints is left for the
   next ``butterfly run``, which trains its population again from the saved parent state.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from butterfly.checkpoint import CheckpointError, load_checkpoint
from butterfly.config import ConfigError, build_config, parse_yaml
from butterfly.experiment import Resolved, TrainedMember, make_setup
from butterfly.experiment.measure import measure_children, permutation_proxy_rows
from butterfly.experiment.perturb import Perturber
from butterfly.experiment.resolve import resolve
from butterfly.experiment.verdict import verdict
from butterfly.metrics import is_finite, l2_norm
from butterfly.metrics.running import on_device
from butterfly.sweep import rundir
from butterfly.sweep.lock import RunLock
from butterfly.sweep.plan import Unit, plan
from butterfly.sweep.session import write_csv
from butterfly.sweep.store import Store, StoreDamaged
from butterfly.train.population import RUNNING

TABLES = (
    "results", "trajectories", "permutation_proxy", "training", "units", "meta", "failures",
)  # fmt: skip


def _salvage(db: Path) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Every table of a damaged database that can still be read whole, and the ones lost."""
    got: dict[str, list[dict[str, Any]]] = {}
    lost: list[str] = []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
    except sqlite3.DatabaseError:
        return {}, list(TABLES)
    try:
        for table in TABLES:
            try:
                got[table] = [dict(r) for r in con.execute(f"SELECT * FROM {table}")]
            except sqlite3.DatabaseError:
                lost.append(table)
    finally:
        con.close()
    return got, lost


def _remeasure(resolved: Resolved, unit: Unit, run_dir: Path) -> tuple[list, list, int] | None:
    """The result and proxy rows of a finished unit, from its members' final checkpoints."""
    cfg = resolved.cfg
    finals = []
    for m in unit.members:
        try:
            params, state, _ = load_checkpoint(rundir.member_path(run_dir, unit.seed, unit.t,
                                                                  m.name))  # fmt: skip
        except CheckpointError:
            return None
        finals.append((params, state.get(RUNNING)))
    try:
        params_t, state_t, _ = load_checkpoint(rundir.parent_path(run_dir, unit.seed, unit.t))
    except CheckpointError:
        return None
    setup = make_setup(resolved, unit.seed, run_dir)
    finals = [on_device(f, r, setup.device) for f, r in finals]
    perturber = Perturber(setup, params_t, state_t, unit.t)
    trained = []
    for m, final in zip(unit.members, finals, strict=True):
        noise, n = 0.0, 0
        if m.kind in ("batch", "gaussian"):
            pert = perturber.perturbation(m.kind, m.fraction, m.direction)
            noise, n = m.sigma * l2_norm(pert.eps), pert.n_masked
        trained.append(TrainedMember(m, final, not is_finite(final), noise, n))
    results = measure_children(setup.comparer, setup.init, unit.seed, cfg.recipe.steps, unit.t,
                               trained)  # fmt: skip
    proxy = []
    first = unit.t == cfg.perturbation_steps()[0]
    if cfg.eval.proxy_fractions and first and not trained[0].diverged and setup.comparer.aligns:
        proxy = permutation_proxy_rows(setup.comparer, unit.seed, finals[0])
    steps = sum(cfg.child_end(unit.t) - unit.t if m.kind not in ("original", "control")
                else cfg.recipe.steps - unit.t for m in unit.members)  # fmt: skip
    return results, proxy, steps


def repair(run_dir: Path) -> tuple[str, bool]:
    """Repair the store of ``run_dir``; (a summary, whether the store is whole again)."""
    run_dir = Path(run_dir)
    rundir.check_no_links(run_dir)
    db = rundir.store_path(run_dir)
    cfg_path = rundir.config_path(run_dir)
    if not db.is_file() or not cfg_path.is_file():
        raise ConfigError(f"{run_dir} is not a butterfly run folder (no config.yaml/results.db)")
    cfg = build_config(parse_yaml(cfg_path.read_text()))
    if cfg.pretrain is not None:
        raise ConfigError(
            f"{run_dir} is a fine-tuning folder: repair the sweep folder that is damaged "
            "(from-step*/ or pretrain/)"
        )
    with RunLock(run_dir):
        try:
            with Store(db) as s:
                integrity = s.integrity()
        except StoreDamaged:
            integrity = "damaged"
        if integrity == "ok":
            return f"{db} is intact (SQLite integrity check: ok); nothing to repair", True
        got, lost = _salvage(db)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = db.with_name(f"{db.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(db) + suffix)
            if p.exists():
                os.replace(p, Path(str(aside) + suffix))
        lines = [f"moved the damaged store aside to {aside}"]
        if lost:
            lines.append(f"unreadable tables: {', '.join(lost)}")
        units_kept: set[tuple[int, int]] = set()
        with Store(db) as store:
            for key, value in ((r["key"], r["value"]) for r in got.get("meta", [])):
                try:
                    store.set_meta(str(key), json.loads(value))
                except (TypeError, ValueError):
                    lines.append(f"dropped the unreadable meta entry {key!r}")
            store.set_meta("config", cfg.to_dict())
            first_t = min(cfg.perturbation_steps())
            for u in got.get("units", []):
                key = (u["seed"], u["t"])
                res = [r for r in got.get("results", []) if (r["seed"], r["t"]) == key]
                if not res:
                    continue
                traj = [r for r in got.get("trajectories", []) if (r["seed"], r["t"]) == key]
                proxy = [r for r in got.get("permutation_proxy", []) if r["seed"] == u["seed"]]
                curve = [r for r in got.get("training", []) if (r["seed"], r["t"]) == key]
                store.commit_unit(u["seed"], u["t"], res, traj, proxy if u["t"] == first_t else [],
                                  u["population"], u["steps"], u["wall_s"], u["finished"],
                                  curve)  # fmt: skip
                units_kept.add(key)
            for f in got.get("failures", []):
                store.record_failure(f["seed"], f["t"], f["error"], f["time"])
            lines.append(f"kept {len(units_kept)} finished units as they were")
            remeasured, left = [], []
            code = [f"{k} = {v}" for k, v in cfg.code_named()]  # a folder is data: not imported
            resolved = None if code else resolve(cfg, run_dir, check=False)
            for unit in plan(cfg):
                key = (unit.seed, unit.t)
                if key in units_kept:
                    continue
                out = None if resolved is None else _remeasure(resolved, unit, run_dir)
                if out is None:
                    left.append(key)
                    continue
                results, proxy, steps = out
                store.commit_unit(unit.seed, unit.t, results, [], proxy, len(unit.members), steps,
                                  None, time.time())  # fmt: skip
                remeasured.append(key)
            store.set_meta("repaired", {"time": stamp, "remeasured_units": remeasured,
                                        "damaged_store": aside.name})  # fmt: skip
            df = store.results()
        if remeasured:
            lines.append(
                f"measured {len(remeasured)} units again from their checkpoints (their result "
                "rows equal the lost ones; their trajectories were lost)"
            )
        if left and code:
            lines.append(f"{len(left)} units were not measured again: the folder's config names "
                         f"code ({', '.join(code)}), which repair does not import; `butterfly "
                         "run` on the folder trains them again from the saved parent states, "
                         "if you trust that code")  # fmt: skip
        elif left:
            lines.append(f"{len(left)} units have no complete checkpoints: `butterfly run` "
                         "trains them again from the saved parent states")  # fmt: skip
        write_csv(df, rundir.csv_path(run_dir))
        exact, text = verdict(df)
        lines.append(text)
        return "\n".join(lines), exact
