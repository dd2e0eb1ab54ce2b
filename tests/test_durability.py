"""Issue 5: nothing finished is lost; one writer per folder; failures recorded; clear errors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import butterfly.sweep.scheduler as scheduler_mod
from butterfly.cli import main
from butterfly.experiment.rows import names
from butterfly.sweep import Store, SweepFailed, run_sweep
from butterfly.sweep.lock import RunLock, RunLockedError, is_locked
from conftest import tiny_config

COMPARED = [c for c in names("results") if c != "unit_wall_s"]


def _slow_config():
    """Three seeds of four units, about a second each (on two workers: two whole seeds, then
    the third in two pieces): long enough to be killed part way."""
    return tiny_config(
        seeds=[0, 1, 2],
        recipe={"steps": 600},
        perturb={"times": [0.0, 0.25, 0.5, 0.75]},
        eval={"activation_matching": False},
    )


def _frame(run: Path) -> pd.DataFrame:
    with Store(run / "results.db") as s:
        return s.results()[COMPARED].reset_index(drop=True)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = _slow_config()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "butterfly.cli", "run", str(cfg_file), "--out", str(killed), "--quiet",
           "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    db = killed / "results.db"
    deadline = time.monotonic() + 240
    n_done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.is_file():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    n_done = c.execute("SELECT COUNT(*) FROM units").fetchone()[0]
            except sqlite3.OperationalError:
                n_done = 0
            if n_done >= 1:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-unit
    proc.wait()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done_before = c.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    assert 1 <= done_before < 12
    assert not is_locked(killed), "the kernel releases the lock of a killed process"

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    with sqlite3.connect(db) as c:
        units = c.execute("SELECT seed, t, COUNT(*) FROM units GROUP BY seed, t").fetchall()
        dupes = c.execute(
            "SELECT COUNT(*) FROM (SELECT seed, t, member FROM results GROUP BY seed, t, member "
            "HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    assert len(units) == 12 and all(n == 1 for *_, n in units) and dupes == 0

    clean = tmp_path / "clean"
    run_sweep(cfg, clean, workers=2, quiet=True)
    pd.testing.assert_frame_equal(_frame(killed), _frame(clean), check_exact=True)


def test_second_writer_is_refused_and_told_who_holds_the_lock(tmp_path: Path, tiny) -> None:
    run = tmp_path / "run"
    with RunLock(run):
        assert is_locked(run)
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()}"):
            run_sweep(tiny, run, quiet=True)
    assert not is_locked(run)
    run_sweep(tiny, run, quiet=True)  # free again


def test_force_new_starts_a_fresh_folder(tmp_path: Path, tiny) -> None:
    run_sweep(tiny, tmp_path / "run", quiet=True)
    changed = tiny_config(recipe={"lr": 0.05}, perturb={"times": [0.0]})
    out = run_sweep(changed, tmp_path / "run", quiet=True, force_new=True)
    assert out.run_dir == tmp_path / "run-2"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["recipe"]["lr"] == 0.1


def test_a_failing_unit_is_recorded_the_rest_finish_and_a_rerun_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(seeds=[0, 1])
    real = scheduler_mod.run_seed

    def flaky(cfg, task, run_dir, reporter=None):
        if task.seed == 1:
            raise OSError("simulated worker crash")
        return real(cfg, task, run_dir, reporter)

    monkeypatch.setattr(scheduler_mod, "run_seed", flaky)
    with pytest.raises(SweepFailed, match=r"1 unit failed \(first: seed 1 t=0: simulated"):
        run_sweep(cfg, tmp_path / "run", quiet=True)
    with Store(tmp_path / "run" / "results.db") as s:
        assert s.finished_units() == {(0, 0), (0, 30)}  # the other seed's units are all kept
        assert list(s.failures().t) == [0]
    assert main(["status", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "2/4 units done" in out and "simulated worker crash" in out

    monkeypatch.setattr(scheduler_mod, "run_seed", real)
    again = run_sweep(cfg, tmp_path / "run", quiet=True)
    assert again.units_run == 2 and again.units_skipped == 2
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "4/4 units done" in out and "determinism check: all 4" in out and "failed" not in out


def _readonly(path: Path) -> None:
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot make a read-only folder: {r.stderr.strip()}")


def _unreadonly(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run, and its config file."""
    base = tmp_path_factory.mktemp("existing")
    cfg = tiny_config(perturb={"times": [0.0, 0.5]}, eval={"activation_matching": False})
    path = base / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    run_sweep(cfg, base / "run", quiet=True)
    return base / "run", path


