"""The one seam between the driver and the storage: the Backend protocol.

The driver never knows which storage it talks to (as IOR's ior_aiori_t, fio's
ioengine_ops). A backend class owns its whole life in a run:

- rank 0: `preflight(...)` checks the storage and creates the run's directory or prefix,
  returning a frozen StoragePlan that every rank receives; `undo(config, plan)` removes
  what the preflight made;
- every rank: `for_rank(config, plan, layout, hints, in_flight)` builds the rank's
  instance (thread sizing, endpoint assignment); `default_io_depth(layout)` sizes
  `io.depth: auto`;
- during phases the instance resolves keys (paths relative to the storage root, always
  inside the run directory or dataset folder) and moves bytes between page-aligned
  buffers and storage, returning the bytes it really moved; errors are BenchIOError
  carrying the path, offset and errno; `cache_state` says what a phase's figures mean.

Workloads describe their access to it with neutral AccessHints; a backend never reads a
workload's settings. Every method has a default, so a new backend overrides only what
its storage does differently.
"""

from __future__ import annotations

import errno as errno_mod
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mpibench.config import StorageConfig
from mpibench.errors import BenchIOError

if TYPE_CHECKING:
    from mpibench.comm import NodeLayout
    from mpibench.config import Config

#: a phase's cache record where nothing is cached on the client: set by the backend
CacheRecord = dict[str, Any]


@dataclass(frozen=True)
class AccessHints:
    """How a workload will use the storage, in the storage's own terms (no workload names).

    shared_file: several ranks write one file; random_writes: writes land out of order;
    transfer_size: the bytes of one I/O; object_size: split each rank's block of
    block_size bytes into pieces of this size (object stores; None: one per file);
    unit: what one file is to the workload (for the records: "file", "shard", ...).
    """

    shared_file: bool = False
    random_writes: bool = False
    transfer_size: int = 0
    block_size: int = 0
    object_size: int | None = None
    unit: str = "file"


@dataclass(frozen=True)
class StoragePlan:
    """What a backend's preflight checked and created (rank 0), broadcast to every rank.

    `record`: what the results document records about the storage (environment.backend);
    `endpoints`: the endpoints the ranks are spread over (object stores; empty elsewhere).
    """

    run_key: str
    checks: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    alignment: int = 1
    alignment_source: str = "none"
    free_bytes: int | None = None
    filesystem: Mapping[str, str] = field(default_factory=dict)
    created_root: bool = False
    created_dirs: tuple[str, ...] = ()  # made by the preflight, deepest first
    record: Mapping[str, Any] = field(default_factory=dict)
    endpoints: tuple[str, ...] = ()


