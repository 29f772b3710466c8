"""This node's page cache as a file sees it: residency by mincore, eviction by
posix_fadvise, and what a (FUSE) mount serves (shared and private mappings, O_DIRECT,
whether buffered reads leave pages cached)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from typing import Any

import numpy as np

from mpibench.buffers import aligned_buffer

PAGE = 4096
O_DIRECT = getattr(os, "O_DIRECT", 0)


def evict_file(path: str, *, synced: bool = False) -> bool:
    """Drop a file's pages from this node's page cache (fdatasync unless the caller already
    synced it, then posix_fadvise(POSIX_FADV_DONTNEED)); True when the calls succeeded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not synced:  # dirty pages cannot be dropped; a second flush of a clean file
            os.fdatasync(fd)  # still costs a device cache flush on ext4
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class _Libc:
    """mmap, mincore and munmap from the C library (Python's mmap hides the address)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.mmap = lib.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        self.munmap = lib.munmap
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.mincore = lib.mincore
        self.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


_LIBC: list[_Libc] = []
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path: str) -> tuple[int, int] | None:
    """(bytes of `path` in this node's page cache, file bytes) by mincore over a private
    read-only mapping (which a FUSE direct_io mount accepts); None where it cannot map.
    Opening a file on a FUSE mount without kernel_cache drops its pages: so do loads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return resident_fd(fd)
    finally:
        os.close(fd)


def resident_fd(fd: int) -> tuple[int, int] | None:
    """resident_bytes of an open file."""
    if not _LIBC:
        _LIBC.append(_Libc())
    libc = _LIBC[0]
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, 0
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
    if addr in (None, _MAP_FAILED):
        return None
    try:
        pages = -(-size // PAGE)
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(addr, size, vec) != 0:
            return None
        resident = int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1))
    finally:
        libc.munmap(addr, size)
    return min(resident * PAGE, size), size


def errno_name(exc: OSError) -> str:
    """The symbolic name of an OSError's errno (ENODEV), or its number."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _try_map(fd: int, flags: int) -> str:
    try:
        mapped = mmap.mmap(fd, PAGE, flags=flags, prot=mmap.PROT_READ)
    except OSError as exc:
        return errno_name(exc)
    try:
        _ = mapped[0]  # a fault through the mapping, not only its creation
    finally:
        mapped.close()
    return "ok"


def probe_mount(path: str) -> dict[str, Any]:
    """What a (FUSE) mount serves for one file of the model: a shared and a private read-only
    mapping, an O_DIRECT read of the first 4 KiB, and whether a buffered read of the first
    MiB leaves pages resident (not with direct_io); 'ok' or the errno name of each."""
    found: dict[str, Any] = {"file": path}
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        found["shared_mmap"] = _try_map(fd, mmap.MAP_SHARED)
        found["private_mmap"] = _try_map(fd, mmap.MAP_PRIVATE)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        length = min(os.fstat(fd).st_size, 1 << 20)
        os.pread(fd, length, 0)
        resident = resident_fd(fd)  # on this descriptor: a new open may drop the pages
        found["read_bytes"] = length
        found["resident_after_read_bytes"] = resident[0] if resident else None
        found["page_cache"] = bool(resident and resident[0] > 0)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | O_DIRECT)
    except OSError as exc:
        found["o_direct"] = errno_name(exc)
    else:
        try:
            buf = aligned_buffer(PAGE)
            os.preadv(dfd, [memoryview(buf)], 0)
            found["o_direct"] = "ok"
        except OSError as exc:
            found["o_direct"] = errno_name(exc)
        finally:
            os.close(dfd)
    found["direct_io"] = not found["page_cache"]
    return found
