"""The run's results store: one SQLite file, ``results.db``, in the run folder.

Tables ``results``, ``trajectories`` and ``permutation_proxy`` follow the row schema of
:mod:`butterfly.experiment.rows` (created from it, and upgraded from it when an older folder
lacks a column); ``units`` (one row per finished population unit), ``failures`` (units that
raised) and ``meta`` (config and environment) are the sweep's own bookkeeping. Each finished
unit is committed in one transaction, so a crash loses at most the units in flight.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pandas as pd

from butterfly.config import ConfigError
from butterfly.experiment import rows
from butterfly.safepath import inside, plain_name
from butterfly.sweep.rundir import STORE, store_path

T = TypeVar("T")


class StoreDamaged(RuntimeError):
    """The run's database file is corrupted; the message names it and the way out."""


def _damaged(path: Path, err: BaseException) -> StoreDamaged:
    run = path.parent
    return StoreDamaged(
        f"{path} is damaged ({err}); the checkpoints in {run} are intact: run "
        f"`butterfly repair {run}` to rebuild the store from what can be read and the "
        "checkpoints"
    )


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Turn SQLite's "malformed"/"not a database" errors into :class:`StoreDamaged`."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError:
            raise
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as err:
            cause = err.__cause__ or err.__context__ if isinstance(err, pd.errors.DatabaseError) else err
            if isinstance(cause, sqlite3.DatabaseError) and not isinstance(
                cause, sqlite3.OperationalError
            ):
                raise _damaged(self.path, cause) from None
            raise

    return wrapper


