"""A real single-node SLURM for tests: the session fixture ``slurm_cluster``.

It runs ``scripts/slurm-local install`` (only when SLURM is missing and we are root with apt-get) and
``scripts/slurm-local start`` on a fresh state directory and free ports, yields a ``SlurmCluster`` and
stops the cluster (and removes its state directory) at the end of the session.

Import the fixture once, in tests/conftest.py, so that all test modules share one cluster (each module
that imports it itself gets its own session fixture, so its own cluster):

    from slurm_fixture import slurm_cluster  # noqa: F401      (in tests/conftest.py)

    def test_x(slurm_cluster: SlurmCluster) -> None:
        slurm_cluster.run("sbatch", "--parsable", "--wrap", "true")   # or env=slurm_cluster.subprocess_env()

It skips only where SLURM cannot run here (not root: slurmd must be root; or SLURM missing and no
apt-get to install it) and fails instead of skipping when the environment variable CI is "true".
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"
# what `scripts/slurm-local start` needs on PATH (it checks a few more client commands)
NEEDED = ("sbatch", "slurmctld", "slurmd", "munged")

_FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|\s*$)")


@dataclass(frozen=True)
class SlurmCluster:
    """A running local cluster. Pass ``env`` (or ``subprocess_env()``) to every SLURM command."""

    state_dir: Path
    env: dict[str, str]  # SLURM_CONF=<state_dir>/slurm.conf

    @property
    def jobcomp(self) -> Path:
        """The job-completion log: one line per finished job run (also one per requeue)."""
        return self.state_dir / "jobcomp.txt"

    def subprocess_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a SLURM command (sbatch, squeue, ...) against this cluster; text output captured."""
        return subprocess.run(
            list(args),
            env=self.subprocess_env(),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def jobcomp_records(self) -> list[dict[str, str]]:
        """The job-completion log parsed: one dict per line (JobId, JobState, ArrayJobId, ArrayTaskId, ...)."""
        if not self.jobcomp.exists():
            return []
        return [
            dict(_FIELD.findall(line.strip()))
            for line in self.jobcomp.read_text().splitlines()
            if line.strip()
        ]

    def wait_gone(self, job_id: str, timeout: float = 60) -> None:
        """Wait until the job (an array: all its tasks) is no longer pending, running or completing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-j", job_id, "-o", "%i", check=False).stdout
            if not out.strip():
                return
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still in squeue after {timeout} s")


def why_slurm_cannot_run(
    euid: int, which: Callable[[str], str | None] = shutil.which
) -> str | None:
    """None where scripts/slurm-local can install (if needed) and start SLURM here, else the reason."""
    missing = [name for name in NEEDED if which(name) is None]
    if euid != 0:
        if missing:
            return f"SLURM is not installed ({', '.join(missing)} missing) and installing it needs root"
        return "starting SLURM needs root (slurmd must run as root) and this is not root"
    if missing and which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get to install it"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it when CI=true: CI must run the SLURM tests."""
    if os.environ.get("CI", "").lower() in {"true", "1"}:
        pytest.fail(f"CI=true but SLURM cannot run here: {reason}", pytrace=False)
    pytest.skip(f"SLURM cannot run here: {reason}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = why_slurm_cannot_run(os.geteuid())
    if reason is not None:
        skip_or_fail(reason)
    env = dict(os.environ)
    if any(shutil.which(name) is None for name in NEEDED):
        done = _script("install", env=env, timeout=900)
        if done.returncode != 0:
            pytest.fail(
                f"scripts/slurm-local install failed:\n{done.stdout}{done.stderr}", pytrace=False
            )
    # a fresh state directory and free ports: independent of any other cluster on this machine
    state_dir = Path(tempfile.mkdtemp(prefix="butterfly-slurm-", dir="/tmp"))
    ctld_port = _free_port()
    slurmd_port = _free_port()
    while slurmd_port == ctld_port:
        slurmd_port = _free_port()
    env["SLURM_LOCAL_CTLD_PORT"] = str(ctld_port)
    env["SLURM_LOCAL_SLURMD_PORT"] = str(slurmd_port)
    started = _script("start", str(state_dir), env=env, timeout=180)
    if started.returncode != 0:
        _script("stop", str(state_dir), env=env, timeout=120)
        pytest.fail(
            f"scripts/slurm-local start failed (state in {state_dir}):\n{started.stdout}{started.stderr}",
            pytrace=False,
        )
    try:
        yield SlurmCluster(state_dir=state_dir, env={"SLURM_CONF": str(state_dir / "slurm.conf")})
    finally:
        stopped = _script("stop", str(state_dir), env=env, timeout=120)
        if stopped.returncode == 0:
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            # leave the state (logs) for a look; the test run still reports the failure
            raise RuntimeError(
                f"scripts/slurm-local stop failed (state kept in {state_dir}):\n{stopped.stderr}"
            )