def io_error(op: str, path: str, exc: BaseException, offset: int | None = None) -> BenchIOError:
    """A BenchIOError for a failed operation, naming path, offset and errno."""
    code = getattr(exc, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(exc)
    where = f" at offset {offset}" if offset is not None else ""
    hint = None
    if code == errno_mod.ENOSPC:
        hint = "free space on the filesystem or lower the sizes"
    elif code in (errno_mod.EACCES, errno_mod.EPERM, errno_mod.EROFS):
        hint = "check the permissions of storage.root"
    elif code == errno_mod.ENOENT:
        hint = "was the file removed by another process?"
    name = errno_mod.errorcode.get(code, "") if isinstance(code, int) else ""
    label = f" [{name}]" if name else ""
    return BenchIOError(f"{op} {path}{where} failed: {reason}{label}", hint, path=path,
                        errno=code if isinstance(code, int) else None)


def complete_short(backend: Backend, handle: Any, view: memoryview, writing: bool, path: str,
                   offset: int, done: int, transfer_size: int) -> None:
    """Finish a short transfer (the kernel may move fewer bytes than asked), or raise."""
    if writing:
        if done <= 0:
            raise OSError(errno_mod.ENOSPC, "short write")  # a 0-byte write means no space here
        backend.write_at(handle, view[done:], offset + done)
        return
    if done > 0:
        done += backend.read_at(handle, view[done:], offset + done)
    if done < transfer_size:
        raise BenchIOError(
            f"read {path} at offset {offset}: expected {transfer_size} bytes, got {done}",
            "the file is shorter than written: was it truncated or replaced by another process?",
            path=path)


class Backend(ABC):
    """How bytes move between buffers and one kind of storage."""

    name: ClassVar[str] = "abstract"
    #: True when reads bypass any client cache (O_DIRECT, object GETs).
    direct: ClassVar[bool] = False
    #: True when handles are file descriptors of this process (fd_for): io_uring can drive them.
    file_descriptors: ClassVar[bool] = False
    #: True when the kernel's /proc/self/io counts this storage's bytes (local files).
    kernel_counted: ClassVar[bool] = False
    #: The preflight's checks, as `mpibench plan` lists them before any I/O.
    preflight_checks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage
        #: required alignment of buffers, offsets and lengths (1: none)
        self.alignment = 1
        #: True when write_at may be called at any offset (false: sequential appends only)
        self.random_write = True

    # -- the run's life: rank 0's preflight, every rank's instance -------------------------
    @classmethod
    def preflight(cls, config: Config, run_key: str, planned_bytes: int, layout: NodeLayout,
                  hints: AccessHints, threads: int) -> StoragePlan:
        """Rank 0, before any benchmark I/O: check the storage, create the run's place in it."""
        return StoragePlan(run_key=run_key)

    @classmethod
    def undo(cls, config: Config, plan: StoragePlan) -> None:
        """Rank 0: remove what `preflight` created (at the end of the run, or when it fails)."""

    @classmethod
    def runtime_threads(cls, config: Config, layout: NodeLayout, in_flight: int) -> int:
        """A client library's worker threads per rank (storage.threads; auto: the node's
        usable CPUs over its ranks). `in_flight`: the workload's requests in flight per rank."""
        if config.storage.threads != "auto":
            return int(config.storage.threads)
        return max(1, layout.node_cpus() // max(1, layout.local_size))

    @classmethod
    def default_io_depth(cls, layout: NodeLayout) -> int:
        """io.depth auto: the I/Os a rank keeps in flight (the node's usable CPUs over its
        ranks, at most 16)."""
        return max(1, min(16, layout.node_cpus() // max(1, layout.local_size)))

    @classmethod
    def io_depth_reason(cls, cpus: int, ranks: int) -> str:
        """Why default_io_depth is what it is (recorded in auto_choices)."""
        return f"{cpus} usable CPUs on the node / {ranks} rank(s) on it (1 to 16)"

    @classmethod
    def for_rank(cls, config: Config, plan: StoragePlan, layout: NodeLayout, hints: AccessHints,
                 in_flight: int) -> Backend:
        """Every rank: its own instance for the run (after the preflight's plan)."""
        backend = cls(config.storage)
        backend.alignment = plan.alignment
        return backend

    def cache_state(self) -> CacheRecord | None:
        """A phase's cache record where this storage decides it (no client cache: direct,
        object, none); None where a client page cache sits in between, whose state
        (buffered, warm, cold) the workload decides, evicting as it needs."""
        if self.direct:
            return {"state": "direct", "method": self.name}
        return None

    def begin(self, step: str, rank: int) -> None:
        """The run's steps, as this rank reaches them: "start" (its context is set up),
        "preflight" (rank 0, once the run's place exists), then each phase's name before its
        start barrier. Nothing to do for a storage; a wrapper (backends/faulty.py) acts on it."""

    # -- files --------------------------------------------------------------------------
    @abstractmethod
    def open(self, key: str, mode: str) -> Any:
        """Open `key` for writing ('w': create or truncate) or reading ('r')."""

    @abstractmethod
    def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        """Write all of `buf` at `offset`; return the bytes written."""

    @abstractmethod
    def read_at(self, handle: Any, buf: memoryview, offset: int) -> int:
        """Read up to len(buf) bytes at `offset`; return the bytes read (fewer at end of file)."""

    def writer(self, handle: Any, view: memoryview) -> Callable[[int], int]:
        """A function offset -> bytes written from `view` (the engine's hot path).

        It may write fewer bytes than len(view) (the engine finishes with write_at) and
        may raise OSError (the engine reports it with the path and offset).
        """
        return lambda offset: self.write_at(handle, view, offset)

    def reader(self, handle: Any, view: memoryview, keep: bool = True) -> Callable[[int], int]:
        """A function offset -> bytes read into `view` (short reads and OSError as for writer).

        keep=False: the caller never looks at the bytes (no verification), so a backend
        whose library hands back a buffer of its own need not copy it into `view`.
        """
        return lambda offset: self.read_at(handle, view, offset)

    def fd_for(self, handle: Any) -> int | None:
        """The file descriptor behind a handle (file_descriptors backends), for io_uring; None
        when there is none."""
        return None

    def fsync(self, handle: Any) -> None:
        """Make the written data durable."""

    @abstractmethod
    def close(self, handle: Any) -> None:
        """Close (for object stores: commit) the handle."""

    def truncate(self, handle: Any, size: int) -> None:
        """Cut the file to `size` bytes (after padded O_DIRECT writes)."""

    # -- namespace ----------------------------------------------------------------------
    @abstractmethod
    def remove(self, key: str) -> None:
        """Delete `key` (not following symlinks); a missing key is not an error."""

    @abstractmethod
    def size_of(self, key: str) -> int:
        """Size of `key` in bytes."""

    def makedirs(self, key: str) -> None:
        """Create directory `key` and its parents (no-op where there are no directories)."""

    def remove_dir(self, key: str) -> None:
        """Remove directory `key` if it is empty (no-op where there are no directories)."""

    def not_a_dir(self, key: str) -> str | None:
        """The first of `key` and its parents that exists and is not a directory (for a
        preflight before makedirs), or None (always None where there are no directories)."""
        return None

    def evict(self, key: str, *, synced: bool = False) -> bool:
        """Drop `key` from the client cache; True when the eviction is known to have worked.
        `synced`: the caller fsynced the object since it last wrote it (nothing dirty to flush)."""
        return self.direct

    def sync_filesystem(self) -> None:
        """Finish the storage's deferred work (a file system's journal commit, with the frees
        and discards of removed files) now, so that it does not land in a later timed phase;
        nothing to do where there is none."""

    def path_of(self, key: str) -> str:
        """A human-readable location of `key` for messages."""
        return key

    def local_root(self) -> str | None:
        """A local directory whose block device's counters describe this storage's I/O
        (read around each phase), or None where the storage is not a local file system."""
        return None

    def describe(self) -> dict[str, Any]:
        """What results record about this backend."""
        return {"backend": self.name, "direct": self.direct, "alignment": self.alignment,
                "kernel_counted": self.kernel_counted}

    # -- whole objects --------------------------------------------------------------------
    def put(self, key: str, buf: memoryview, fsync: bool = False) -> int:
        """Write a whole file from one buffer."""
        handle = self.open(key, "w")
        try:
            written = self.write_at(handle, buf, 0)
            if fsync:
                self.fsync(handle)
        finally:
            self.close(handle)
        return written

    def get(self, key: str, buf: memoryview) -> int:
        """Read a whole file into a buffer large enough to hold it; return its size."""
        handle = self.open(key, "r")
        try:
            return self.read_at(handle, buf, 0)
        finally:
            self.close(handle)

    # -- metadata operations (the metadata workload) ------------------------------------------
    # Each works on an entry of a directory handle from open_dir, so that a file system
    # resolves the directory once and each operation costs one system call on a name
    # (openat, fstatat, unlinkat), as mdtest's do. Failures raise BenchIOError with errno.
    #: True when the storage has directories to create and remove (false: key prefixes)
    has_directories: ClassVar[bool] = False
    #: True when an entry can be renamed in one operation
    can_rename: ClassVar[bool] = False

    def data_io(self, size: int) -> dict[str, Any]:
        """How files of `size` bytes are written and read by the *_in operations (recorded)."""
        return {"state": "direct" if self.direct else "buffered", "method": self.name}

    def free_entries(self, key: str) -> int | None:
        """Files and directories that can still be created where `key` is (the file system's
        free inodes), or None where there is no such limit or it is not known."""
        return None

    def mkdir(self, key: str) -> None:
        """Create the one directory `key` (its parent exists); an error if it exists."""

    def rmdir(self, key: str) -> None:
        """Remove the empty directory `key`; an error if it is missing or not empty."""

    def open_dir(self, key: str) -> Any:
        """A handle on directory (or key prefix) `key` for the *_in operations."""
        return key

    def close_dir(self, handle: Any) -> None:
        """Release a handle from open_dir."""

    def create_in(self, handle: Any, name: str, buf: memoryview, fsync: bool = False) -> int:
        """Create the new entry `name` holding all of `buf`; return the bytes written."""
        return self.put(f"{handle}/{name}", buf, fsync)

    def stat_in(self, handle: Any, name: str) -> int:
        """The size of entry `name` (one stat, or one HEAD)."""
        return self.size_of(f"{handle}/{name}")

    def read_in(self, handle: Any, name: str, buf: memoryview) -> int:
        """Read entry `name` whole into `buf` (len(buf) is its size); return the bytes read."""
        return self.get(f"{handle}/{name}", buf)

    def rename_in(self, handle: Any, name: str, new_name: str) -> None:
        """Rename entry `name` to `new_name` in the same directory (where can_rename)."""
        raise NotImplementedError(f"{self.name} cannot rename")

    def unlink_in(self, handle: Any, name: str, missing_ok: bool = False) -> None:
        """Remove entry `name` (a missing one is an error unless missing_ok)."""
        self.remove(f"{handle}/{name}")

    def list_in(self, handle: Any, page: int) -> Iterator[list[str]]:
        """The names in the directory, pages of up to `page` names as the storage hands them out."""
        raise NotImplementedError(f"{self.name} cannot list")

    def probe_batch_delete(self, key: str) -> dict[str, Any] | None:
        """Rank 0, before the run: whether entries can be removed many per request below `key`
        ({"mode": "batched" or "single", "max_keys", "method", "reason"}); None: never."""
        return None

    def unlink_many_in(self, handle: Any, names: list[str]) -> None:
        """Remove the entries `names` (at most probe_batch_delete's max_keys) in one request."""
        for name in names:
            self.unlink_in(handle, name)

    def where_in(self, handle: Any, name: str) -> str:
        """A human-readable location of entry `name` for messages."""
        return self.path_of(f"{handle}/{name}")
