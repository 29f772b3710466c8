"""The Slurm batch templates, run for real on a private one-node Slurm cluster.

The cluster (``tests/slurm_cluster.py``) needs root and starts its own munged,
slurmctld and slurmd (free ports, a temporary directory, stopped afterwards).
Installing Slurm is a side effect nobody should get by running the tests: only in
CI (``CI=true``) or when asked (``MPIBENCH_TEST_SLURM=1``) are ``slurm-wlm`` and
``munge`` installed with apt-get when missing; otherwise the tests run where Slurm
is already installed and skip, with the reason, elsewhere. ``MPIBENCH_TEST_SLURM=0``
skips them always.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import OneNodeSlurm, SbatchResult  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MiB = 1024**2
RANKS = 4

pytestmark = pytest.mark.slurm


def _mpi_rank() -> int:
    """This process's rank when pytest itself runs under an MPI launcher, else 0."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _skip_unless_usable() -> None:
    if _mpi_rank() != 0:
        pytest.skip("Slurm tests run on rank 0 only when pytest runs under mpiexec")
    asked = os.environ.get("MPIBENCH_TEST_SLURM", "")
    if asked == "0":
        pytest.skip("MPIBENCH_TEST_SLURM=0: the real-Slurm tests are not wanted")
    may_install = asked == "1" or os.environ.get("CI", "").lower() == "true"
    reason = OneNodeSlurm.unavailable_reason(install=may_install)
    if reason is not None and not may_install:
        pytest.skip(f"cannot run a private Slurm cluster: {reason}; Slurm is installed only in CI "
                    "(CI=true) or with MPIBENCH_TEST_SLURM=1 (as root: apt-get install slurm-wlm munge)")
    if reason is not None:
        pytest.skip(f"cannot run a private Slurm cluster: {reason}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[OneNodeSlurm]:
    """One private cluster for the whole module; stopped (daemons and dir) afterwards."""
    _skip_unless_usable()
    with OneNodeSlurm(cpus=8) as slurm:
        yield slurm
    assert not slurm.running


def _job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Job environment: this interpreter's bin dir first on PATH, MPICH's pmi2 for srun."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "SLURM_MPI_TYPE": "pmi2",  # PyPI's mpich wheel speaks PMI-2
    }
    if shutil.which("mpibench", path=venv_bin) is None:
        # mpibench not pip-installed here: run it from the source tree instead.
        env["MPIBENCH_PYTHON"] = sys.executable
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
    env.update(extra or {})
    return env


def _explain(result: SbatchResult, workdir: Path, cluster: OneNodeSlurm) -> str:
    """Everything useful when a job failed: sbatch output, job logs, daemon logs."""
    logs = []
    for path in sorted(workdir.glob("*.out")):
        logs.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
    return (
        f"sbatch rc={result.returncode} job={result.job_id}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}\n"
        + "\n".join(logs)
        + "\n"
        + cluster.log_tails(20)
    )


def _find_key(tree: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in nested dicts/lists."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        children = list(tree.values())
    elif isinstance(tree, list):
        children = tree
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


@pytest.mark.timeout(300)
def test_cluster_runs_a_4_rank_mpi4py_job(cluster: OneNodeSlurm, tmp_path: Path) -> None:
    """The harness itself: srun (pmi2 from SLURM_MPI_TYPE) wires up a 4-rank MPI world."""
    script = tmp_path / "hello.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --job-name=hello\n"
        "#SBATCH --output=hello-%j.out\n"
        "set -euo pipefail\n"
        f'srun {sys.executable} -c "from mpi4py import MPI; c = MPI.COMM_WORLD; '
        "print('rank', c.Get_rank(), 'of', c.Get_size(), flush=True)\"\n"
    )
    result = cluster.sbatch_wait(
        script,
        env=_job_env(),
        timeout=240,
        sbatch_options=[f"--ntasks={RANKS}", "--nodes=1", f"--chdir={tmp_path}"],
    )
    assert result.returncode == 0, _explain(result, tmp_path, cluster)
    assert result.job_id is not None
    lines = (tmp_path / f"hello-{result.job_id}.out").read_text().split("\n")
    seen = sorted(line for line in lines if line.startswith("rank "))
    assert seen == [f"rank {r} of {RANKS}" for r in range(RANKS)]


