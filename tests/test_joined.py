"""One original per seed: a seed's populations joined (members join at their t), the tasks
that keep the workers equally busy, and what a piece of a split seed must agree on."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from butterfly.experiment import make_setup, run_population, train_parent
from butterfly.experiment.measure import same_bits
from butterfly.experiment.members import population_members
from butterfly.experiment.resolve import resolve
from butterfly.experiment.spawn import run_joined
from butterfly.sweep import scheduler
from butterfly.sweep.executors import InlineExecutor
from butterfly.sweep.plan import SeedTask, minimum_steps, plan, seed_tasks
from butterfly.sweep.progress import Progress
from butterfly.sweep.runner import run_sweep
from butterfly.sweep.store import Store
from butterfly.sweep.tasks import UnitResult
from conftest import tiny_config


def _own_populations(setup: Any, ts: list[int]) -> dict[int, Any]:
    """Each t's population trained on its own from the parent's state at t (the design
    without a shared original)."""
    states: dict[int, Any] = {}
    train_parent(setup, ts, None, lambda s, p, st: states.__setitem__(
        s, ({k: v.clone() for k, v in p.items()},
            {n: {k: v.clone() for k, v in d.items()} for n, d in st.items()})))  # fmt: skip
    return {t: run_population(setup, population_members(setup.cfg, t), t, *states[t])
            for t in ts}  # fmt: skip


@pytest.mark.parametrize("model", ["mlp", "public_models:FrozenWhiteningNet"])
def test_joined_members_end_as_in_populations_of_their_own_with_one_original(model: str) -> None:
    cfg = tiny_config(model={"name": model}, perturb={"times": [0.0, 0.1, 0.5]})
    setup = make_setup(resolve(cfg, check=False), 0)
    ts = cfg.perturbation_steps()
    joined = run_joined(setup, [(t, population_members(cfg, t)) for t in ts])
    own = _own_populations(make_setup(resolve(cfg, check=False), 0), ts)
    T = cfg.recipe.steps
    P = len(population_members(cfg))
    # the minimum: one original from 0 to T, the control and children of every t from t
    assert joined.member_steps == T + sum((P - 1) * (T - t) for t in ts) == minimum_steps(cfg)
    for t in ts:
        run = joined.runs[t]
        a = run.original.final
        assert a is not None
        control = run.members[1]
        assert control.member.kind == "control" and control.final is not None
        assert same_bits(a, control.final)  # joining and training beside others: no bit moved
        for tm, mine in zip(run.members, own[t].members, strict=True):
            assert tm.member == mine.member
            assert tm.final is not None and mine.final is not None
            if model == "mlp" or t == 0:
                # the same arithmetic: bit for bit (the vmapped model's parent trains alone, in
                # a loop, before t in the other design, so only t = 0 is compared there)
                assert same_bits(tm.final, mine.final), (t, tm.member.name)
            else:
                for k in tm.final:
                    assert torch.allclose(tm.final[k], mine.final[k], rtol=1e-4, atol=1e-6)
        assert [r["step"] for r in run.training] == [r["step"] for r in own[t].training]
        if model == "mlp":
            assert [r["train_loss"] for r in run.training] == \
                [r["train_loss"] for r in own[t].training]  # fmt: skip
            assert [r["batch_loss"] for r in run.training] == \
                [r["batch_loss"] for r in own[t].training]  # fmt: skip


def test_seed_tasks_keep_two_workers_equally_busy_with_one_extra_original() -> None:
    cfg = tiny_config(seeds=[0, 1, 2], perturb={"times": [0.0, 0.1, 0.5]})
    units = plan(cfg)
    T = cfg.recipe.steps

    def work(task: SeedTask) -> int:  # member-steps of a task
        return (T - task.units[0].t) + sum((len(u.members) - 1) * (T - u.t) for u in task.units)

    tasks = seed_tasks(units, 2, T)
    assert [(t.seed, t.piece) for t in tasks] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    pieces = [t for t in tasks if t.seed == 2]
    for u in plan(cfg):
        if u.seed != 2:
            continue
        shares = [p_u for p in pieces for p_u in p.units if p_u.t == u.t]
        children = sorted(m.name for s in shares for m in s.members[1:] if m.kind != "control")
        assert children == sorted(m.name for m in u.members[2:])  # each child exactly once
        assert [m.kind for m in shares[0].members[:2]] == ["original", "control"]
        assert all(m.kind not in ("original", "control") for m in shares[1].members[1:])
        assert shares[1].members[0].kind == "original"
    # the pool takes them in order: two whole seeds, then a half each
    busy = [work(tasks[0]) + work(tasks[2]), work(tasks[1]) + work(tasks[3])]
    whole = work(tasks[0])
    assert abs(busy[0] - busy[1]) <= T  # within one child's work (the whole: 780)
    assert whole == 780
    assert sum(busy) == minimum_steps(cfg) + T  # one extra original, nothing else
    assert [(t.seed, t.piece) for t in seed_tasks(units, 2, T, split=False)] == [(0, 0), (1, 0),
                                                                             (2, 0)]  # fmt: skip
    assert len(seed_tasks(plan(tiny_config(seeds=[0, 1])), 2, T)) == 2  # even: no split
    five = seed_tasks(plan(tiny_config(seeds=[0, 1, 2, 3, 4])), 2, T)
    assert [(t.seed, t.piece) for t in five] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 1)]


def _table(store: Store, name: str) -> pd.DataFrame:
    df = getattr(store, name)()
    drop = [c for c in df.columns if "wall" in c]
    keys = [c for c in ("seed", "t", "member", "step") if c in df.columns]
    return df.drop(columns=drop).sort_values(keys).reset_index(drop=True)


def _same_up_to_l2_rounding(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables, but the float64 L2 distances, whose sums may round differently (1 ulp)
    when the same weights are views of differently stacked tensors."""
    assert a.shape == b.shape
    l2 = [c for c in a.columns if c.startswith("l2")]
    pd.testing.assert_frame_equal(a.drop(columns=l2), b.drop(columns=l2), check_exact=True)
    pd.testing.assert_frame_equal(a[l2], b[l2], check_exact=False, rtol=1e-13, atol=1e-13)