BAD_INPUTS = [
    # (name, argv builder, exit code, message fragment)
    ("wrong type", lambda r, c: ["run", str(c), "--out", str(r), "--set", "recipe.lr=fast"], 2, "recipe.lr"),
    ("negative sigma", lambda r, c: ["run", str(c), "--out", str(r), "--set", "perturb.sigmas=[-0.1]"], 2, "perturb.sigmas must be positive"),
    ("t beyond T", lambda r, c: ["run", str(c), "--out", str(r), "--set", "perturb.steps=[999]"], 2, "perturb.steps contains 999"),
    ("t fraction >= 1", lambda r, c: ["run", str(c), "--out", str(r), "--set", "perturb.times=[1.0]"], 2, "fractions of T in [0, 1)"),
    ("unknown model", lambda r, c: ["run", str(c), "--out", str(r), "--set", "model.name=vgg"], 2, "model.name"),
    ("empty grid", lambda r, c: ["run", str(c), "--out", str(r), "--set", "perturb.kinds=[]"], 2, "perturb.kinds is empty"),
    ("no seeds", lambda r, c: ["run", str(c), "--out", str(r), "--set", "seeds=[]"], 2, "seeds is empty"),
    ("unknown key", lambda r, c: ["run", str(c), "--out", str(r), "--set", "recipe.momentm=0.5"], 2, "unknown config key 'recipe.momentm'"),
    ("missing config file", lambda r, c: ["run", str(c.parent / "nope.yaml"), "--out", str(r)], 2, "does not exist"),
    ("batch larger than data", lambda r, c: ["run", str(c), "--out", str(r), "--set", "recipe.batch_size=100000"], 2, "exceeds the 256 training examples"),
    ("batched mode on a cnn", lambda r, c: ["run", str(c), "--out", str(r), "--set", "model.name=cnn", "--set", "runtime.mode=batched"], 2, "runtime.mode = batched is for MLPs"),
    ("bad resnet depth", lambda r, c: ["run", str(c), "--out", str(r), "--set", "model.name=resnet", "--set", "model.depth=9"], 2, "6n+2"),
    ("negative workers", lambda r, c: ["run", str(c), "--out", str(r), "--workers", "-3"], 2, "--workers must be >= 0"),
    ("changed config on existing run", lambda r, c: ["run", str(c), "--out", str(r), "--set", "recipe.lr=0.3"], 2, "different config (changed: recipe.lr)"),
    ("status of a non-run folder", lambda r, c: ["status", str(c.parent)], 2, "is not a butterfly run folder"),
    ("compare a missing checkpoint", lambda r, c: ["compare", str(r / "nope.safetensors"), str(r / "nope2.safetensors")], 2, "does not exist"),
    ("unknown data set", lambda r, c: ["run", str(c), "--out", str(r), "--set", "data.name=imagenet"], 2, "data.name"),
    ("non-mapping config", lambda r, c: ["run", str(_write(c.parent / "list.yaml", "- 1\n")), "--out", str(r)], 2, "must hold a mapping"),
    ("invalid yaml", lambda r, c: ["run", str(_write(c.parent / "broken.yaml", "a: [1, 2\n")), "--out", str(r)], 2, "is not valid YAML"),
]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "argv", "code", "needle"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_inputs_get_one_clear_sentence(
    existing, name, argv, code, needle, capsys: pytest.CaptureFixture[str]
) -> None:
    run, cfg = existing
    before = _frame(run)
    got = main(argv(run, cfg))
    err = capsys.readouterr().err
    assert got == code, err
    assert needle in err, err
    assert err.startswith("butterfly: error: ") and err.count("\n") == 1 and "Traceback" not in err
    pd.testing.assert_frame_equal(_frame(run), before)