class Store:
    """A thin wrapper over the run's SQLite database."""

    @guarded
    def __init__(self, path: Path):
        self.path = Path(path)
        for companion in ("", "-wal", "-shm", "-journal"):  # SQLite follows links: never here
            inside(self.path.parent, self.path.name + companion)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        with self.conn:
            for table, (columns, unique) in rows.TABLES.items():
                cols = ", ".join(f"{c.name} {c.declaration}" for c in columns)
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} ({cols}, UNIQUE({', '.join(unique)}))"
                )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS units (seed INTEGER NOT NULL, t INTEGER NOT NULL, "
                "population INTEGER, steps INTEGER, wall_s REAL, finished REAL, "
                "PRIMARY KEY (seed, t))"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS rounds (seed INTEGER NOT NULL, t INTEGER NOT NULL, "
                "round INTEGER NOT NULL, population INTEGER, steps INTEGER, wall_s REAL, "
                "finished REAL, PRIMARY KEY (seed, t, round))"
            )
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS failures (seed INTEGER NOT NULL, t INTEGER, "
                "error TEXT NOT NULL, time REAL NOT NULL)"
            )
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Upgrade a store written by an older version: add the columns it lacks (NULL in its
        old rows)."""
        with self.conn:
            for table, (columns, _) in rows.TABLES.items():
                have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                for c in columns:
                    if c.name not in have:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {c.name} {c.sql}")

    def close(self) -> None:
        self.conn.close()

    @guarded
    def integrity(self) -> str:
        """SQLite's integrity check: ``ok`` for an intact store."""
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- meta -----------------------------------------------------------------------------
    @guarded
    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    @guarded
    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # ---- units ----------------------------------------------------------------------------
    @guarded
    def finished_units(self) -> set[tuple[int, int]]:
        return {(s, t) for s, t in self.conn.execute("SELECT seed, t FROM units")}

    @guarded
    def commit_unit(
        self,
        seed: int,
        t: int,
        results: Iterable[dict[str, Any]],
        trajectory: Iterable[dict[str, Any]],
        proxy: Iterable[dict[str, Any]],
        population: int,
        steps: int,
        wall_s: float | None,
        finished: float,
        training: Iterable[dict[str, Any]] = (),
    ) -> None:
        """Write a unit's rows and mark it finished, in one transaction."""
        with self.conn:
            self._insert("results", results)
            self._insert("trajectories", trajectory)
            self._insert("permutation_proxy", proxy)
            self._insert("training", training)
            self.conn.execute(
                "INSERT OR REPLACE INTO units (seed, t, population, steps, wall_s, finished) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (seed, t, population, steps, wall_s, finished),
            )

    def _insert(self, table: str, records: Iterable[dict[str, Any]]) -> None:
        cols = rows.names(table)
        self.conn.executemany(
            f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)})",
            [tuple(r.get(c) for c in cols) for r in records],
        )

    @guarded
    def commit_round(
        self,
        seed: int,
        t: int,
        round_: int,
        results: Iterable[dict[str, Any]],
        population: int,
        steps: int,
        wall_s: float,
        finished: float,
    ) -> None:
        """A threshold search's unit: its rows (tagged with the round) and its bookkeeping in
        the ``rounds`` table, in one transaction."""
        with self.conn:
            self._insert("results", ({**r, "round": round_} for r in results))
            self.conn.execute(
                "INSERT OR REPLACE INTO rounds (seed, t, round, population, steps, wall_s, "
                "finished) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seed, t, round_, population, steps, wall_s, finished),
            )

    @guarded
    def finished_rounds(self) -> set[tuple[int, int, int]]:
        return {(s, t, r) for s, t, r in self.conn.execute("SELECT seed, t, round FROM rounds")}

    @guarded
    def set_thresholds(self, records: Iterable[dict[str, Any]]) -> None:
        with self.conn:
            self._insert("thresholds", records)

    @guarded
    def thresholds(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM thresholds ORDER BY seed, kind, over, at", self.conn
        )

    @guarded
    def record_failure(self, seed: int, t: int | None, error: str, when: float) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO failures (seed, t, error, time) VALUES (?, ?, ?, ?)",
                (seed, t, error, when),
            )

    @guarded
    def failures(self) -> pd.DataFrame:
        """Failures of units that have not finished since (a later success clears them)."""
        return pd.read_sql_query(
            "SELECT f.* FROM failures f WHERE NOT EXISTS (SELECT 1 FROM units u WHERE "
            "u.seed = f.seed AND (f.t IS NULL OR u.t = f.t)) ORDER BY time",
            self.conn,
        )

    # ---- reading --------------------------------------------------------------------------
    @guarded
    def results(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM results ORDER BY seed, t, kind, sigma, member", self.conn
        )

    @guarded
    def trajectories(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM trajectories ORDER BY seed, t, member, step", self.conn
        )

    @guarded
    def permutation_proxy(self) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT * FROM permutation_proxy ORDER BY seed, fixed_fraction", self.conn
        )

    @guarded
    def training(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM training ORDER BY seed, t, step", self.conn)

    @guarded
    def units(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM units ORDER BY seed, t", self.conn)


def read_results(run_dir: Path) -> pd.DataFrame:
    """The ``results`` table of a run folder as a DataFrame."""
    path = store_path(Path(run_dir))
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {STORE}: is it a butterfly run folder?")
    with Store(path) as s:
        return s.results()


LEGACY_MANIFEST = "finetune.json"  # fine-tuning folders written before the top-level store


class PipelineSweep(NamedTuple):
    """One sweep of a fine-tuning folder: the pre-training step it starts from, its folder, and
    how reports name that start point."""

    steps: int
    folder: Path
    label: str


def start_label(steps: int, zero: str = "random init") -> str:
    """The name of a fine-tuning start point: ``zero`` (what step 0 is) or "pre-trained N
    steps"."""
    return f"pre-trained {steps} steps" if steps else zero


def pipeline_runs(run_dir: Path) -> list[PipelineSweep] | None:
    """The sweeps of a pipeline folder (fine-tuning: pre-training steps, folder and label each,
    from its store's ``runs``), or None for a plain run folder. A fine-tuning folder of an older
    version (a ``finetune.json`` manifest, no store) is upgraded to a store here."""
    run_dir = Path(run_dir)
    db = store_path(run_dir)
    legacy = inside(run_dir, LEGACY_MANIFEST)
    if not db.is_file() and legacy.is_file():
        try:
            runs = json.loads(legacy.read_text(encoding="utf-8"))["runs"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{legacy} is not a fine-tuning manifest (JSON with 'runs')") from None
        with Store(db) as s:
            s.set_meta("pipeline", "finetune")
            s.set_meta("runs", runs)
    if not db.is_file():
        return None
    with Store(db) as s:
        if s.get_meta("pipeline") != "finetune":
            return None
        runs = s.get_meta("runs") or []
    out = []
    for entry in runs if isinstance(runs, list) else [runs]:
        ok = (isinstance(entry, list) and len(entry) in (2, 3) and isinstance(entry[0], int)
              and not isinstance(entry[0], bool) and isinstance(entry[1], str)
              and all(isinstance(x, str) for x in entry[2:]))  # fmt: skip
        if not ok:
            raise ConfigError(f"{db}: its list of sweeps ('runs') holds {str(entry)[:80]!r}, not "
                              "[pre-training steps, folder name, label]")  # fmt: skip
        steps, name, *rest = entry
        folder = inside(run_dir, plain_name(name, "a fine-tuning sweep's folder name"))
        out.append(PipelineSweep(steps, folder, rest[0][:200] if rest else start_label(steps)))
    return out