def test_three_seeds_on_two_workers_match_one_worker_with_one_extra_original(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(seeds=[0, 1, 2])
    one = run_sweep(cfg, tmp_path / "one", quiet=True)
    seen: dict[tuple[int, int], list[str]] = {}
    two = run_sweep(tiny_config(seeds=[0, 1, 2], runtime={"workers": 2}), tmp_path / "two",
                    quiet=True, on_unit=lambda r: seen.__setitem__(
                        (r.seed, r.t), [row["member"] for row in r.rows]))  # fmt: skip
    assert one.control_ok and two.control_ok
    assert one.steps == one.minimum_steps == minimum_steps(cfg)
    assert two.steps == two.minimum_steps + cfg.recipe.steps  # seed 2 split: a second original
    with Store(one.run_dir / "results.db") as a, Store(two.run_dir / "results.db") as b:
        for name in ("results", "trajectories", "training"):
            _same_up_to_l2_rounding(_table(a, name), _table(b, name))
        # the merged unit's rows are in the unit's member order, as one population's are
        order = [m.name for m in population_members(cfg)][1:]
        assert seen[(2, 0)] == seen[(2, 30)] == seen[(0, 0)] == order
        units = b.units()
        assert units[units.seed == 2].population.tolist() == [len(order) + 1] * 2


def test_a_resumed_seed_starts_from_the_saved_original_at_its_first_missing_t(
    tmp_path: Path,
) -> None:
    cfg = tiny_config()
    first = run_sweep(cfg, tmp_path / "run", quiet=True)
    with Store(first.run_dir / "results.db") as s:
        before = {n: _table(s, n) for n in ("results", "trajectories", "training")}
    t_late = cfg.perturbation_steps()[-1]
    with sqlite3.connect(first.run_dir / "results.db") as db:  # as if stopped before t = 30
        for table in ("units", "results", "trajectories", "training"):
            db.execute(f"DELETE FROM {table} WHERE t = ?", (t_late,))
    again = run_sweep(cfg, tmp_path / "run", quiet=True)
    P = len(population_members(cfg))
    T = cfg.recipe.steps
    assert again.units_skipped == 1 and again.units_run == 1
    assert again.steps == P * (T - t_late)  # from the saved original at t: nothing before it
    with Store(again.run_dir / "results.db") as s:
        for name, df in before.items():
            _same_up_to_l2_rounding(_table(s, name), df)


def test_pieces_whose_originals_differ_fail_their_seed_with_a_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    cfg = tiny_config(seeds=[0, 1, 2])
    resolved = resolve(cfg, check=False)
    real = scheduler.run_seed

    def drifting(resolved: Any, task: SeedTask, run_dir: Path, reporter: Any) -> list[UnitResult]:
        out = real(resolved, task, run_dir, reporter)
        if task.piece == 1:
            for r in out:
                r.original = "another"
        return out

    monkeypatch.setattr(scheduler, "run_seed", drifting)
    pool = InlineExecutor(report=False)
    pool.slots = 2
    committed: list[tuple[int, int]] = []
    failures: list[tuple[int, int | None, str]] = []
    (tmp_path / "parents").mkdir()
    scheduler.schedule_seeds(resolved, plan(cfg), tmp_path, pool,
                             lambda r: committed.append((r.seed, r.t)),
                             lambda s, t, e: failures.append((s, t, str(e))),
                             Progress(6, 0, 1, cfg.recipe.steps, enabled=False))  # fmt: skip
    assert sorted(committed) == [(0, 0), (0, 30), (1, 0), (1, 30)]
    assert failures == [(2, 0, "the original of seed 2 did not end bit-identical in the 2 pieces "
                                "its children were split into: training is not deterministic")]
