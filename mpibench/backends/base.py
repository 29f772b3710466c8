"""The one seam between the driver and the storage: a small Backend protocol.

The driver never knows which storage it talks to. A backend resolves keys (paths
relative to the storage root, always inside the run directory or dataset folder) and
moves bytes between page-aligned buffers and storage, returning the bytes it really
moved. Errors are raised as BenchIOError carrying the path, offset and errno.
"""

from __future__ import annotations

import errno as errno_mod
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from mpibench.config import StorageConfig
from mpibench.errors import BenchIOError


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
    #: True when write_at may be called at any offset (false: sequential appends only).
    random_write: ClassVar[bool] = True

    def __init__(self, storage: StorageConfig) -> None:
        self.storage = storage
        #: required alignment of buffers, offsets and lengths (1: none)
        self.alignment = 1

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

    def writer(self, handle: Any, view: memoryview) -> Any:
        """A function offset -> bytes written from `view` (the engine's hot path).

        It may write fewer bytes than len(view) (the engine finishes with write_at) and
        may raise OSError (the engine reports it with the path and offset).
        """
        return lambda offset: self.write_at(handle, view, offset)

    def reader(self, handle: Any, view: memoryview, keep: bool = True) -> Any:
        """A function offset -> bytes read into `view` (short reads and OSError as for writer).

        keep=False: the caller never looks at the bytes (no verification), so a backend
        whose library hands back a buffer of its own need not copy it into `view`.
        """
        return lambda offset: self.read_at(handle, view, offset)

    def fileno(self, handle: Any) -> int | None:
        """The file descriptor behind a handle, for io_uring; None when there is none."""
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

    def describe(self) -> dict[str, Any]:
        """What results record about this backend."""
        return {"backend": self.name, "direct": self.direct, "alignment": self.alignment}

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

    def list_in(self, handle: Any) -> Iterator[list[str]]:
        """The names in the directory, page by page, as the storage hands them out."""
        raise NotImplementedError(f"{self.name} cannot list")

    def where_in(self, handle: Any, name: str) -> str:
        """A human-readable location of entry `name` for messages."""
        return self.path_of(f"{handle}/{name}")
