"""The only module that imports mpi4py; a one-process stand-in where MPI is absent.

Everything the rest of mpibench needs from MPI goes through :class:`Comm`, so the driver
and the workloads run unchanged as one plain process, under ``mpiexec`` or under ``srun``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

NODE_KEY_ENV = "MPIBENCH_NODE_KEY"  # how ranks are grouped into nodes: see node_key()
NODE_KEYS = ("shared_memory", "hostname")
ABORT_FORWARD_S = 0.2  # pause between a rank's last line and MPI_Abort (see Comm.abort)
IDLE_PAUSE_S = (0.00005, 0.001)  # Comm.idle_barrier's first and longest sleep between tests

try:  # mpi4py is a dependency, but a broken MPI must not stop `mpibench plan` on a laptop
    import mpi4py

    mpi4py.rc.recv_mprobe = False
    from mpi4py import MPI

    _MPI_IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the installation
    MPI = None  # type: ignore[assignment]
    _MPI_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a cgroup's cpuset, `srun --cpu-bind`,
    `taskset`), which os.cpu_count() ignores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def _affinity_mask() -> int:
    try:
        return sum(1 << cpu for cpu in os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return (1 << (os.cpu_count() or 1)) - 1


def node_key() -> str:
    """How ranks are grouped into nodes: 'shared_memory' (default: MPI's own split, the ranks
    that can share memory) or 'hostname' (ranks whose host names are equal), from
    MPIBENCH_NODE_KEY. The two agree on a cluster; 'hostname' is for ranks that MPI sees on
    one host but that stand for different nodes (containers, the test suite's emulated
    nodes in UTS namespaces)."""
    key = os.environ.get(NODE_KEY_ENV, "").strip().lower().replace("-", "_") or "shared_memory"
    if key not in NODE_KEYS:
        from mpibench.errors import ConfigError

        raise ConfigError(f"{NODE_KEY_ENV}={os.environ[NODE_KEY_ENV]} is not a way to group ranks into nodes",
                          f"set it to {' or '.join(NODE_KEYS)}, or unset it")
    return key


@dataclass(frozen=True)
class NodeLayout:
    """Where this rank sits: its host, its node-local rank and the shape of the job."""

    host: str
    node_index: int
    num_nodes: int
    local_rank: int
    local_size: int
    ranks_per_node: list[int]
    hosts: list[str]
    #: CPUs the ranks of this node may run on, together (0: not known, see node_cpus())
    usable_cpus: int = 0

    def node_cpus(self) -> int:
        """The CPUs this node's ranks share: what 'auto' sizes divide among them."""
        return self.usable_cpus or usable_cpus()


