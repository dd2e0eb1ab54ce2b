from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import butterfly
from butterfly.checkpoint import load_checkpoint
from butterfly.cli import main
from butterfly.config import ConfigError
from butterfly.experiment.rows import names
from butterfly.models import build_from_spec
from butterfly.sweep import read_results, run_sweep
from conftest import tiny_config

REQUIRED = [
    "seed", "kind", "t", "t_frac", "sigma", "fraction", "control", "noise_l2", "l2",
    "barrier_train_loss", "barrier_test_error", "train_loss_a", "train_loss_b", "test_acc_a",
    "test_acc_b", "diverged",
]  # fmt: skip


def test_sweep_end_to_end(tmp_path: Path, tiny) -> None:
    out = run_sweep(tiny, tmp_path / "run", quiet=True)
    df = out.results
    # 2 times x (control + 2 kinds x 2 sigmas) rows
    assert len(df) == 2 * 5
    assert set(REQUIRED) <= set(df.columns)
    ctrl = df[df.control == 1]
    assert len(ctrl) == 2
    assert (ctrl.l2 == 0.0).all() and (ctrl.barrier_train_loss == 0.0).all()
    assert (ctrl.barrier_test_error == 0.0).all() and (ctrl.noise_l2 == 0.0).all()
    kids = df[df.control == 0]
    assert (kids.l2 > 0).all() and (kids.diverged == 0).all()
    # noise_l2 = sigma * sqrt(sum of init variances of the weights), the Eq. 6 scale
    ratio = kids.noise_l2 / kids.sigma
    assert ratio.max() == pytest.approx(ratio.min(), rel=1e-5)
    assert out.control_ok
    # member-steps: one original from 0 to T, the control and 4 children of each t from t
    assert out.steps == out.minimum_steps == 60 + 5 * (60 + 30)
    # the csv export equals the database
    csv = pd.read_csv(tmp_path / "run" / "results.csv")
    assert len(csv) == len(df) and set(csv.columns) == set(names("results"))
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_checkpoints_rebuild_the_model(tmp_path: Path, tiny) -> None:
    run_sweep(tiny, tmp_path / "run", quiet=True)
    files = sorted((tmp_path / "run" / "checkpoints").rglob("*.safetensors"))
    assert len(files) == 2 * 6  # every member of every population
    params, _, meta = load_checkpoint(files[0])
    model = build_from_spec(meta["model_spec"])
    missing = set(dict(model.named_parameters())) ^ set(params)
    assert not missing
    model.load_state_dict(params)
    assert model(torch.randn(3, *meta["model_spec"]["input_shape"])).shape == (3, 4)


def test_rerun_resumes_and_recomputes_nothing(tmp_path: Path, tiny) -> None:
    first = run_sweep(tiny, tmp_path / "run", quiet=True)
    again = run_sweep(tiny, tmp_path / "run", quiet=True)
    assert again.units_run == 0 and again.units_skipped == 2 and again.steps == 0
    pd.testing.assert_frame_equal(first.results, again.results)


def test_changed_config_on_existing_run_is_refused(tmp_path: Path, tiny) -> None:
    run_sweep(tiny, tmp_path / "run", quiet=True)
    changed = tiny_config(recipe={"lr": 0.05})
    with pytest.raises(ConfigError, match=r"recipe\.lr"):
        run_sweep(changed, tmp_path / "run", quiet=True)


def test_worker_pool_equals_inline(tmp_path: Path, tiny) -> None:
    inline = run_sweep(tiny, tmp_path / "a", workers=1, quiet=True).results
    pooled = run_sweep(tiny, tmp_path / "b", workers=2, quiet=True).results
    cols = [c for c in names("results") if c != "unit_wall_s"]
    pd.testing.assert_frame_equal(inline[cols], pooled[cols])


def test_python_api_returns_the_run(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    run = butterfly.run(tiny, out=tmp_path / "api")
    assert isinstance(run, butterfly.Run) and run.control_ok and run.dir == tmp_path / "api"
    assert len(run.results) == 10 and run.results.equals(read_results(tmp_path / "api"))
    assert run.report == tmp_path / "api" / "report.html" and run.report.is_file()
    files = run.files()
    assert tmp_path / "api" / "results.db" in files and tmp_path / "api" / "config.yaml" in files
    assert tmp_path / "api" / "figures" / "barrier_vs_sigma.png" in files
    assert len(run.trajectories()) > 0 and "all sigma = 0 controls exactly 0" in repr(run)
    # the default folder is runs/<name>, as on the command line
    monkeypatch.chdir(tmp_path)
    again = butterfly.run(tiny, report=False)
    assert again.dir == Path("runs") / "tiny" and again.report is None


def test_cli_run_prints_table_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_config().to_dict()))
    code = main(
        [
            "run",
            str(cfg),
            "--out",
            str(tmp_path / "cli"),
            "--set",
            "perturb.sigmas=[0.01]",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "mean barrier_train_loss" in out and "mean l2" in out
    assert "determinism check: all 2 sigma = 0 controls" in out
    assert yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["perturb"]["sigmas"] == [
        0.01
    ]


def test_determinism_failure_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import butterfly.sweep.tasks as tasks_mod  # where run_unit finds it

    real = tasks_mod.measure_children

    def broken(*args, **kwargs):
        rows = real(*args, **kwargs)
        for r in rows:
            if r["control"]:
                r["l2"] = 1e-9  # as if the control had drifted by rounding
        return rows

    monkeypatch.setattr(tasks_mod, "measure_children", broken)
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config().to_dict()))
    code = main(["run", str(cfg), "--out", str(tmp_path / "bad"), "--quiet"])
    assert code == 1
    assert "DETERMINISM FAILURE" in capsys.readouterr().err


def test_diverging_child_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    cfg = tiny_config(perturb={"sigmas": [1e-3, 1e12], "kinds": ["gaussian"], "times": [0.5]})
    df = run_sweep(cfg, tmp_path / "run", quiet=True).results
    big = df[df.sigma == 1e12].iloc[0]
    assert big.diverged == 1 and pd.isna(big.barrier_train_loss) and pd.isna(big.l2)
    small = df[df.sigma == 1e-3].iloc[0]
    assert small.diverged == 0 and small.l2 > 0
