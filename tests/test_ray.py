"""The Ray executor on a local Ray cluster started by the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from butterfly.experiment.resolve import resolve
from butterfly.experiment.rows import names
from butterfly.sweep import run_sweep
from butterfly.sweep.executors import RayExecutor
from conftest import tiny_config

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'butterfly[ray]')")


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    here = str(Path(__file__).parent)  # so workers can import this module's helper
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )  # fmt: skip
    yield
    ray.shutdown()


def _crash_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies, as if its machine were lost
    return "done"


def test_ray_results_equal_local(cluster, tmp_path: Path) -> None:
    cfg = tiny_config(eval={"activation_matching": False})
    with_ray = run_sweep(cfg, tmp_path / "ray", workers=2, executor="ray", quiet=True)
    local = run_sweep(cfg, tmp_path / "local", workers=2, quiet=True)
    cols = [c for c in names("results") if c != "unit_wall_s"]
    assert len(with_ray.results) == 10 and with_ray.control_ok
    assert with_ray.results[cols].equals(local.results[cols])


def test_lost_workers_are_retried(cluster, tmp_path: Path) -> None:
    pool = RayExecutor(resolve(tiny_config(), check=False), 2, None)
    fut = pool.submit(_crash_once, str(tmp_path / "marker"))
    assert fut.result(timeout=120) == "done"
    pool.shutdown()


def _assigned() -> dict:
    return dict(ray.get_runtime_context().get_assigned_resources())


def test_units_ask_ray_for_the_runtime_resources(cluster) -> None:
    from butterfly.sweep.executors import ray_resources

    cpu = tiny_config()
    assert ray_resources(resolve(cpu, check=False)) == {"num_cpus": 1.0, "num_gpus": 0.0}  # no GPU asked on CPU
    gpu = tiny_config(runtime={"device": "cuda", "workers": 1})
    assert ray_resources(resolve(gpu, check=False)) == {"num_cpus": 1.0, "num_gpus": 1.0}  # one unit per GPU
    two = tiny_config(runtime={"ray_cpus": 2, "ray_gpus": 0.5, "workers": 1})
    assert ray_resources(resolve(two, check=False)) == {"num_cpus": 2.0, "num_gpus": 0.5}
    pool = RayExecutor(resolve(cpu, check=False), 2, None)
    got = pool.submit(_assigned).result(timeout=120)
    assert got.get("CPU") == 1.0 and not got.get("GPU")  # what the task was given
    assert pool.slots == 2  # 2 CPUs in the cluster, 1 per unit
    pool.shutdown()
    wide = RayExecutor(resolve(tiny_config(runtime={"ray_cpus": 2, "workers": 1}), check=False),
                       2, None)
    assert wide.submit(_assigned).result(timeout=120).get("CPU") == 2.0 and wide.slots == 1
    wide.shutdown()


def test_a_threshold_search_runs_on_ray_as_locally(cluster, tmp_path: Path) -> None:
    from butterfly.config import build_config
    from butterfly.sweep import Store
    from butterfly.sweep.pipelines import run_pipeline
    from butterfly.sweep.pipelines.threshold import LEAN_EVAL

    raw = {**tiny_config().to_dict(), "eval": LEAN_EVAL,
           "threshold": {"eps": 0.001, "per_round": 3, "resolution": 2.0}}  # fmt: skip
    cfg = build_config(raw)
    run_pipeline(cfg, tmp_path / "ray", workers=2, executor="ray", quiet=True)
    run_pipeline(cfg, tmp_path / "local", workers=2, quiet=True)
    frames = []
    for d in ("ray", "local"):
        with Store(tmp_path / d / "results.db") as s:
            frames.append(s.thresholds())
    cols = ["seed", "kind", "at", "status", "estimate", "lo", "hi", "rounds"]
    assert frames[0][cols].equals(frames[1][cols])
