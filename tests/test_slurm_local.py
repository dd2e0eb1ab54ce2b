"""The local SLURM of scripts/slurm-local works: a job array runs, writes its files, and is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_fixture import SlurmCluster, skip_or_fail, why_slurm_cannot_run


def test_array_job_runs_and_is_recorded(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = f'echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_JOB_ID" > {tmp_path}/task-$SLURM_ARRAY_TASK_ID.txt'
    submitted = slurm_cluster.run(
        "sbatch",
        "--parsable",
        "--array=0-2",
        f"--output={tmp_path}/slurm-%A_%a.out",
        "--wrap",
        script,
    )
    job_id = submitted.stdout.strip()
    assert job_id.isdigit(), submitted.stdout  # --parsable prints the array job id alone
    slurm_cluster.wait_gone(job_id, timeout=60)

    for task in range(3):
        assert (tmp_path / f"task-{task}.txt").read_text().split() == [str(task), job_id]
    states = {
        int(r["ArrayTaskId"]): r["JobState"]
        for r in slurm_cluster.jobcomp_records()
        if r.get("ArrayJobId") == job_id
    }
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}


def test_unknown_partition_is_refused(slurm_cluster: SlurmCluster) -> None:
    refused = slurm_cluster.run("sbatch", "--partition", "nosuch", "--wrap", "true", check=False)
    assert refused.returncode != 0
    assert "invalid partition" in refused.stderr.lower()
    # both partitions exist and neither has GPUs (sinfo prints "(null)" for no GRES)
    assert slurm_cluster.run("sinfo", "-h", "-p", "short", "-o", "%G").stdout.split() == ["(null)"]


def test_cannot_run_reasons() -> None:
    def nothing(name: str) -> str | None:
        return None

    def everything(name: str) -> str | None:
        return f"/usr/bin/{name}"

    assert "needs root" in (why_slurm_cannot_run(1000, nothing) or "")
    assert "needs root" in (why_slurm_cannot_run(1000, everything) or "")
    assert "no apt-get" in (why_slurm_cannot_run(0, nothing) or "")
    assert why_slurm_cannot_run(0, everything) is None
    assert (
        why_slurm_cannot_run(0, lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
        is None
    )


def test_ci_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        skip_or_fail("no SLURM")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no SLURM"):
        skip_or_fail("no SLURM")
