"""The run's results store: one SQLite file, ``results.db``, in the run folder.

Tables: ``results`` (one row per child, including the sigma = 0 control), ``units`` (one row per
finished population unit), ``meta`` (config and environment). Each finished unit is committed
in one transaction, so a crash loses at most the units in flight.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

RESULT_COLUMNS: dict[str, str] = {
    "seed": "INTEGER NOT NULL",
    "kind": "TEXT NOT NULL",
    "t": "INTEGER NOT NULL",
    "t_frac": "REAL NOT NULL",
    "sigma": "REAL NOT NULL",
    "fraction": "REAL NOT NULL",
    "direction": "INTEGER NOT NULL",
    "control": "INTEGER NOT NULL",
    "member": "TEXT NOT NULL",
    "noise_l2": "REAL",
    "n_perturbed": "INTEGER",
    "l2": "REAL",
    "barrier_train_loss": "REAL",
    "barrier_train_error": "REAL",
    "barrier_test_loss": "REAL",
    "barrier_test_error": "REAL",
    "train_loss_a": "REAL",
    "train_loss_b": "REAL",
    "test_acc_a": "REAL",
    "test_acc_b": "REAL",
    "test_loss_a": "REAL",
    "test_loss_b": "REAL",
    "l2_init_a": "REAL",
    "l2_init_b": "REAL",
    "barrier_train_loss_wm": "REAL",
    "barrier_test_error_wm": "REAL",
    "fixed_point_fraction_wm": "REAL",
    "fixed_points_wm": "TEXT",
    "l2_wm": "REAL",
    "wm_iterations": "INTEGER",
    "barrier_train_loss_am": "REAL",
    "barrier_test_error_am": "REAL",
    "fixed_point_fraction_am": "REAL",
    "fixed_points_am": "TEXT",
    "l2_am": "REAL",
    "cka": "REAL",
    "ensemble_test_acc": "REAL",
    "diverged": "INTEGER NOT NULL",
    "unit_wall_s": "REAL",
}

PROXY_COLUMNS = (
    "seed", "fixed_fraction", "fixed_point_fraction", "l2", "barrier_train_loss",
    "barrier_test_error",
)  # fmt: skip
TRAJECTORY_COLUMNS = (
    "seed",
    "t",
    "member",
    "kind",
    "sigma",
    "step",
    "l2_to_original",
    "l2_from_init",
)


class Store:
    """A thin wrapper over the run's SQLite database."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        cols = ", ".join(f"{k} {v}" for k, v in RESULT_COLUMNS.items())
        with self.conn:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS results ({cols}, UNIQUE(seed, t, member))"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS units (seed INTEGER NOT NULL, t INTEGER NOT NULL, "
                "population INTEGER, steps INTEGER, wall_s REAL, finished REAL, "
                "PRIMARY KEY (seed, t))"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS failures (seed INTEGER NOT NULL, t INTEGER, "
                "error TEXT NOT NULL, time REAL NOT NULL)"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS permutation_proxy (seed INTEGER NOT NULL, "
                "fixed_fraction REAL NOT NULL, fixed_point_fraction REAL, l2 REAL, "
                "barrier_train_loss REAL, barrier_test_error REAL, UNIQUE(seed, fixed_fraction))"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS trajectories (seed INTEGER NOT NULL, t INTEGER NOT NULL, "
                "member TEXT NOT NULL, kind TEXT NOT NULL, sigma REAL NOT NULL, step INTEGER NOT NULL, "
                "l2_to_original REAL, l2_from_init REAL, barrier_train_loss REAL, "
                "UNIQUE(seed, t, member, step))"
            )

        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Upgrade a store written by an older version: add columns it lacks (as NULL)."""
        wanted = {
            "results": {k: v.replace(" NOT NULL", "") for k, v in RESULT_COLUMNS.items()},
            "trajectories": {k: "REAL" for k in TRAJECTORY_COLUMNS},
        }
        with self.conn:
            for table, cols in wanted.items():
                have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                for name, decl in cols.items():
                    if name not in have:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- meta -----------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # ---- units ----------------------------------------------------------------------------
    def finished_units(self) -> set[tuple[int, int]]:
        return {(s, t) for s, t in self.conn.execute("SELECT seed, t FROM units")}

    def commit_unit(
        self,
        seed: int,
        t: int,
        rows: Iterable[dict[str, Any]],
        trajectory: Iterable[dict[str, Any]],
        proxy: Iterable[dict[str, Any]],
        population: int,
        steps: int,
        wall_s: float,
        finished: float,
    ) -> None:
        """Write a unit's rows and mark it finished, in one transaction."""
        cols = list(RESULT_COLUMNS)
        placeholders = ", ".join("?" for _ in cols)
        with self.conn:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO results ({', '.join(cols)}) VALUES ({placeholders})",
                [tuple(r.get(c) for c in cols) for r in rows],
            )
            tcols = list(TRAJECTORY_COLUMNS)
            self.conn.executemany(
                f"INSERT OR REPLACE INTO trajectories ({', '.join(tcols)}) "
                f"VALUES ({', '.join('?' for _ in tcols)})",
                [tuple(r[c] for c in tcols) for r in trajectory],
            )
            pcols = list(PROXY_COLUMNS)
            self.conn.executemany(
                f"INSERT OR REPLACE INTO permutation_proxy ({', '.join(pcols)}) "
                f"VALUES ({', '.join('?' for _ in pcols)})",
                [tuple(r[c] for c in pcols) for r in proxy],
            )
            self.conn.execute(
                "INSERT OR REPLACE INTO units (seed, t, population, steps, wall_s, finished) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (seed, t, population, steps, wall_s, finished),
            )

    def record_failure(self, seed: int, t: int | None, error: str, when: float) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO failures (seed, t, error, time) VALUES (?, ?, ?, ?)",
                (seed, t, error, when),
            )

    def failures(self) -> pd.DataFrame:
        """Failures of units that have not finished since (a later success clears them)."""
        return pd.read_sql_query(
            "SELECT f.* FROM failures f WHERE NOT EXISTS (SELECT 1 FROM units u WHERE "
            "u.seed = f.seed AND (f.t IS NULL OR u.t = f.t)) ORDER BY time",
            self.conn,
        )

    # ---- reading --------------------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM results ORDER BY seed, t, kind, sigma, member", self.conn
        )

    def trajectories(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM trajectories ORDER BY seed, t, member, step", self.conn
        )

    def permutation_proxy(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM permutation_proxy ORDER BY seed, fixed_fraction", self.conn
        )

    def units(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM units ORDER BY seed, t", self.conn)


def read_results(run_dir: Path) -> pd.DataFrame:
    """The ``results`` table of a run folder as a DataFrame."""
    path = Path(run_dir) / "results.db"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.db: is it a butterfly run folder?")
    with Store(path) as s:
        return s.results()
