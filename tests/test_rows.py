"""The one row schema (butterfly.experiment.rows): the producer fills it, the store is made from
it, and every column holds a value exactly where the schema says it must."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from butterfly.experiment import rows
from butterfly.sweep import Store, run_sweep
from conftest import tiny_config

MEASURE_SWITCHES = ("weight_matching", "activation_matching", "cka", "ensemble")


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sweep with every measure on: both perturbed kinds, spawning, two fractions,
    trajectories with barriers, the permutation proxy."""
    out = tmp_path_factory.mktemp("rows") / "run"
    cfg = tiny_config(
        seeds=[0, 1],
        perturb={"times": [0.0, 0.5], "sigmas": [1e-3, 1e-1], "fractions": [0.5, 1.0],
                 "kinds": ["batch", "gaussian", "spawn"]},
        eval={"trajectory_points": 5, "cka_examples": 64, "align_examples": 64},
    )  # fmt: skip
    assert all(getattr(cfg.eval, s) for s in MEASURE_SWITCHES) and cfg.eval.trajectory_barriers
    run_sweep(cfg, out, quiet=True)
    return out


def _tables(run: Path) -> dict[str, pd.DataFrame]:
    with Store(run / "results.db") as s:
        return {
            "results": s.results(),
            "trajectories": s.trajectories(),
            "permutation_proxy": s.permutation_proxy(),
            "training": s.training(),
        }


def test_the_store_is_made_from_the_schema(full: Path) -> None:
    con = sqlite3.connect(full / "results.db")
    for table in rows.TABLES:
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        assert cols == rows.names(table), table


def test_every_column_holds_a_value_where_the_schema_says(full: Path) -> None:
    tables = _tables(full)
    df = tables["results"]
    assert set(df["kind"]) == {"batch", "gaussian", "spawn", "control"}
    assert (df["diverged"] == 0).all() and len(df) == 2 * 2 * (1 + 2 * 2 * 2 + 1)
    for c in rows.RESULTS:
        values = df[c.name]
        if c.when == "optional":
            continue
        assert values.notna().all(), f"results.{c.name} ({c.when}) has empty values"
    traj = tables["trajectories"]
    assert len(traj) > 0
    for c in rows.TRAJECTORIES:
        if c.when != "optional":
            assert traj[c.name].notna().all(), c.name
    # the train-loss barrier along the way (Figure 6): every member but the original
    assert traj[traj.kind != "original"]["barrier_train_loss"].notna().all()
    assert traj[traj.kind == "original"]["barrier_train_loss"].isna().all()
    curve = _tables(full)["training"]
    assert len(curve) == len(traj[traj.kind == "original"])  # the original, at every record
    for c in rows.TRAINING:
        if c.when != "optional":
            assert curve[c.name].notna().all(), c.name
    assert curve.test_acc.notna().all() and curve[curve.step > curve.t].batch_loss.notna().all()
    proxy = tables["permutation_proxy"]
    assert len(proxy) == 2 * 8
    for c in rows.PERMUTATION_PROXY:
        assert proxy[c.name].notna().all(), c.name


def test_a_measure_switched_off_leaves_exactly_its_columns_empty(tmp_path: Path) -> None:
    cfg = tiny_config(
        perturb={"times": [0.5], "sigmas": [1e-2], "kinds": ["gaussian"]},
        eval={"weight_matching": False, "activation_matching": False, "cka": False,
              "ensemble": False, "trajectory_points": 0, "proxy_fractions": []},
    )  # fmt: skip
    df = run_sweep(cfg, tmp_path / "run", quiet=True).results
    for c in rows.RESULTS:
        if c.when in MEASURE_SWITCHES:
            assert df[c.name].isna().all(), c.name
        elif c.when != "optional":
            assert df[c.name].notna().all(), c.name
    t = _tables(tmp_path / "run")
    assert t["trajectories"].empty and t["permutation_proxy"].empty


def test_a_diverged_child_keeps_its_identity_and_loses_its_measures(tmp_path: Path) -> None:
    cfg = tiny_config(perturb={"times": [0.5], "sigmas": [1e-3, 1e12], "kinds": ["gaussian"]})
    df = run_sweep(cfg, tmp_path / "run", quiet=True).results
    bad = df[df.sigma == 1e12].iloc[0]
    assert bad.diverged == 1
    for c in rows.RESULTS:
        if c.when in ("key", "always"):
            assert pd.notna(bad[c.name]), c.name
        elif c.when != "optional":
            assert pd.isna(bad[c.name]), c.name


def test_make_row_refuses_a_column_the_schema_does_not_have() -> None:
    row = rows.make_row("trajectories", seed=0, t=0, member="m", kind="batch", sigma=0.1, step=3)
    assert list(row) == rows.names("trajectories") and row["l2_to_original"] is None
    with pytest.raises(KeyError, match="no column"):
        rows.make_row("trajectories", seed=0, barrier_test_loss=1.0)


def test_an_older_store_is_upgraded_with_the_columns_it_lacks(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE trajectories (seed INTEGER NOT NULL, t INTEGER NOT NULL, member TEXT NOT "
        "NULL, kind TEXT NOT NULL, sigma REAL NOT NULL, step INTEGER NOT NULL, l2_to_original "
        "REAL, l2_from_init REAL, UNIQUE(seed, t, member, step))"
    )
    con.execute("INSERT INTO trajectories VALUES (0, 0, 'control', 'control', 0.0, 5, 0.0, 1.5)")
    con.commit()
    con.close()
    with Store(db) as s:
        traj = s.trajectories()
        assert list(traj.columns) == rows.names("trajectories")
        assert traj.loc[0, "l2_from_init"] == 1.5 and pd.isna(traj.loc[0, "barrier_train_loss"])
        assert list(s.results().columns) == rows.names("results")


def _columns_the_report_reads() -> set[str]:
    """Every schema column named by a string literal in the report's source (what its figures
    and tables select, group by or plot)."""
    import ast

    import butterfly.report

    known = {c for t in rows.TABLES for c in rows.names(t)} | {rows.PRETRAIN_STEPS.name}
    found: set[str] = set()
    for path in Path(butterfly.report.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in known:
                found.add(str(node.value))
    return found


def test_every_column_a_figure_or_table_reads_is_produced(full: Path) -> None:
    read = _columns_the_report_reads()
    # the report really reads the measures of Figures 2, 3, 6, 7, 10, 11 and 16
    for c in ("barrier_train_loss", "barrier_test_error", "cka", "ensemble_test_acc",
              "l2_to_original", "l2_from_init", "fixed_point_fraction_wm", "noise_l2",
              "barrier_train_loss_wm", "fixed_fraction", "test_acc_a"):  # fmt: skip
        assert c in read, c
    tables = _tables(full)
    kids = rows.children(tables["results"], spawn=True)
    traj = tables["trajectories"]
    when = {c.name: c.when for t in rows.TABLES for c in rows.TABLES[t][0]}
    # produced by other pipelines, checked where they run (tests/test_stability.py)
    special = {c.name for t in rows.TABLES for c in rows.TABLES[t][0]
               if c.doc.startswith(("eval.lyapunov:", "butterfly threshold:"))}  # fmt: skip
    for c in sorted(read - {rows.PRETRAIN_STEPS.name} - special):
        holders = [t for t in rows.TABLES if c in rows.names(t) and t in tables]
        for t in holders:
            frame = (kids if t == "results" else traj[traj.kind != "original"]
                     if t == "trajectories" else tables[t])[c]  # fmt: skip
            filled = frame.notna().any() if when[c] == "optional" else frame.notna().all()
            assert filled, f"the report reads {c}, which is empty in {t}"
