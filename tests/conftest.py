"""Shared fixtures: a temporary directory common to all ranks, and launching the CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings

# A property test's verdict must not depend on how busy the machine is: hypothesis's per-example
# deadline and its too-slow health checks do, so both are off for the whole suite.
settings.register_profile(
    "mpibench", deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
settings.load_profile("mpibench")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
BIN = os.path.dirname(sys.executable)


def world():
    """COMM_WORLD, or None when mpi4py is unavailable."""
    try:
        from mpi4py import MPI

        return MPI.COMM_WORLD
    except ImportError:  # pragma: no cover
        return None


@pytest.fixture
def shared_tmpdir() -> Iterator[str]:
    """A fresh directory on the local disk with the same path on every rank."""
    comm = world()
    path = tempfile.mkdtemp(prefix="mpibench-test-", dir=os.environ.get("MPIBENCH_TEST_DIR"))
    if comm is not None and comm.Get_size() > 1:
        chosen = comm.bcast(path if comm.Get_rank() == 0 else None, root=0)
        if comm.Get_rank() != 0:
            os.rmdir(path)
        path = chosen
    yield path
    if comm is not None and comm.Get_size() > 1:
        comm.Barrier()
    if comm is None or comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Completed:
    """A finished command: exit code, output and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def mpibench_cmd(ranks: int, *args: str) -> list[str]:
    """The command line that runs the CLI on `ranks` ranks (0: no launcher)."""
    cli = [os.path.join(BIN, "mpibench")]
    if ranks == 0:
        return [*cli, *args]
    return [os.path.join(BIN, "mpiexec"), "-n", str(ranks), *cli, *args]


LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "SLURM_")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the variables of an enclosing MPI launch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env.update(extra or {})
    return env


def run_cli(ranks: int, *args: str, timeout: float = 120, cwd: str | None = None,
            env: dict[str, str] | None = None) -> Completed:
    """Run `mpibench ARGS` under mpiexec with `ranks` ranks and capture everything."""
    start = time.monotonic()
    env = clean_env(env) if env is not None else clean_env()
    proc = subprocess.run(mpibench_cmd(ranks, *args), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env, stdin=subprocess.DEVNULL)
    return Completed(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def mpi_segments() -> set[str]:
    """The MPI library's shared-memory files in /dev/shm (see comm.unlink_mpi_shared_memory)."""
    from mpibench.comm import MPI_SHM_PREFIXES

    try:
        return {os.path.join("/dev/shm", name) for name in os.listdir("/dev/shm")
                if name.startswith(MPI_SHM_PREFIXES)}
    except OSError:
        return set()


def unmapped(paths: set[str]) -> set[str]:
    """Those of `paths` that no live process maps: what a finished job left behind."""
    left = set(paths)
    for pid in os.listdir("/proc"):
        if not left or not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                left -= {line.split(maxsplit=5)[-1].strip() for line in maps if "/dev/shm/" in line}
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
    return left


def launcher_files() -> set[str]:
    """The topology files of MPICH's launcher in /tmp (see comm.unlink_launcher_topology)."""
    from mpibench.comm import HYDRA_TOPOLOGY_PREFIX

    try:
        return {os.path.join("/tmp", name) for name in os.listdir("/tmp") if name.startswith(HYDRA_TOPOLOGY_PREFIX)}
    except OSError:
        return set()


def unopened(paths: set[str]) -> set[str]:
    """Those of `paths` that no live process has open: what a finished launcher left behind."""
    left = set(paths)
    for pid in os.listdir("/proc"):
        if not left or not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                left.discard(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return left


@pytest.fixture(autouse=True, scope="session")
def no_mpi_segments_left_behind() -> Iterator[None]:
    """Remove the MPI shared-memory files and the launcher's topology files of jobs the
    tests killed (SIGKILL to a rank or to mpiexec, a stuck rank's abort by the
    launcher): no process was left to remove them."""
    before, files = mpi_segments(), launcher_files()
    yield
    for path in unmapped(mpi_segments() - before) | unopened(launcher_files() - files):
        with contextlib.suppress(OSError):
            os.unlink(path)


def tree(path: str) -> dict[str, int]:
    """Every entry below `path` with its size (links by their own size), for before/after checks."""
    found: dict[str, int] = {}
    for current, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            full = os.path.join(current, name)
            found[os.path.relpath(full, path)] = os.lstat(full).st_size
    return found
