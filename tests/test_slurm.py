"""``--executor slurm`` on a real SLURM (scripts/slurm-local, started by the fixture): results
equal the local executor's bit for bit; an array cap splits the work; a cancelled task loses
only its unit, which is run again; ``--detach`` and a second run complete a sweep; ``butterfly
status`` names each unfinished unit's SLURM state; bad inputs are refused before anything is
submitted."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from butterfly.cli import main
from butterfly.experiment.rows import names
from butterfly.sweep import Store
from slurm_fixture import SlurmCluster

SWEEP = {
    "name": "slurm", "seeds": [0, 1],
    "data": {"name": "synthetic", "n_train": 256, "n_test": 64, "n_features": 12, "n_classes": 4},
    "model": {"name": "mlp", "width": 16, "depth": 2},
    "recipe": {"steps": 60, "batch_size": 32},
    "perturb": {"times": [0.0, 0.25, 0.5], "sigmas": [1e-2], "kinds": ["batch", "gaussian"]},
    "eval": {"trajectory_points": 4, "proxy_fractions": [0.0, 0.5]},
    "runtime": {"threads": 1, "slurm": {"poll": 0.5}},
}  # fmt: skip
TIMING = {"unit_wall_s", "wall_s", "finished"}


def config(tmp_path: Path, **changes: object) -> Path:
    raw = json.loads(json.dumps(SWEEP))
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / f"c{abs(hash(json.dumps(raw, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def on_slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """This process (and the tasks it submits) talk to the test cluster."""
    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    return slurm_cluster


def tables(run: Path) -> dict[str, pd.DataFrame]:
    with Store(run / "results.db") as s:
        out = {"results": s.results(), "trajectories": s.trajectories(),
               "proxy": s.permutation_proxy(), "training": s.training()}  # fmt: skip
    return {k: v[[c for c in v.columns if c not in TIMING]] for k, v in out.items()}


def assert_same(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ta:
        assert ta[name].equals(tb[name]), name
    assert len(ta["results"]) == 2 * 3 * 3  # 2 seeds x 3 times x (control + 2 children)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("local")
    out = tmp / "local"
    assert main(["run", str(config(tmp)), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    return out


def test_a_sweep_on_slurm_equals_the_local_executor_bit_for_bit(
    on_slurm: SlurmCluster, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "slurm"
    assert main(["run", str(config(tmp_path)), "--out", str(out), "--executor", "slurm",
                 "--quiet"]) == 0  # fmt: skip
    assert_same(local_run, out)
    # the tasks wrote result files; only this process wrote the store
    assert len(list((out / "slurm" / "done").glob("unit-*.json"))) == 6
    assert not list((out / "slurm" / "claims").iterdir())
    assert set(names("results")) - {"unit_wall_s"} <= set(tables(out)["results"].columns)


def test_an_array_cap_of_two_splits_the_work_and_completes(
    on_slurm: SlurmCluster, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "capped"
    cfg = config(tmp_path, **{"runtime.slurm.array_cap": 2, "runtime.slurm.units_per_task": 1})
    assert main(["run", str(cfg), "--out", str(out), "--executor", "slurm", "--quiet"]) == 0
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert all(j["tasks"] <= 2 for j in jobs) and sum(j["tasks"] for j in jobs) >= 8
    assert_same(local_run, out)


def test_a_cancelled_task_loses_only_its_unit_and_detach_then_run_completes(
    on_slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cancelled"
    long = {"recipe.steps": 3000, "perturb.times": [0.0, 0.5], "seeds": [0]}  # units of seconds
    cfg = config(tmp_path, **long, **{"runtime.slurm.units_per_task": 0})
    local = tmp_path / "local"
    assert main(["run", str(config(tmp_path, **long)), "--out", str(local), "--workers", "2",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["run", str(cfg), "--out", str(out), "--executor", "slurm", "--detach",
                 "--quiet"]) == 0  # fmt: skip
    assert "2 units are still with SLURM" in capsys.readouterr().out
    # butterfly status names where each unfinished unit is
    assert main(["status", str(out)]) in (0, 1)
    text = capsys.readouterr().out
    assert "SLURM: arrays" in text
    for t in (0, 1500):
        line = next(ln for ln in text.splitlines() if f"seed 0 t={t}:" in ln)
        assert "waiting for a task" in line or "task " in line
    # cancel the task that holds a unit, mid-unit
    claims = out / "slurm" / "claims"
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        held = [p for p in claims.glob("unit-*")] if claims.is_dir() else []
        if held:  # a claim is never seen empty (stop 34's CI read one between create and write)
            victim = (held[0].name, held[0].read_text().split()[0])
        else:
            time.sleep(0.2)
    assert victim is not None, "no task claimed a unit"
    key, job = victim
    subprocess.run(["scancel", job], env=on_slurm.subprocess_env(), check=True, timeout=60)
    assert not (out / "slurm" / "done" / f"{key}.json").is_file()  # cancelled mid-unit
    assert main(["run", str(cfg), "--out", str(out), "--executor", "slurm", "--quiet"]) == 0
    lost = [json.loads(p.read_text()) for p in (out / "slurm" / "lost").glob(f"{key}.*.json")]
    assert len(lost) == 1 and lost[0]["job"] == job
    assert "cancelled" in lost[0]["why"] or "stopped by SLURM" in lost[0]["why"]
    ta, tb = tables(local), tables(out)  # nothing lost, nothing twice, bit for bit
    for name in ta:
        assert ta[name].equals(tb[name]), name
    with Store(out / "results.db") as s:
        assert len(s.units()) == 2


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({"runtime.slurm.partition": "nosuch"}, "runtime.slurm.partition = nosuch is not a partition"),
        ({"runtime.slurm.time": "abc"}, "runtime.slurm.time 'abc' is not a SLURM time limit"),
        ({"runtime.slurm.gpus_per_task": 1}, "runtime.slurm.gpus_per_task = 1, but the default "
         "partition has no GPUs"),
        ({"runtime.slurm.partition": "short", "runtime.slurm.gpus_per_task": 2},
         "but short has no GPUs"),
    ],
)  # fmt: skip
def test_bad_slurm_inputs_are_refused_before_anything_is_submitted(
    on_slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict,
    sentence: str,
) -> None:  # fmt: skip
    out = tmp_path / "bad"
    assert main(["run", str(config(tmp_path, **changes)), "--out", str(out), "--executor",
                 "slurm"]) == 2  # fmt: skip
    assert sentence in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_no_slurm_on_this_machine_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    out = tmp_path / "none"
    assert main(["run", str(config(tmp_path)), "--out", str(out), "--executor", "slurm"]) == 2
    assert "--executor slurm needs SLURM's sbatch and squeue on this machine's PATH" in \
        " ".join(capsys.readouterr().err.split())  # fmt: skip
    assert not out.exists()
    assert os.environ["PATH"] == str(tmp_path)


def _race(path: str, job: str, go: float) -> bool:
    from butterfly.sweep.slurm import claim

    while time.time() < go:
        pass
    return claim(Path(path), job)


def test_racing_tasks_claim_a_unit_once_and_a_claim_is_never_seen_empty(tmp_path: Path) -> None:
    """Claims are created whole: ``status`` and the reaper never read a claim still empty."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import threading

    from butterfly.sweep.slurm import holder

    with cf.ProcessPoolExecutor(4, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_race, [str(tmp_path / "warm-up")] * 4, ["0"] * 4, [0.0] * 4))
        for round_ in range(20):
            path = tmp_path / f"unit-{round_}"
            seen: list[str | None] = []
            stop = threading.Event()

            def watch(path: Path = path, seen: list[str | None] = seen,
                      stop: threading.Event = stop) -> None:  # fmt: skip
                while not stop.is_set():
                    if path.exists():
                        seen.append(holder(path))

            watcher = threading.Thread(target=watch)
            watcher.start()
            go = time.time() + 0.1
            won = list(pool.map(_race, [str(path)] * 4, [f"{100 + i}" for i in range(4)],
                                [go] * 4))  # fmt: skip
            stop.set()
            watcher.join()
            assert sum(won) == 1
            assert holder(path) == f"{100 + won.index(True)}"
            assert None not in seen
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
