"""The run's automatic choices (settings left at `auto`), each with the reason it was made.

`io.depth: auto` gives a rank the node's usable CPUs divided by its ranks (at most 16) for
reads. Writes are not always helped by more in flight: O_DIRECT writes past the end of a
file take the inode's lock exclusively on ext4, XFS and btrfs (they change its size), so a
second write in flight only waits and adds work (a rank at depth 2 wrote 4 KiB transfers at
0.7 of depth 1, docs/performance.md). Writes inside a file's size into preallocated blocks
share the lock and do overlap. So where writes would go at depth > 1 on such a filesystem,
the workload preallocates each file it writes (fallocate, outside the timed window, as fio
does by default) when it can and its transfers are at least PREALLOCATE_MIN_TRANSFER, and
otherwise keeps its writes at depth 1. The result's
`auto_choices` records every decision and why (docs/results.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass, field
from typing import Any

from mpibench.backends import backend_class
from mpibench.config import AUTO, Config

#: Filesystems on which O_DIRECT writes that extend a file serialize on the inode's lock.
SERIALIZED_EXTENDING_WRITES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
#: Smallest transfer written at depth > 1 into preallocated files. Each write into a
#: preallocated (unwritten) extent that completes asynchronously (io_uring) has its extent
#: converted by a kernel worker, one conversion per transfer; on a loaded machine depth 2
#: into preallocated files wrote 4 KiB and 64 KiB transfers at 0.3-0.9 of depth 1 (while
#: 1.2-1.7x on a quieter one), 1 and 16 MiB at 1.03-1.35x (docs/runs/2026-12-07-peers-ior.md).
PREALLOCATE_MIN_TRANSFER = 1024 * 1024


@dataclass
class IoChoices:
    """Queue depth per direction, whether written files are preallocated, and why."""

    read_depth: int
    write_depth: int
    preallocate: bool = False
    record: dict[str, dict[str, Any]] = field(default_factory=dict)


def depth_setting(config: Config) -> Any:
    """The configured queue depth (an int or 'auto')."""
    return config.io.depth


def decide(config: Config, depth: int, engine: str, fstype: str, cpus: int, ranks: int,
           can_preallocate: bool) -> IoChoices:
    """The choices for a run whose resolved io_depth is `depth` (`cpus` usable on the node,
    `ranks` on it), its engine `engine`, on a filesystem of type `fstype`; `can_preallocate`:
    the workload preallocates the files it writes when asked."""
    auto = depth_setting(config) == AUTO
    backend = backend_class(config.storage.type, config.storage.library)
    choices = IoChoices(read_depth=depth, write_depth=depth)
    record = choices.record
    if auto:
        why = backend.io_depth_reason(cpus, ranks)
        record["read_io_depth"] = {"value": depth, "why": why}
    files = backend.file_descriptors
    if auto and files and depth > 1 and fstype in SERIALIZED_EXTENDING_WRITES:
        small = can_preallocate and config.bandwidth.transfer_size < PREALLOCATE_MIN_TRANSFER
        if can_preallocate and not small:
            choices.preallocate = True
            record["preallocate"] = {
                "value": True,
                "why": (f"{fstype} serializes O_DIRECT writes that extend a file; each written file is "
                        "preallocated (fallocate, then fsync) before the phase's timed window so that "
                        f"its {depth} writes in flight overlap; block allocation is not timed (as fio's "
                        "default --fallocate=native; IOR does not preallocate)")}
            record["write_io_depth"] = {"value": depth, "why": "as reads: the files written are preallocated"}
        else:
            choices.write_depth = 1
            unless = ("transfers below 1 MiB are not preallocated: each completion would convert an "
                      "unwritten extent in a kernel worker" if small else "this workload does not preallocate")
            record["write_io_depth"] = {
                "value": 1,
                "why": (f"{fstype} serializes O_DIRECT writes that extend a file: a second write in "
                        f"flight only waits, so writes keep depth 1 ({unless}); reads keep {depth}")}
    elif auto:
        if files and depth > 1:
            why = f"as reads: {fstype} is not known to serialize writes that extend a file"
        else:
            why = "as reads"
        record["write_io_depth"] = {"value": depth, "why": why}
    if files and auto and not choices.preallocate:
        record["preallocate"] = {"value": False,
                                 "why": "writes at depth 1: files are written as they grow, block "
                                        "allocation timed (as IOR, fio --fallocate=none)"}
    if config.workload == "train" and config.train.read_threads == AUTO:
        record["read_threads"] = {"value": read_threads(config), "why": read_threads_why(config)}
    if files and config.io.engine == AUTO and config.storage.library == "native":
        deepest = max(choices.read_depth, choices.write_depth)
        if deepest == 1:
            why = "depth 1: one pwrite/preadv per transfer from the rank's thread (no engine needed)"
        elif engine == "io_uring":
            why = "depth > 1: one thread keeps the I/Os in flight in an io_uring ring (the kernel allows it)"
        else:
            why = "depth > 1: io_uring is unavailable here, one thread per I/O in flight"
        record["io_engine"] = {"value": engine if deepest > 1 else "sync", "why": why}
    return choices


#: train's reader threads where the files' I/O waits overlap (evicted, O_DIRECT, S3, compute).
READ_THREADS_OVERLAP = 4


def cached_without_compute(config: Config) -> bool:
    """Whether train reads files expected in the page cache (local_fs, train.cache=warm)
    with no emulated compute to overlap: then reading is CPU under the GIL alone."""
    from mpibench.mlperf import effective

    return (config.storage.type == "local_fs" and config.train.cache == "warm"
            and effective(config.train).computation_time == 0)


def read_threads(config: Config) -> int:
    """train's reader threads per rank: train.read_threads, or the automatic choice."""
    if config.train.read_threads != AUTO:
        return int(config.train.read_threads)
    return 1 if cached_without_compute(config) else READ_THREADS_OVERLAP


def read_threads_why(config: Config) -> str:
    """Why read_threads(config) chose what it did (train.read_threads: auto)."""
    if cached_without_compute(config):
        return ("local_fs with train.cache=warm and no compute to overlap: each file is a page-cache copy "
                "done under the GIL, so a second thread only adds hand-offs; the rank's own thread reads "
                "(cached 4 KB files, decode off: 4.2x the files/s of 4 reader threads, whose reader waited "
                "83 % of its time on hand-offs; docs/performance.md)")
    return (f"{READ_THREADS_OVERLAP} threads overlap the waits of evicted files, O_DIRECT or S3 reads "
            "and the emulated compute (evicted 4 KB files, decode off: 1.1-1.35 of a one-file-at-a-time loop)")


_libc: Any = None


def fallocate(fd: int, offset: int, length: int) -> str | None:
    """Reserve the blocks of [offset, offset + length) of an open file (fallocate(2), mode 0:
    the size grows to cover them); None when done, else why it could not be (never falls
    back to writing zeros, as posix_fallocate would)."""
    global _libc
    if length <= 0:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if _libc.fallocate(fd, 0, offset, length) == 0:
        return None
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS):
        return "the filesystem does not support fallocate"
    raise OSError(code, os.strerror(code))

