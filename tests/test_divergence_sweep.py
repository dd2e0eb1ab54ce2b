"""Issue 3's measures inside sweeps: trajectories, permutation proxy, switches, `compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from butterfly.cli import main
from butterfly.sweep import Store, run_sweep
from conftest import tiny_config

NEW_COLUMNS = [
    "barrier_train_loss_wm", "fixed_point_fraction_wm", "l2_wm", "barrier_train_loss_am",
    "fixed_point_fraction_am", "cka", "ensemble_test_acc",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("div") / "run"
    run_sweep(tiny_config(), out, quiet=True)
    return out


def test_new_columns_and_exact_control(run: Path) -> None:
    with Store(run / "results.db") as s:
        df = s.results()
    assert set(NEW_COLUMNS) <= set(df.columns)
    ctrl = df[df.control == 1]
    for col in ("l2_wm", "barrier_train_loss_wm", "barrier_train_loss_am", "cka", "l2_am"):
        assert (ctrl[col] == 0.0).all(), col
    assert (ctrl.fixed_point_fraction_wm == 1.0).all() and (
        ctrl.fixed_point_fraction_am == 1.0
    ).all()
    assert (ctrl.ensemble_test_acc == ctrl.test_acc_a).all()
    kids = df[df.control == 0]
    assert kids[NEW_COLUMNS].notna().all().all()
    assert (kids.cka > 0).all()
    per = json.loads(kids.fixed_points_wm.iloc[0])
    assert set(per) == {"P_0", "P_1"}


def test_trajectories_are_recorded_at_log_spaced_steps(run: Path) -> None:
    with Store(run / "results.db") as s:
        tr = s.trajectories()
    T = 60
    for t in (0, 30):
        d = tr[tr.t == t]
        steps = sorted(d.step.unique())
        assert steps[0] == t and steps[-1] == T and len(steps) >= 8
        assert (d[d.kind == "control"].l2_to_original == 0.0).all()
        assert (d[d.kind == "original"].l2_to_original == 0.0).all()
        kid = d[d.member == "gaussian-s0.1-f1-d0"].set_index("step")
        assert kid.l2_to_original.loc[t] > 0  # the perturbation itself
    # distance from init at the start of the t = 30 population is the parent's distance at 30
    orig = tr[(tr.member == "original")]
    at30 = orig[(orig.t == 30) & (orig.step == 30)].l2_from_init.item()
    assert at30 > 0
    ref = orig[(orig.t == 0) & (orig.step == T)].l2_from_init.item()
    assert orig[(orig.t == 30) & (orig.step == T)].l2_from_init.item() == pytest.approx(
        ref, rel=1e-12
    )


def test_permutation_proxy(run: Path) -> None:
    with Store(run / "results.db") as s:
        px = s.permutation_proxy()
    assert list(px.fixed_fraction) == [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0]
    full = px[px.fixed_fraction == 1.0].iloc[0]
    assert full.l2 == 0.0 and full.barrier_train_loss == 0.0
    assert px[px.fixed_fraction == 0.0].l2.item() > px[px.fixed_fraction == 0.8].l2.item() > 0


def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    cfg = tiny_config(
        eval={"weight_matching": False, "activation_matching": False, "cka": False,
              "ensemble": False, "trajectory_points": 0, "proxy_fractions": []},
        perturb={"times": [0.0]},
    )  # fmt: skip
    out = run_sweep(cfg, tmp_path / "off", quiet=True)
    assert out.results[NEW_COLUMNS].isna().all().all()
    assert out.results.barrier_train_loss.notna().all()
    with Store(tmp_path / "off" / "results.db") as s:
        assert s.trajectories().empty and s.permutation_proxy().empty


def test_compare_command(run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ck = run / "checkpoints" / "seed0" / "t0000000"
    code = main(
        [
            "compare",
            str(ck / "original.safetensors"),
            str(ck / "gaussian-s0.1-f1-d0.safetensors"),
            "--json",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    with Store(run / "results.db") as s:
        row = s.results().query("t == 0").set_index("member").loc["gaussian-s0.1-f1-d0"]
    for col in ("l2", "barrier_train_loss", "barrier_train_loss_wm", "cka", "ensemble_test_acc"):
        assert res[col] == pytest.approx(row[col], rel=1e-9, abs=1e-12), col
    # the same network twice
    assert main(["compare", str(ck / "original.safetensors"), str(ck / "control.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "barrier_train_loss_wm" in text
    # a different architecture is refused with one sentence
    other = tmp_path / "other"
    run_sweep(
        tiny_config(model={"width": 8}, perturb={"times": [0.0], "sigmas": [0.01]}),
        other,
        quiet=True,
    )
    code = main(
        [
            "compare",
            str(ck / "original.safetensors"),
            str(other / "checkpoints" / "seed0" / "t0000000" / "original.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "different architectures" in err and "Traceback" not in err


def test_results_frame_has_no_duplicate_members(run: Path) -> None:
    df = pd.read_csv(run / "results.csv")
    assert not df.duplicated(["seed", "t", "member"]).any()
