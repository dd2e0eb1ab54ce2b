"""Fault injection: killed drivers and workers, SIGTERM, a full disk, a damaged store, untrusted
files, and a table of bad inputs. Nothing finished is lost, no process outlives its driver,
every failure is one sentence."""

from __future__ import annotations

import os
import pickle
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
from butterfly.experiment.rows import names
from butterfly.sweep import Store, run_sweep
from butterfly.sweep.lock import is_locked
from conftest import tiny_config

COMPARED = [c for c in names("results") if c != "unit_wall_s"]
ROOT = Path(__file__).parent.parent


def _slow_config(**over: object):
    """Four units of a second or two each, two seeds: long enough to be killed part way."""
    return tiny_config(
        seeds=[0, 1], recipe={"steps": 900}, perturb={"times": [0.0, 0.25, 0.5, 0.75]},
        eval={"activation_matching": False}, **over,
    )  # fmt: skip


def _frame(run: Path) -> pd.DataFrame:
    with Store(run / "results.db") as s:
        return s.results()[COMPARED].sort_values(["seed", "t", "member"]).reset_index(drop=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(cfg_file: Path, out: Path, workers: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "butterfly.cli", "run", str(cfg_file), "--out", str(out),
           "--quiet", "--workers", str(workers)]  # fmt: skip
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before the fault: {proc.stderr.read()[-2000:]}")
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the sweep to reach the fault point")


def _units_done(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _workers_of(proc: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
        if len(kids) >= 2:
            return kids
        time.sleep(0.05)
    raise AssertionError("no worker processes found")


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _files(run: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "clean"
    run_sweep(_slow_config(), out, workers=2, quiet=True)
    return out


@pytest.mark.parametrize("point", ["during the parents", "after the first unit"])
def test_sigkill_of_the_driver_leaves_no_orphan_and_resumes_bit_exactly(
    point: str, tmp_path: Path, clean: Path
) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(_slow_config().to_dict()))
    run = tmp_path / "run"
    proc = _start(cfg_file, run)
    workers = _workers_of(proc)
    if point == "during the parents":
        _wait_for(lambda: any((run / "parents").rglob("*.safetensors")), proc)
    else:
        _wait_for(lambda: _units_done(run / "results.db") >= 1, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must notice by themselves
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a worker outlived its driver"
    assert not is_locked(run)
    snapshot = _files(run)
    time.sleep(1.0)
    assert _files(run) == snapshot, "something wrote into the run folder after the driver died"
    resumed = _start(cfg_file, run)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    with sqlite3.connect(run / "results.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    pd.testing.assert_frame_equal(_frame(run), _frame(clean), check_exact=True)


def test_sigkill_of_one_worker_restarts_the_pool_and_loses_nothing(
    tmp_path: Path, clean: Path
) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(_slow_config().to_dict()))
    run = tmp_path / "run"
    proc = _start(cfg_file, run)
    workers = _workers_of(proc)
    _wait_for(lambda: _units_done(run / "results.db") >= 1, proc)
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    with Store(run / "results.db") as s:
        failures = s.failures()
        assert len(failures) == 0, failures.to_string()
        assert len(s.finished_units()) == 8
    pd.testing.assert_frame_equal(_frame(run), _frame(clean), check_exact=True)


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path, clean: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(_slow_config().to_dict()))
    run = tmp_path / "run"
    proc = _start(cfg_file, run)
    workers = _workers_of(proc)
    _wait_for(lambda: _units_done(run / "results.db") >= 1, proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == (
        "butterfly: terminated (SIGTERM); finished units are saved, run the same command to resume"
    )
    assert "Traceback" not in err and not is_locked(run)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)
    assert main(["run", str(cfg_file), "--out", str(run), "--quiet", "--workers", "2"]) == 0
    pd.testing.assert_frame_equal(_frame(run), _frame(clean), check_exact=True)


def test_a_damaged_store_is_named_and_repaired_from_the_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(perturb={"times": [0.0, 0.5]})
    run = tmp_path / "run"
    run_sweep(cfg, run, quiet=True)
    before = _frame(run)
    db = run / "results.db"
    raw = bytearray(db.read_bytes())
    page = 4096
    for i in range(page, len(raw) - 16, 97):  # scramble every page but the header
        raw[i] ^= 0x5A
    db.write_bytes(bytes(raw))
    assert main(["status", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{db} is damaged" in err
    assert f"butterfly repair {run}" in err and "Traceback" not in err
    assert main(["repair", str(run)]) == 0
    out = capsys.readouterr().out
    assert "moved the damaged store aside" in out and "measured 2 units again" in out
    assert "determinism check: all" in out and "exactly" in out
    pd.testing.assert_frame_equal(_frame(run), before, check_exact=True)
    assert list(run.glob("results.db.damaged-*"))
    assert main(["repair", str(run)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert main(["status", str(run)]) == 0


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def test_a_full_disk_is_one_sentence_and_leaves_no_temporary_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "600k"):
        pytest.skip("a small tmpfs needs root and mount")
    try:
        cfg = tiny_config(perturb={"times": [0.0, 0.25, 0.5, 0.75], "sigmas": [1e-3, 1e-2, 1e-1]})
        cfg_file = tmp_path / "c.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
        code = main(["run", str(cfg_file), "--out", str(disk / "run"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and "out of disk space" in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert not list(disk.rglob("*.tmp")), "a temporary file was left behind"
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_read_only_file_system_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("a read-only tmpfs needs root and mount")
    try:
        cfg_file = tmp_path / "c.yaml"
        cfg_file.write_text(yaml.safe_dump(tiny_config().to_dict()))
        code = main(["run", str(cfg_file), "--out", str(disk / "run"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and "file system is read-only" in err and len(err.splitlines()) == 1
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_malicious_cifar_pickle_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cifar"
    root.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps({**good, b"x": Evil()} if i == 1
                                                            else good))  # fmt: skip
    (root / "test_batch").write_bytes(pickle.dumps(good))
    out = tmp_path / "out"
    code = main(["run", "--set", "data.name=cifar10", "--set", f"data.path={root}", "--out",
                 str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists() and not out.exists()
    assert "data_batch_1 is not a plain CIFAR pickle: it asks to load posix.system" in err
    assert len(err.splitlines()) == 1


def test_an_alias_bomb_is_refused_within_a_second(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]  # fmt: skip
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nname: *a8\n")
    assert len(bomb.read_bytes()) < 1000
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "butterfly.cli", "run", str(bomb), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "aliases (*name) are not allowed" in proc.stderr
    assert time.monotonic() - start < 60  # the process start dominates; the refusal is instant
    from butterfly.config import ConfigError, load_config

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="aliases"):
        load_config(bomb)
    assert time.monotonic() - t0 < 1.0


def test_status_explains_a_failed_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run_sweep(tiny_config(), run, quiet=True)
    with Store(run / "results.db") as s:
        s.conn.execute("DELETE FROM units")
        s.conn.commit()
        s.record_failure(0, None, "FloatingPointError: the parent diverged", time.time())
    assert main(["status", str(run)]) == 1
    out = capsys.readouterr().out
    assert "  seed 0 (parent): FloatingPointError: the parent diverged" in out


# ---- bad inputs: exit 2, one sentence, nothing written ---------------------------------------


def _cifar(root: Path, bad: str | None = None) -> Path:
    root.mkdir()
    good = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    for i in range(1, 6):
        d = {b"pixels": good[b"data"]} if bad == "keys" and i == 1 else good
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(d))
    (root / "test_batch").write_bytes(pickle.dumps(good if bad != "list" else [1, 2]))
    return root


BAD_SETS: list[tuple[list[str], str]] = [
    (["recipe.stpes=300"], "unknown config key 'recipe.stpes'"),
    (["recipe.steps=true"], "recipe.steps"),
    (["recipe.steps=3000.5"], "recipe.steps"),
    (["recipe.lr=.inf"], "finite number"),
    (["recipe.lr=.nan"], "finite number"),
    (["recipe.lr=-0.1"], "recipe.lr"),
    (["seeds=[99999999999999999999999]"], "does not fit in 64 bits"),
    (["recipe.steps=1000000000"], "recipe.steps"),
    (["runtime.device=bogus"], "runtime.device must be cpu, cuda, cuda:N or auto"),
    (["runtime.device=cuda:7"], "runtime.device = cuda:7 (runtime.gpus = None), but this machine has"),
    (["runtime.device=cuda", "runtime.gpus=2"], "(runtime.gpus = 2), but this machine has"),
    (["runtime.gpus=2"], "runtime.gpus = 2 needs CUDA, but runtime.device = cpu"),
    (["perturb.batch_size=100000"], "perturb.batch_size = 100000 exceeds the 4000 training"),
    (["recipe.batch_size=100000"], "recipe.batch_size = 100000 exceeds"),
    (["name=../../x"], "must be one folder name"),
    (["name=a/b/c"], "must be one folder name"),
    (["name=has space"], "must be one folder name"),
    (["perturb.sigmas=[-1e-3]"], "perturb.sigmas must be positive"),
    (["perturb.sigmas=[]"], "perturb.sigmas is empty"),
    (["perturb.times=[1.5]"], "perturb.times are fractions of T"),
    (["perturb.steps=[5000]"], "perturb.steps contains 5000"),
    (["perturb.kinds=[uniform]"], "perturb.kinds"),
    (["perturb.fractions=[0.0]"], "perturb.fractions must lie in (0, 1]"),
    (["seeds=[]"], "seeds is empty"),
    (["seeds=[1, 1]"], "seeds has duplicates"),
    (["model.name=resnet", "model.depth=10"], "6n+2"),
    (["model.name=transformer"], "model.name must be one of"),
    (["data.name=imagenet"], "data.name must be one of"),
    (["runtime.mode=jit"], "runtime.mode"),
    (["runtime.mode=batched", "model.name=cnn"], "runtime.mode = batched is for MLPs"),
    (["model.name=hf"], "model.path is required for model.name = hf"),
    (["data.name=cifar10"], "data.path is required for cifar10"),
    (["data.name=cifar10", "data.path=/no/such/folder"], "folder /no/such/folder does not exist"),
    (["data.classes=[0]"], "data.classes needs at least 2 distinct"),
    (["data.classes=[0, 99]"], "data.classes [99] do not exist"),
    (["model.init_from=/no/such.safetensors"], "does not exist"),
    (["model.name=no_such_pkg.mod:Net"], "cannot be imported"),
    (["data.name=sentiment"], "needs model.name = hf"),
    (["model.name=vit", "model.width=10", "model.heads=3"], "divisible"),
    (["eval.alphas=2"], "eval.alphas"),
    (["recipe.betas=[1.5, 0.9]"], "recipe.betas must both lie in [0, 1)"),
    (["pretrain.checkpoints=[0, 99999]"], "pretrain.checkpoints contains 99999"),
    (["runtime.workers=-2"], "runtime.workers"),
    (["eval.cka_examples=2"], "eval.cka_examples"),
    (["recipe.grad_clip=0"], "recipe.grad_clip"),
    (["perturb.directions=0"], "perturb.directions"),
]


def _run_bad(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = tmp_path / "out"
    before = set(tmp_path.rglob("*"))
    code = main([*argv, "--out", str(out)] if argv[0] == "run" else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("butterfly: error: "), err
    assert "Traceback" not in err
    assert not out.exists() and set(tmp_path.rglob("*")) == before, "something was written"
    return err


@pytest.mark.parametrize(("sets", "needle"), BAD_SETS, ids=[" ".join(s) for s, _ in BAD_SETS])
def test_bad_set_values_exit_2_with_one_sentence_and_write_nothing(
    sets: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run"] + [x for s in sets for x in ("--set", s)]
    assert needle in _run_bad(argv, tmp_path, capsys)


BAD_FILES: list[tuple[str, str, str]] = [
    ("dup.yaml", "recipe:\n  lr: 0.1\n  lr: 0.2\n", "found duplicate key 'lr'"),
    ("alias.yaml", "a: &x 1\nseeds: [*x]\n", "aliases (*name) are not allowed"),
    ("syntax.yaml", "recipe: [unclosed\n", "is not valid YAML"),
    ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
    ("string.yaml", "recipe:\n  steps: '300'\n", "recipe.steps"),
    ("extends.yaml", "extends: no-such-preset\n", "does not exist"),
]


@pytest.mark.parametrize(("name", "text", "needle"), BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_bad_config_files_exit_2(
    name: str, text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    assert needle in _run_bad(["run", str(cfg)], tmp_path, capsys)


def test_more_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert "is a folder" in _run_bad(["run", str(folder)], tmp_path, capsys)
    assert "does not exist" in _run_bad(["run", str(tmp_path / "missing.yaml")], tmp_path, capsys)
    assert "--set expects KEY=VALUE" in _run_bad(["run", "--set", "recipe.lr"], tmp_path, capsys)
    assert "--workers must be >= 0" in _run_bad(["run", "--workers", "-1"], tmp_path, capsys)
    not_st = tmp_path / "not.safetensors"
    not_st.write_bytes(b"\x00" * 64)
    err = _run_bad(["run", "--set", f"model.init_from={not_st}"], tmp_path, capsys)
    assert f"{not_st}" in err and "corrupted or unreadable" in err
    keys = _cifar(tmp_path / "keys", bad="keys")
    err = _run_bad(["run", "--set", "data.name=cifar10", "--set", f"data.path={keys}"], tmp_path,
                   capsys)  # fmt: skip
    assert "data_batch_1 lacks the CIFAR keys 'data' and 'labels'" in err
    lst = _cifar(tmp_path / "list", bad="list")
    err = _run_bad(["run", "--set", "data.name=cifar10", "--set", f"data.path={lst}"], tmp_path,
                   capsys)  # fmt: skip
    assert "test_batch holds a list, not the dict of a CIFAR batch" in err
    err = _run_bad(["run", "--executor", "ray", "--address", "127.0.0.1:1"], tmp_path, capsys)
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in err or "needs Ray" in err
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    err = _run_bad(["run", "--set", "data.name=mnist", "--set", f"data.path={mnist}"], tmp_path,
                   capsys)  # fmt: skip
    assert "is missing from the MNIST folder" in err


def test_the_bad_input_table_is_large() -> None:
    assert len(BAD_SETS) + len(BAD_FILES) + 9 >= 40
