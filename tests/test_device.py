"""Paper scale, tested on a CPU: member chunks equal one population, an out-of-memory error is
retried with smaller chunks, the projection of --dry-run, GPU pinning, the training loop makes
no host round trip."""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from butterfly.cli import main
from butterfly.experiment.rows import names
from butterfly.sweep import Store, run_sweep
from conftest import tiny_config

COMPARED = [c for c in names("results") if c != "unit_wall_s"]


def _frame(run: Path, table: str = "results") -> pd.DataFrame:
    with Store(run / "results.db") as s:
        df = s.results() if table == "results" else s.trajectories()
    keys = ["seed", "t", "member"] + (["step"] if table != "results" else [])
    cols = COMPARED if table == "results" else list(df.columns)
    return df[cols].sort_values(keys).reset_index(drop=True)


def _cfg(**runtime: object):
    return tiny_config(
        perturb={"times": [0.0, 0.5], "sigmas": [1e-3, 1e-2, 1e-1], "kinds": ["batch", "gaussian"]},
        runtime={"workers": 1, **runtime},
    )


def test_member_chunks_give_the_same_bits_as_one_population(tmp_path: Path) -> None:
    whole = run_sweep(_cfg(), tmp_path / "whole", quiet=True)
    chunked = run_sweep(_cfg(max_population=2), tmp_path / "chunked", quiet=True)
    assert chunked.control_ok
    pd.testing.assert_frame_equal(_frame(tmp_path / "chunked"), _frame(tmp_path / "whole"),
                                  check_exact=True)  # fmt: skip
    pd.testing.assert_frame_equal(_frame(tmp_path / "chunked", "trajectories"),
                                  _frame(tmp_path / "whole", "trajectories"), check_exact=True)  # fmt: skip
    # each chunk trains its own original and control: 3 chunks of 2 children -> 3x
    with Store(tmp_path / "chunked" / "results.db") as s:
        more = s.units().steps.sum()
    assert more > whole.steps - 60 * 2  # and the extra work is counted


def test_an_out_of_memory_error_halves_the_chunks_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from butterfly.train import population

    real = population.PopulationTrainer.train_lanes
    sizes: list[int] = []

    def small_device(self, lanes, *args, **kwargs):  # type: ignore[no-untyped-def]
        size = sum(lane.pop.size for lane in lanes)
        sizes.append(size)
        if size > 4:  # as if the device held 4 members at most
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, lanes, *args, **kwargs)

    monkeypatch.setattr(population.PopulationTrainer, "train_lanes", small_device)
    out = run_sweep(_cfg(max_population=6), tmp_path / "oom", quiet=True)
    monkeypatch.undo()
    assert out.control_ok and max(sizes) > 4 and any(s <= 4 for s in sizes)
    run_sweep(_cfg(), tmp_path / "whole", quiet=True)
    pd.testing.assert_frame_equal(_frame(tmp_path / "oom"), _frame(tmp_path / "whole"),
                                  check_exact=True)  # fmt: skip


def test_dry_run_prints_the_plan_and_a_projection_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from butterfly.sweep.plan import minimum_steps

    cfg = _cfg()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert set(tmp_path.rglob("*")) == before  # no run folder, nothing
    assert out[0].startswith("plan: 1 seed, one original each (60 steps, joined at every t), "
                             "2 population units of 8 members, "
                             f"{minimum_steps(cfg):,} member-steps, 14 children measured")  # fmt: skip
    assert out[1].startswith("timed on cpu (10 real steps each): P = 1: ") and "P = 8: " in out[1]
    assert out[2].startswith("projected wall time with 1 worker: ")
    assert out[-1] == "parameters: weights 3 tensors / 512 numbers; biases 3 tensors / 36 numbers"


def test_each_worker_is_pinned_to_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing as mp

    from butterfly.sweep import worker

    counter = mp.get_context("spawn").Value("i", 0)
    seen = []
    monkeypatch.setattr(worker.threading, "Thread", lambda **kw: type("T", (), {"start": lambda s: None})())
    for _ in range(5):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        worker.init_worker(1, os.getppid(), None, False, 2, counter)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    monkeypatch.setattr(worker, "_driver", None)
    assert seen == ["0", "1", "0", "1", "0"]  # round robin, even after a pool restart


def test_the_training_loop_makes_no_host_round_trip() -> None:
    from butterfly.train.population import PopulationTrainer
    from butterfly.train.recipe import apply_update, clip_per_member

    for fn in (PopulationTrainer.train_lanes, apply_update, clip_per_member):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        calls = [
            n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)
        ]  # fmt: skip
        for sync in ("item", "cpu", "tolist", "numpy", "float", "int", "bool"):
            assert sync not in calls, f"{fn.__qualname__} calls {sync}() every step"


def test_auto_runs_on_cuda_when_present_and_records_its_precision(tmp_path: Path) -> None:
    from butterfly.experiment.resolve import concrete_device

    assert concrete_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    out = run_sweep(tiny_config(runtime={"device": "auto", "workers": 1}), tmp_path / "a",
                    quiet=True)  # fmt: skip
    with Store(out.run_dir / "results.db") as s:
        env = s.get_meta("environment")
    assert env["device"] == concrete_device("auto") and env["precision"] == "float32"
    assert env["deterministic"] is True
