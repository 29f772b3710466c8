"""What the results record about the machine, the launcher and the filesystem."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from typing import Any

from mpibench import __version__
from mpibench.comm import Comm, mpi4py_version, mpi_library_version

LAUNCHER_PREFIXES = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NTASKS",
                     "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_MPI_TYPE",
                     "SLURM_CLUSTER_NAME", "SLURM_JOB_PARTITION", "SLURM_STEP_ID")
LAUNCHER_ENV_PREFIXES = ("PMI_SIZE", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                         "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_UNIVERSE_SIZE", "MPI_LOCALNRANKS",
                         "HYDRA_", "I_MPI_", "MPICH_")
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "SESSION")


def detect_launcher() -> dict[str, Any]:
    """The launcher that started this process and its job variables (no secrets)."""
    env = os.environ
    recorded = {k: env[k] for k in LAUNCHER_PREFIXES if k in env}
    for key, value in env.items():
        if key.startswith(LAUNCHER_ENV_PREFIXES) and not any(w in key for w in SECRET_WORDS):
            recorded[key] = value
    if "SLURM_STEP_ID" in env or ("SLURM_JOB_ID" in env and "PMI_RANK" not in env and "OMPI_COMM_WORLD_SIZE" not in env and "PMI_SIZE" in env):
        kind = "srun"
    elif "OMPI_COMM_WORLD_SIZE" in env:
        kind = "mpirun (Open MPI)"
    elif "PMI_SIZE" in env or "PMI_RANK" in env or any(k.startswith("HYDRA_") for k in env):
        kind = "mpiexec (MPICH/Hydra)"
    elif "PMIX_RANK" in env:
        kind = "PMIx launcher"
    else:
        kind = "singleton"
    return {"kind": kind, "variables": dict(sorted(recorded.items()))}


def filesystem_of(path: str) -> dict[str, str]:
    """Mount point, filesystem type and device of the mount holding `path` (/proc/mounts)."""
    path = os.path.realpath(path)
    best = {"mount": "", "fstype": "unknown", "device": ""}
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) < 3:
                    continue
                device, mount, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best["mount"]):
                    best = {"mount": mount, "fstype": fstype, "device": device}
    except OSError:
        pass
    return best


# statx(2) with STATX_DIOALIGN (Linux 6.1+) tells the direct-I/O alignment a file needs.
_STATX_DIOALIGN = 0x2000
_AT_FDCWD = -100


def statx_dio_alignment(path: str) -> tuple[int, int] | None:
    """(memory alignment, offset alignment) for O_DIRECT on `path`, or None if unknown."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        statx = libc.statx
    except (OSError, AttributeError):
        return None
    buf = ctypes.create_string_buffer(256)
    statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    if statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_DIOALIGN, buf) != 0:
        return None
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & _STATX_DIOALIGN:
        return None
    mem_align = int.from_bytes(buf.raw[152:156], "little")
    offset_align = int.from_bytes(buf.raw[156:160], "little")
    if mem_align == 0 or offset_align == 0:
        return None  # the filesystem does not support direct I/O on this file
    return mem_align, offset_align


def logical_block_size(path: str) -> int | None:
    """The logical block size of the block device holding `path`, if it can be found."""
    try:
        dev = os.stat(path).st_dev
        sysdir = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        for candidate in (f"{sysdir}/queue/logical_block_size", f"{sysdir}/../queue/logical_block_size"):
            if os.path.exists(candidate):
                with open(candidate, encoding="ascii") as handle:
                    return int(handle.read().strip())
    except (OSError, ValueError):
        pass
    return None


BLOCK_STAT_FIELDS = ("reads", "reads_merged", "sectors_read", "read_ms", "writes", "writes_merged",
                     "sectors_written", "write_ms", "in_flight", "io_ms", "queue_ms")


def block_stat_path(path: str) -> str | None:
    """The /sys stat file of the block device (or partition) holding `path`, if there is one."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    stat = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat"
    return stat if os.path.exists(stat) else None


def read_block_stat(stat_path: str | None) -> dict[str, int]:
    """Counters of a block device stat file (sectors are 512 bytes), or {}."""
    if not stat_path:
        return {}
    try:
        with open(stat_path, encoding="ascii") as handle:
            values = [int(v) for v in handle.read().split()]
    except (OSError, ValueError):
        return {}
    return dict(zip(BLOCK_STAT_FIELDS, values, strict=False))


def block_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What the device did between two readings, with bytes read and written."""
    if not before or not after:
        return {}
    delta = {k: after[k] - before.get(k, 0) for k in after if k != "in_flight"}
    delta["read_bytes"] = delta.get("sectors_read", 0) * 512
    delta["write_bytes"] = delta.get("sectors_written", 0) * 512
    return delta


def memory_total_bytes() -> int:
    """Physical memory of this node."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def memory_available_bytes() -> int:
    """Memory this process's node can still give without swapping: MemAvailable of
    /proc/meminfo, lowered to what the cgroup (a Slurm job's, a container's) has left
    where it sets a limit; 0 when unknown."""
    available = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        available = 0
    left = _cgroup_memory_left()
    if left is not None and (not available or left < available):
        available = left
    return available


def _cgroup_memory_left() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), None without a limit."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            path = next((line.strip()[3:] for line in handle if line.startswith("0::")), None)
        if path is None:
            return None
        base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(base, "memory.max"), encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current"), encoding="ascii") as handle:
            current = int(handle.read())
        return max(0, int(limit) - current)
    except (OSError, ValueError, StopIteration):
        return None


def collect(comm: Comm) -> dict[str, Any]:
    """Environment metadata of the job (collective: every rank must call it)."""
    layout = comm.layout()
    versions: dict[str, str] = {
        "mpibench": __version__,
        "python": platform.python_version(),
        "mpi4py": mpi4py_version(),
    }
    import numpy

    versions["numpy"] = numpy.__version__
    from importlib.metadata import version

    for package in ("s3dlio", "liburing"):
        try:
            versions[package] = version(package)
        except Exception:
            versions[package] = "not installed"
    return {
        "world_size": comm.size,
        "num_nodes": layout.num_nodes,
        "hosts": layout.hosts,
        "ranks_per_node": layout.ranks_per_node,
        "mpi_library": mpi_library_version(),
        "versions": versions,
        "platform": platform.platform(),
        "cpus_per_node": os.cpu_count() or 1,
        "usable_cpus_per_node": layout.node_cpus(),
        "memory_per_node_bytes": memory_total_bytes(),
        "launcher": detect_launcher(),
        "argv": sys.argv,
    }
