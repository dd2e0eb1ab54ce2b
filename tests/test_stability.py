"""The edge of stability end to end: `butterfly threshold` as a resumable sweep, the stability
map, and the linearised prediction recorded next to the measured divergence."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from butterfly.cli import main
from butterfly.config import build_config
from butterfly.experiment.threshold import key
from butterfly.report import build_report
from butterfly.report.figures import sigma_star, stability_map
from butterfly.sweep import Store, run_sweep
from butterfly.sweep.pipelines import run_pipeline
from butterfly.sweep.pipelines.threshold import LEAN_EVAL

TINY = {
    "name": "th-tiny",
    "seeds": [0, 1],
    "data": {"name": "synthetic", "n_train": 256, "n_test": 128, "n_features": 12, "n_classes": 4},
    "model": {"name": "mlp", "width": 16, "depth": 2},
    "recipe": {"steps": 60, "batch_size": 32, "lr": 0.1},
    "perturb": {"times": [0.0, 0.5], "kinds": ["batch", "gaussian"]},
    "eval": LEAN_EVAL,
    "threshold": {"eps": 0.001},
}


def _cfg(**threshold: object):
    raw = {**TINY, "threshold": {**TINY["threshold"], **threshold}}
    return build_config(raw)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("th") / "run"
    run_pipeline(_cfg(), out, workers=2, quiet=True)
    return out


def _thresholds(run: Path) -> pd.DataFrame:
    with Store(run / "results.db") as s:
        return s.thresholds()


def test_a_search_finds_a_bracket_that_a_direct_run_confirms(searched: Path, tmp_path: Path) -> None:
    th = _thresholds(searched)
    assert len(th) == 2 * 2 * 2  # seeds x kinds x times
    resolved = th[th.status == "resolved"]
    assert len(resolved) >= 4
    assert ((resolved.hi / resolved.lo) <= 1.25 * (1 + 1e-5)).all()
    for r in resolved.itertuples():  # σ* lies inside its bracket
        assert r.lo < r.estimate < r.hi and math.isclose(r.estimate, math.sqrt(r.lo * r.hi))
    # a direct, ordinary run at σ* x 1.25 and σ* / 1.25 confirms the crossing
    for r in resolved.head(3).itertuples():
        raw = {**TINY, "seeds": [int(r.seed)], "threshold": None,
               "perturb": {"steps": [int(r.at)], "times": [], "kinds": [r.kind],
                           "sigmas": [key(r.estimate * 1.25), key(r.estimate / 1.25)]}}  # fmt: skip
        df = run_sweep(build_config(raw), tmp_path / f"direct-{r.Index}", quiet=True).results
        kids = df[df.control == 0].set_index("sigma").barrier_train_loss
        assert kids[key(r.estimate * 1.25)] >= 0.001, r
        assert kids[key(r.estimate / 1.25)] < 0.001, r


def test_the_rows_are_tagged_with_their_round_and_the_controls_are_exact(searched: Path) -> None:
    with Store(searched / "results.db") as s:
        df = s.results()
        rounds = pd.read_sql_query("SELECT * FROM rounds", s.conn)
    assert set(df["round"]) >= {1, 2} and df["round"].notna().all()
    ctrl = df[df.control == 1]
    assert len(ctrl) == len(rounds) and (ctrl.l2 == 0.0).all()
    assert (ctrl.barrier_train_loss == 0.0).all()
    # round 1 measures per_round sizes over the whole bracket, its ends included
    r1 = df[(df["round"] == 1) & (df.control == 0)]
    per_unit = r1.groupby(["seed", "t", "kind"]).sigma.agg(["min", "max", "count"])
    assert (per_unit["min"] == 1e-6).all() and (per_unit["max"] == 1.0).all()
    assert (per_unit["count"] == 6).all()


def test_killed_after_its_first_round_it_resumes_without_retraining_it(
    tmp_path: Path, searched: Path
) -> None:
    cfg_file = tmp_path / "th.yaml"
    raw = {**TINY, "recipe": {**TINY["recipe"], "steps": 300}}
    cfg_file.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "butterfly.cli", "threshold", str(cfg_file), "--out", str(run),
           "--quiet", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    db = run / "results.db"
    deadline = time.monotonic() + 300
    first: list[tuple] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if db.is_file():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    first = c.execute("SELECT seed, t, round, finished FROM rounds").fetchall()
            except sqlite3.OperationalError:
                first = []
            if sum(1 for r in first if r[2] == 1) == 4:  # round 1 of every (seed, t)
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as c:
        before = {(s, t, r): f for s, t, r, f in c.execute(
            "SELECT seed, t, round, finished FROM rounds").fetchall()}  # fmt: skip
    assert any(r == 1 for _, _, r in before)
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with sqlite3.connect(db) as c:
        after = {(s, t, r): f for s, t, r, f in c.execute(
            "SELECT seed, t, round, finished FROM rounds").fetchall()}  # fmt: skip
    for k, finished in before.items():
        assert after[k] == finished, f"round {k} was trained again"
    assert len(after) > len(before)
    clean = tmp_path / "clean"
    run_pipeline(build_config(raw), clean, workers=2, quiet=True)
    cols = ["seed", "kind", "over", "at", "status", "estimate", "lo", "hi", "rounds", "points"]
    pd.testing.assert_frame_equal(_thresholds(run)[cols], _thresholds(clean)[cols])


def test_the_time_search_finds_from_when_on_a_size_is_harmless(tmp_path: Path) -> None:
    out = tmp_path / "t"
    run_pipeline(_cfg(over="t", sigma=0.05), out, workers=1, quiet=True)
    th = _thresholds(out)
    assert set(th["over"]) == {"t"} and set(th["at"]) == {0.05}
    with Store(out / "results.db") as s:
        df = s.results()
    for r in th.itertuples():
        kids = df[(df.kind == r.kind) & (df.control == 0) & (df.seed == r.seed)]
        b = kids.groupby("t").barrier_train_loss.mean()
        if r.status == "resolved":  # unstable at lo, stable from hi on at every measured t
            assert b[int(r.lo)] >= 0.001 and (b[b.index >= r.hi] < 0.001).all()
        elif r.status == "always_stable":
            assert (b < 0.001).all()
        elif r.status == "never_stable":
            assert b[b.index.max()] >= 0.001


def test_the_report_draws_the_stability_map_with_the_searched_edge(searched: Path) -> None:
    page = build_report([searched])
    text = page.read_text()
    assert '<figure data-figure="stability_map">' in text
    with Store(searched / "results.db") as s:
        df, th = s.results(), s.thresholds()
    fig = stability_map(df, th)
    star = sigma_star(df, th)
    for ax, kind in zip(fig.axes, ["batch", "gaussian"], strict=False):
        line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("σ*(t), geometric"))
        x, y = line.get_xdata(), line.get_ydata()
        want = star[star.kind == kind].groupby("t_frac").sigma_star.apply(
            lambda v: float(np.exp(np.log(v.dropna()).mean())) if v.notna().any() else np.nan)
        assert np.allclose(x, want.index) and np.allclose(y, want.values, equal_nan=True)


def test_the_cli_prints_sigma_star_per_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "th.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k not in ("eval", "threshold")}
                                  | {"seeds": [0]}))  # fmt: skip
    assert main(["threshold", str(cfg), "--eps", "0.001", "--out", str(tmp_path / "o"),
                 "--workers", "1", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "σ* by t (mean over seeds" in out and "batch    t = 0 " in out
    assert "determinism check: all" in out
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["threshold"]["eps"] == 0.001 and saved["eval"]["weight_matching"] is False
    assert main(["threshold", str(cfg), "--metric", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "threshold.metric 'nope' is not a result column" in capsys.readouterr().err


def test_the_linearised_prediction_sits_next_to_the_measured_divergence(tmp_path: Path) -> None:
    raw = {"name": "ly", "seeds": [0], "recipe": {"steps": 400},
           "perturb": {"times": [0.0, 0.5], "sigmas": [1e-4, 1e-2], "kinds": ["gaussian"]},
           "eval": {**LEAN_EVAL, "trajectory_points": 10, "lyapunov": True}}  # fmt: skip
    out = tmp_path / "ly"
    df = run_sweep(build_config(raw), out, quiet=True, workers=1).results
    with Store(out / "results.db") as s:
        traj = s.trajectories()
    kids = df[df.control == 0]
    assert kids.lyapunov_exponent.notna().all() and kids.growth_rate.notna().all()
    for r in kids.itertuples():  # ||σε|| exp(λ (s - t)) exactly, at every recorded step
        pts = traj[(traj.member == r.member) & (traj.t == r.t)]
        want = r.noise_l2 * np.exp(r.lyapunov_exponent * (pts.step - r.t))
        assert np.allclose(pts.l2_predicted, want, rtol=1e-12)
    # Figure 6's claim: early perturbations diverge far faster than the linearised system says
    early = kids[kids.t == 0]
    final = traj[(traj.t == 0) & (traj.step == 400) & traj.member.isin(early.member)]
    ratio = (final.l2_to_original / final.l2_predicted).to_numpy()
    smallest = final.sigma.to_numpy() == 1e-4
    assert (ratio > 1).all() and (ratio[smallest] > 100).all()  # not the linearised growth
    assert (early.growth_rate > early.lyapunov_exponent).all()
    text = build_report([out]).read_text()
    assert '<figure data-figure="linearised">' in text
