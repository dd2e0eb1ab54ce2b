"""The Ray executor on a local Ray cluster started by the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    pool = RayExecutor(tiny_config(), 2, None)
    fut = pool.submit(_crash_once, str(tmp_path / "marker"))
    assert fut.result(timeout=120) == "done"
    pool.shutdown()