class Comm:
    """A thin wrapper over COMM_WORLD (or a single process when MPI is not in use)."""

    def __init__(self, comm: Any | None = None) -> None:
        if comm is None and MPI is not None:
            comm = MPI.COMM_WORLD
        self._comm = comm
        self.rank: int = comm.Get_rank() if comm is not None else 0
        self.size: int = comm.Get_size() if comm is not None else 1
        self._layout: NodeLayout | None = None
        self._clock_offset = 0.0
        # A private communicator for collectives inside a phase: if one is abandoned
        # because a rank failed, it cannot be confused with the driver's collectives.
        self._side = comm.Dup() if comm is not None and self.size > 1 else None

    @property
    def is_root(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    def split(self, color: int | None, key: int) -> Any:
        """The mpi4py sub-communicator of the ranks giving the same color, ordered by key;
        None on a rank that gives None (it takes part in none)."""
        if self._comm is None:
            return None
        sub = self._comm.Split(MPI.UNDEFINED if color is None else color, key)
        return None if sub == MPI.COMM_NULL else sub

    def barrier(self) -> None:
        """Wait for every rank."""
        if self._comm is not None and self.size > 1:
            self._comm.Barrier()

    def idle_barrier(self) -> None:
        """Wait for every rank without holding a core.

        MPI's blocking collectives spin: a rank that finished its I/O early would burn a
        core while the others still do theirs, and on a node with fewer cores than ranks (or
        other work) that slows the ranks still measuring. This one tests a non-blocking
        barrier and sleeps between tests (50 us, doubling to 1 ms). Its return is up to a
        millisecond late, so it is for waits outside the timed window; follow it with
        barrier() where the ranks must leave together.
        """
        if self._comm is None or self.size == 1:
            return
        request = self._comm.Ibarrier()
        pause, longest = IDLE_PAUSE_S
        while not request.Test():
            time.sleep(pause)
            pause = min(pause * 2, longest)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Send a picklable object from root to every rank."""
        if self._comm is None or self.size == 1:
            return obj
        return self._comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """Collect one object per rank on root (None elsewhere)."""
        if self._comm is None or self.size == 1:
            return [obj]
        return self._comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        """Collect one object per rank on every rank."""
        if self._comm is None or self.size == 1:
            return [obj]
        return self._comm.allgather(obj)

    def allreduce_max(self, value: float) -> float:
        """The largest value over all ranks."""
        if self._comm is None or self.size == 1:
            return value
        return self._comm.allreduce(value, op=MPI.MAX)

    def allreduce_min(self, value: float) -> float:
        """The smallest value over all ranks."""
        if self._comm is None or self.size == 1:
            return value
        return self._comm.allreduce(value, op=MPI.MIN)

    def allreduce_max_polled(self, value: float, poll: Any) -> float:
        """The largest value over all ranks, calling poll() while waiting (it may raise).

        Used inside a phase, where a peer may fail instead of arriving: poll() raises when
        another rank's stop notice comes, so no rank waits forever.
        """
        if self._side is None:
            return value
        send = np.array([value], dtype=np.float64)
        recv = np.empty(1, dtype=np.float64)
        request = self._side.Iallreduce(send, recv, op=MPI.MAX)
        while not request.Test():
            poll()
            time.sleep(0.0002)
        return float(recv[0])

    def reduce_array_sum(self, array: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Element-wise sum of equally shaped numpy arrays on root (None elsewhere)."""
        if self._comm is None or self.size == 1:
            return array.copy()
        out = np.zeros_like(array) if self.rank == root else None
        self._comm.Reduce(np.ascontiguousarray(array), out, op=MPI.SUM, root=root)
        return out

    def wtime(self) -> float:
        """Seconds on this rank's clock, shifted to agree with rank 0's (see sync_clocks)."""
        now = MPI.Wtime() if MPI is not None else time.monotonic()
        return now + self._clock_offset

    def sync_clocks(self) -> float:
        """Estimate this rank's clock offset to rank 0 so start and end times compare.

        MPI_Wtime is not guaranteed global across nodes. After a barrier rank 0 sends its
        time; each rank takes the difference to its own. The error is the broadcast
        latency (microseconds), far below any phase's duration.
        """
        self._clock_offset = 0.0
        if self._comm is None or self.size == 1:
            return 0.0
        best = None
        for _ in range(3):
            self.barrier()
            root_time = self.bcast(self.wtime() if self.is_root else None)
            offset = root_time - self.wtime()
            # The smallest forward difference bounds the offset most tightly.
            if best is None or offset > best:
                best = offset
        self._clock_offset = 0.0 if self.is_root else float(best or 0.0)
        return self._clock_offset

    def abort(self, code: int) -> None:
        """End every rank of the job at once (after a rank failed mid-phase)."""
        sys.stdout.flush()
        sys.stderr.flush()
        unlink_mpi_shared_memory()
        unlink_launcher_topology()
        if self._comm is not None and self.size > 1:
            # Give the launcher a moment to forward the line just written: Hydra can tear
            # the job down on the abort before it has relayed the rank's last output.
            time.sleep(ABORT_FORWARD_S)
            self._comm.Abort(code)
        os._exit(code)

    def layout(self) -> NodeLayout:
        """This rank's node, found with a node-local communicator split (see node_key())."""
        if self._layout is not None:
            return self._layout
        host = socket.gethostname()
        if self._comm is None or self.size == 1:
            self._layout = NodeLayout(host, 0, 1, 0, 1, [1], [host], usable_cpus())
            return self._layout
        if node_key() == "hostname":
            names = sorted(set(self._comm.allgather(host)))
            local = self._comm.Split(names.index(host), key=self.rank)
        else:
            local = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        local_rank, local_size = local.Get_rank(), local.Get_size()
        # The node's usable CPUs: the union of its ranks' affinities (each rank may be bound
        # to a few; unbound, each has them all).
        node_mask = 0
        for mask in local.allgather(_affinity_mask()):
            node_mask |= mask
        node_cpus = bin(node_mask).count("1")
        # Node leaders number the nodes; each rank learns its node's index from its leader.
        leader = self._comm.Split(0 if local_rank == 0 else MPI.UNDEFINED, key=self.rank)
        node_index = leader.Get_rank() if leader != MPI.COMM_NULL else -1
        num_nodes = leader.Get_size() if leader != MPI.COMM_NULL else 0
        if leader != MPI.COMM_NULL:
            leader.Free()
        node_index, num_nodes = local.bcast((node_index, num_nodes), root=0)
        local.Free()
        everyone = self._comm.allgather((node_index, host))
        ranks_per_node = [0] * num_nodes
        hosts = [""] * num_nodes
        for idx, name in everyone:
            ranks_per_node[idx] += 1
            hosts[idx] = name
        self._layout = NodeLayout(host, node_index, num_nodes, local_rank, local_size,
                                  ranks_per_node, hosts, node_cpus)
        return self._layout


# Files in /dev/shm that MPI libraries keep for a node's ranks until MPI_Finalize.
MPI_SHM_PREFIXES = ("mpich_shm_",)


def unlink_mpi_shared_memory() -> list[str]:
    """Remove the names of the MPI library's shared-memory files this process maps.

    MPICH keeps a node's shared-memory segment as a file in /dev/shm (2-4 MiB) and
    removes it in MPI_Finalize; a job ended by MPI_Abort never gets there, so each abort
    would leave one behind. Removing the name does not touch the mapping: the node's
    other ranks go on using the segment until the abort ends them. Returns the paths
    removed.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            mapped = {fields[5] for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6}
    except OSError:
        return []
    removed = []
    for path in sorted(mapped):
        path = path.strip()
        if os.path.dirname(path) == "/dev/shm" and os.path.basename(path).startswith(MPI_SHM_PREFIXES):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:  # another rank of the node removed it first
                pass
    return removed


HYDRA_PROXY = "hydra_pmi_proxy"
HYDRA_TOPOLOGY_PREFIX = "hydra_hwloc_xmlfile_"


def unlink_launcher_topology() -> list[str]:
    """Remove the node's topology file of MPICH's launcher when this rank aborts the job.

    Hydra's proxy (this rank's parent process under mpiexec) writes the node's hardware
    topology to /tmp/hydra_hwloc_xmlfile_* and removes it when it exits normally; when a
    rank calls MPI_Abort the proxy is killed and the file stays, one per aborted job and
    node. The aborting rank removes its own node's (the proxy keeps its open copy; other
    nodes' proxies cannot be reached from here). Under any other launcher nothing is
    done. Returns the paths removed.
    """
    proxy = f"/proc/{os.getppid()}"
    removed = []
    try:
        with open(f"{proxy}/comm", encoding="utf-8") as comm:
            if comm.read().strip() != HYDRA_PROXY:
                return []
        descriptors = os.listdir(f"{proxy}/fd")
    except OSError:
        return []
    for fd in descriptors:
        try:
            target = os.readlink(f"{proxy}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("/") and os.path.basename(target).startswith(HYDRA_TOPOLOGY_PREFIX):
            try:
                os.unlink(target)
                removed.append(target)
            except OSError:
                pass
    return removed


class CancelChannel:
    """Lets a rank that failed mid-phase tell every other rank to stop issuing I/O.

    Each rank keeps one receive posted on a private duplicate of the communicator; a
    failing rank sends a short notice to all others. Ranks test for it between
    operations (at most every few milliseconds), leave the phase, and meet the others at
    the phase-end agreement, so nobody is left blocked in a collective.
    """

    TAG = 77

    def __init__(self, comm: Comm) -> None:
        self.rank = comm.rank
        self.size = comm.size
        self._dup = comm._comm.Dup() if comm._comm is not None and comm.size > 1 else None
        self._request = None
        self._buf = bytearray(4096)
        self.notice: str | None = None
        self._sent = False
        if self._dup is not None:
            self._request = self._dup.Irecv([self._buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=self.TAG)

    def poll(self) -> str | None:
        """The notice another rank sent, if one arrived (cheap: one MPI_Test)."""
        if self.notice is None and self._request is not None and self._request.Test():
            self._request = None
            self.notice = self._buf.split(b"\0", 1)[0].decode("utf-8", "replace")
        return self.notice

    def notify(self, message: str) -> None:
        """Tell every other rank to stop (once; never blocks on slow receivers)."""
        if self._dup is None or self._sent:
            return
        self._sent = True
        payload = message.encode("utf-8")[: len(self._buf) - 1] + b"\0"
        self._pending = [self._dup.Isend([payload, MPI.BYTE], dest=r, tag=self.TAG)
                         for r in range(self.size) if r != self.rank]

    def close(self) -> None:
        """Cancel the posted receive and free the private communicator."""
        if self._request is not None:
            self._request.Cancel()
            self._request.Wait()
            self._request = None
        # Notices are a few bytes, sent eagerly: waiting for them completes at once.
        pending = getattr(self, "_pending", [])
        if pending:
            MPI.Request.Waitall(pending)
        if self._dup is not None:
            self._dup.Free()
            self._dup = None


def mpi_library_version() -> str:
    """The MPI library's own version line, or why MPI is not in use."""
    if MPI is None:
        return f"none ({_MPI_IMPORT_ERROR})"
    try:
        return MPI.Get_library_version().strip().splitlines()[0].strip()
    except Exception:  # pragma: no cover
        return "unknown"


def mpi4py_version() -> str:
    """The mpi4py version, or 'none'."""
    return getattr(mpi4py, "__version__", "none") if MPI is not None else "none"