def test_read_only_output_folder(
    tmp_path: Path, existing, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = existing
    ro = tmp_path / "ro"
    _readonly(ro)
    try:
        code = main(["run", str(cfg), "--out", str(ro / "run")])
    finally:
        _unreadonly(ro)
    err = capsys.readouterr().err
    assert code == 1 and "permission denied" in err and "choose another --out" in err


def test_a_corrupted_parent_state_is_set_aside_and_trained_again_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(perturb={"times": [0.0, 0.5]}, eval={"activation_matching": False})
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "run"
    run_sweep(cfg, run, quiet=True)
    before = _frame(run)
    parent = run / "parents" / "seed0" / "step0000030.safetensors"
    for damage in ("truncated", "flipped bits"):
        # forget the t = 30 unit and damage the parent state it starts from
        with sqlite3.connect(run / "results.db") as c:
            c.execute("DELETE FROM units WHERE t = 30")
            c.execute("DELETE FROM results WHERE t = 30")
        raw = bytearray(parent.read_bytes())
        if damage == "truncated":
            raw = raw[:100]
        else:  # a silent corruption: a mantissa bit in the last tensor's data
            raw[-3] ^= 0x10
        parent.write_bytes(bytes(raw))
        from butterfly.checkpoint import damaged

        assert damaged(parent) is not None and ("corrupted" in damaged(parent))
        code = main(["run", str(cfg_file), "--out", str(run), "--workers", "1", "--quiet"])
        assert code == 0, capsys.readouterr().err
        assert (parent.with_name(parent.name + ".corrupt")).is_file() and damaged(parent) is None
        pd.testing.assert_frame_equal(_frame(run), before)  # retrained: the same bits


def test_progress_line_and_quiet_when_not_a_terminal() -> None:
    import io

    from butterfly.sweep.progress import Progress

    buf = io.StringIO()  # not a terminal: nothing is drawn
    p = Progress(4, 1, 300, 100, stream=buf)
    p.step(0, 0, 50)
    p.unit_done(0, 0, 100)
    assert buf.getvalue() == ""
    live = io.StringIO()
    now = [1000.0]
    p = Progress(4, 1, 300, 100, stream=live, enabled=True, clock=lambda: now[0])
    now[0] += 600.0  # ten minutes of start-up and parent training: not work, so no ETA yet
    p.step(0, 30, 31)
    line = p.line()
    assert line.startswith("units 1/4 [seed 0 t=30: 31/100]") and "ETA estimating" in line
    assert "elapsed 10:00" in line
    now[0] += 2.0
    p.step(0, 30, 40)  # 10 of 300 steps: too little to extrapolate
    assert "ETA estimating" in p.line()
    now[0] += 8.0
    p.step(0, 30, 65)  # 35 steps in 10 s since the first report: 265 left at 3.4 steps/s
    assert "ETA 1:15" in p.line()  # not the 2-hour figure the start-up time would give
    p.unit_done(0, 30, 70)
    assert "units 2/4" in live.getvalue()


def test_disk_errors_read_as_one_sentence() -> None:
    import errno

    from butterfly.cli import describe

    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/results.db")
    assert describe(full) == (
        "out of disk space writing /data/run/results.db; free some space or choose another --out"
    )
    denied = PermissionError(errno.EACCES, "Permission denied", "/ro/run")
    assert describe(denied) == "cannot write to /ro/run (permission denied); choose another --out"