@pytest.mark.timeout(600)
def test_bandwidth_sbatch_template(cluster: OneNodeSlurm, tmp_path: Path) -> None:
    """slurm/bandwidth.sbatch at 4 tasks writes results/<jobid>/result.json with 4 ranks."""
    storage = tmp_path / "storage"
    storage.mkdir()
    workdir = tmp_path / "job"  # sbatch --chdir: results/ and the log land here, not in the repo
    workdir.mkdir()
    block = 4 * MiB
    overrides = [
        "storage.type=local_fs",
        f"storage.root={storage}",
        "bandwidth.block_size=4MiB",
        "bandwidth.transfer_size=1MiB",
        "bandwidth.iterations=1",
    ]
    env = _job_env(
        {
            "MPIBENCH_CONFIG": str(REPO / "configs" / "bandwidth.yaml"),
            "MPIBENCH_OVERRIDES": " ".join(overrides),
        }
    )
    result = cluster.sbatch_wait(
        REPO / "slurm" / "bandwidth.sbatch",
        env=env,
        timeout=540,
        sbatch_options=[
            "--export=ALL",
            "--nodes=1",
            f"--ntasks={RANKS}",
            f"--chdir={workdir}",
            "--time=10",
        ],
    )
    assert result.returncode == 0, _explain(result, workdir, cluster)
    assert result.job_id is not None, result.stdout

    outdir = workdir / "results" / str(result.job_id)
    path = outdir / "result.json"
    assert path.is_file(), _explain(result, workdir, cluster)
    doc = json.loads(path.read_text())

    assert {"schema_version", "config", "environment", "phases"} <= doc.keys()
    assert doc["environment"]["world_size"] == RANKS
    launcher = doc["environment"]["launcher"]
    assert isinstance(launcher, dict)
    assert str(_find_key(launcher, "SLURM_JOB_ID")) == str(result.job_id), launcher
    if "kind" in launcher:
        assert launcher["kind"] == "srun", launcher
    assert doc["config"]["bandwidth"]["block_size"] == block
    assert os.path.realpath(doc["config"]["storage"]["root"]) == os.path.realpath(storage)

    phases = doc["phases"]
    assert phases, "no phases recorded"
    assert {"write", "read"} <= {p["name"] for p in phases}, [p["name"] for p in phases]
    for phase in phases:
        assert phase["bytes"] == RANKS * block, phase["name"]
        assert len(phase["ranks"]) == RANKS, phase["name"]
        assert phase["end"] >= phase["start"]
        assert phase["bandwidth_MiBps"] > 0
        assert phase["ops"] > 0

    # The template's side products.
    assert (outdir / "command.txt").read_text().startswith("srun ")
    assert (outdir / f"slurm-{result.job_id}.out").is_file()


@pytest.mark.timeout(120)
def test_stop_is_idempotent_and_signals_only_its_own_daemons() -> None:
    """stop() ends exactly the daemons start() launched and removes the temp dir."""
    _skip_unless_usable()
    slurm = OneNodeSlurm(cpus=2).start()
    pids = slurm.pids
    root = slurm.root
    assert set(pids) == {"munged", "slurmctld", "slurmd"}
    assert root is not None and (root / "slurm.conf").is_file()
    info = slurm.run(["sinfo", "-h", "-o", "%P %D %T"])
    assert info.returncode == 0 and "idle" in info.stdout, info
    slurm.stop()
    slurm.stop()
    assert not root.exists()
    for pid in pids.values():
        # Our children were reaped by Popen.wait, so the PIDs are gone (or reused
        # by something that is not ours); /proc/<pid>/cmdline must not be ours.
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():
            try:
                assert str(root) not in cmdline.read_text(), pid
            except OSError:
                pass
