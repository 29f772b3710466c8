"""What the results record about the machine, the launcher and the filesystem."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

from mpibench import __version__
from mpibench.comm import Comm, mpi4py_version, mpi_library_version, node_key

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


LUSTRE_STRIPE = re.compile(r"stripe_count:\s*(-?\d+)\s+stripe_size:\s*(\d+)(?:.*?stripe_offset:\s*(-?\d+))?",
                           re.S)


def parse_lustre_stripe(text: str) -> dict[str, str]:
    """stripe_count, stripe_size (and stripe_offset) from `lfs getstripe -d DIR`'s output."""
    match = LUSTRE_STRIPE.search(text)
    if not match:
        return {}
    found = {"lustre_stripe_count": match.group(1), "lustre_stripe_size": match.group(2)}
    if match.group(3) is not None:
        found["lustre_stripe_offset"] = match.group(3)
    return found


def lustre_stripe(path: str) -> dict[str, str]:
    """The default striping new files get in directory `path` on Lustre (`lfs getstripe -d`),
    where the `lfs` command is installed; else nothing. A shared file's bandwidth depends on
    it: one OST (stripe_count 1) serves every rank."""
    lfs = shutil.which("lfs")
    if lfs is None:
        return {}
    try:
        done = subprocess.run([lfs, "getstripe", "-d", path], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_lustre_stripe(done.stdout) if done.returncode == 0 else {}


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


CGROUP_ROOT = "/sys/fs/cgroup"
#: (files of the limit and of the usage) in a cgroup v2 and in a v1 memory hierarchy
_CGROUP_FILES = {2: ("memory.max", "memory.current"), 1: ("memory.limit_in_bytes", "memory.usage_in_bytes")}
_V1_UNLIMITED = 2**62  # v1 writes "no limit" as a page-rounded LONG_MAX


def _cgroup_memory_left(proc_cgroup: str = "/proc/self/cgroup", root: str = CGROUP_ROOT) -> int | None:
    """What this process's cgroup and every cgroup above it have left (limit - usage), the
    least of them; None without a limit. Both cgroup v2 (memory.max) and the v1 memory
    controller (memory.limit_in_bytes, still common under Slurm) are read."""
    try:
        with open(proc_cgroup, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":
            left = _hierarchy_left(root, path, 2)
        elif "memory" in controllers.split(","):
            left = _hierarchy_left(os.path.join(root, "memory"), path, 1)
        else:
            continue
        if left is not None:
            found.append(left)
    return min(found) if found else None


def _hierarchy_left(mount: str, path: str, version: int) -> int | None:
    """The least limit - usage from the cgroup at `path` up to the hierarchy's root (a
    parent's limit binds its children). Inside a cgroup namespace the path may not exist
    below the mount: then the mount itself is the process's cgroup."""
    limit_name, usage_name = _CGROUP_FILES[version]
    directory = os.path.join(mount, path.strip("/"))
    if not os.path.isdir(directory):
        directory = mount
    least: int | None = None
    while True:
        try:
            with open(os.path.join(directory, limit_name), encoding="ascii") as handle:
                limit = handle.read().strip()
            if limit != "max" and int(limit) < _V1_UNLIMITED:
                with open(os.path.join(directory, usage_name), encoding="ascii") as handle:
                    left = max(0, int(limit) - int(handle.read()))
                least = left if least is None else min(least, left)
        except (OSError, ValueError):
            pass  # this level has no such file (the root cgroup): its parents may
        if os.path.normpath(directory) == os.path.normpath(mount):
            return least
        directory = os.path.dirname(directory)


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
        "nodes_by": node_key(),
        "mpi_library": mpi_library_version(),
        "versions": versions,
        "platform": platform.platform(),
        "cpus_per_node": os.cpu_count() or 1,
        "usable_cpus_per_node": layout.node_cpus(),
        "memory_per_node_bytes": memory_total_bytes(),
        "launcher": detect_launcher(),
        "argv": sys.argv,
    }
