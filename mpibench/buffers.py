"""Page-aligned I/O buffers and the seeded data written into them.

A buffer is allocated once per rank (per I/O thread) with ``mmap`` so it is page-aligned,
as O_DIRECT needs, and reused for every transfer. Its content is seeded random bytes per
file (so compression gains nothing), and every 4 KiB block carries an 8-byte stamp of its
file and offset (so deduplication gains nothing and a misplaced read is caught). Only the
stamps change between transfers, which costs a few microseconds per MiB.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import struct
import sys
from typing import Any

import numpy as np

from mpibench.errors import BenchIOError
from mpibench.plan import PAGE
from mpibench.units import format_size

STAMP_STRIDE = 4096
_WORD = struct.Struct("<Q")
# Up to this many stamps per transfer, struct.pack_into beats numpy's per-call overhead
# (measured: 8 stamps 2.3 µs either way, 16 stamps 4.2 µs packed vs 2.3 µs with numpy).
_PACK_LIMIT = 8


# glibc's malloc settings kept by keep_freed_heap (32 MiB is the largest mmap threshold
# glibc takes), with mallopt's parameter numbers (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD).
KEEP_HEAP = {"trim_threshold": 128 * 1024**2, "mmap_threshold": 32 * 1024**2}
_MALLOPT = {"trim_threshold": -1, "mmap_threshold": -3}
_MALLOC_STATE: dict[str, Any] = {}


def keep_freed_heap() -> dict[str, Any]:
    """Tell glibc's malloc to keep freed memory for reuse instead of returning it to the kernel.

    A client library that allocates each request's buffers (s3dlio: a copy of each PUT
    body, each GET's response) frees them a moment later; by default glibc then gives
    the top of its heap back (madvise / brk) when more than a threshold is free there,
    and the next requests fault the same pages in again, zeroed by the kernel, a cost
    that varies with the heap's history and is no part of the storage's work. With the
    heap kept (up to `trim_threshold` free at its top, and blocks up to
    `mmap_threshold` served from it) those pages are faulted once. Settings the user
    gives (MALLOC_*_ variables or GLIBC_TUNABLES) are left alone. Called before the
    first s3dlio call in a process; returns what is in force, recorded in the results
    (`applied` false on a C library other than glibc)."""
    if _MALLOC_STATE:
        return _MALLOC_STATE
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    state: dict[str, Any] = {"applied": False}
    if platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for name, value in KEEP_HEAP.items():
            if os.environ.get(f"MALLOC_{name.upper()}_") or f"glibc.malloc.{name}=" in tunables:
                state[name] = "set by the user"
            elif libc.mallopt(_MALLOPT[name], value) == 1:
                state[name] = value
                state["applied"] = True
    _MALLOC_STATE.update(state)
    return _MALLOC_STATE


HUGE_PAGE = 2 * 1024**2
# MADV_COLLAPSE (Linux 6.1): back a range with huge pages now, or fail; Python < 3.12 lacks the name.
_MADV_COLLAPSE = getattr(mmap, "MADV_COLLAPSE", 25)
_HUGE = {"on": False}
# What this process asked for and got in huge pages (see use_huge_pages); read at each phase end.
huge_page_bytes = {"requested": 0, "granted": 0}


def use_huge_pages(on: bool) -> None:
    """From now on, put the buffers of aligned_buffer larger than a page in 2 MiB
    transparent huge pages (the run's `huge_pages` setting; every rank calls it)."""
    _HUGE["on"] = bool(on)


def buffer_footprint(size: int, huge: bool) -> int:
    """The memory aligned_buffer takes for `size` bytes (rounded to huge pages if `huge`)."""
    size = max(size, 1)
    if huge and size > PAGE:
        return -(-size // HUGE_PAGE) * HUGE_PAGE
    return -(-size // PAGE) * PAGE


def aligned_buffer(size: int) -> mmap.mmap:
    """An anonymous, page-aligned, zero-filled buffer of at least `size` bytes.

    Private memory, as a program's own (malloc, numpy, a framework's tensors) is. With
    use_huge_pages on, a buffer larger than a page is a whole number of 2 MiB pages that
    the kernel backs with transparent huge pages, each physically contiguous: a transfer
    then reaches the device as one segment per 2 MiB instead of one per 4 KiB page, which
    decides how many requests a large transfer becomes (a queue's max_segments).
    Memory the kernel refuses (ENOMEM, a ulimit -v) is a one-line BenchIOError.
    """
    huge = _HUGE["on"] and size > PAGE
    length = buffer_footprint(size, True) if huge else max(size, 1)
    try:
        buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except MemoryError:
        raise out_of_memory(size) from None
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise out_of_memory(size) from None
        raise
    if huge:
        _back_with_huge_pages(buf)
    return buf


def _back_with_huge_pages(buf: mmap.mmap) -> None:
    """Ask for huge pages, fault them in and confirm them (MADV_COLLAPSE succeeds only when
    the whole range is, or could be made, huge pages); count what was granted."""
    huge_page_bytes["requested"] += len(buf)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
        for at in range(0, len(buf), HUGE_PAGE):
            buf[at] = 0  # the first write of each 2 MiB faults in a huge page where one is free
        buf.madvise(_MADV_COLLAPSE)
    except (OSError, AttributeError, ValueError):
        return  # not confirmed: the buffer works, in 4 KiB pages; the results say how much
    huge_page_bytes["granted"] += len(buf)


def transparent_huge_pages() -> str:
    """This host's transparent huge page mode (always, madvise, never), or "" where the
    kernel has none."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def out_of_memory(size: int | None = None) -> BenchIOError:
    """The error for memory this rank could not get (its I/O buffers, the data it encodes)."""
    what = (f"a {format_size(size)} ({size} bytes) I/O buffer" if size is not None
            else "this rank's buffers and data content")
    return BenchIOError(f"cannot allocate {what}: out of memory [ENOMEM]",
                        "lower the transfer, record or thread counts, or run fewer ranks per node",
                        errno=errno.ENOMEM)


def file_seed(seed: int, *parts: int) -> np.random.SeedSequence:
    """The seed of one file's content, from the run seed and the file's identity."""
    return np.random.SeedSequence([seed, *parts])


def fill_random(view: memoryview | mmap.mmap, seed: np.random.SeedSequence) -> None:
    """Fill a writable buffer with reproducible random bytes."""
    arr = np.frombuffer(view, dtype=np.uint8)
    rng = np.random.Generator(np.random.PCG64(seed))
    words = len(arr) // 8
    if words:
        arr[: words * 8].view(np.uint64)[:] = rng.bit_generator.random_raw(words)
    tail = len(arr) - words * 8
    if tail:
        arr[words * 8:] = rng.integers(0, 256, tail, dtype=np.uint8)


class DataPattern:
    """The content of one file: seeded random bytes with a stamp in every 4 KiB block.

    The byte at file offset ``o`` depends only on (seed, file id, o mod transfer size,
    o // 4096): so any rank can regenerate and check what any other rank wrote.
    """

    def __init__(self, seed: int, file_id: int, transfer_size: int) -> None:
        self.file_id = file_id
        self.transfer_size = transfer_size
        self.base = aligned_buffer(transfer_size)
        fill_random(self.base, file_seed(seed, file_id, transfer_size))
        self._stamps = transfer_size % 8 == 0 and transfer_size >= 8
        stride = min(STAMP_STRIDE, transfer_size)
        self._stride_words = stride // 8 if self._stamps else 0
        count = transfer_size // stride if self._stamps else 0
        self._block_offsets = np.arange(count, dtype=np.uint64) * np.uint64(stride)
        self._key = np.uint64((file_id & 0xFFFFF) << 44)

    def for_file(self, file_id: int) -> DataPattern:
        """The same base bytes with another file's stamps (many files, one base in memory)."""
        other = copy.copy(self)
        other.file_id = file_id
        other._key = np.uint64((file_id & 0xFFFFF) << 44)
        return other

    def new_buffer(self) -> mmap.mmap:
        """A page-aligned buffer holding the base content, ready for :meth:`stamp`."""
        buf = aligned_buffer(max(self.transfer_size, PAGE))
        buf[: self.transfer_size] = self.base[: self.transfer_size]
        return buf

    def stamp(self, buf: mmap.mmap | memoryview, offset: int) -> None:
        """Write the stamps of the transfer at file `offset` into a buffer from new_buffer."""
        if not self._stamps:
            return
        key = offset | int(self._key)
        count = len(self._block_offsets)
        if count <= _PACK_LIMIT:
            stride = self._stride_words * 8
            pack = _WORD.pack_into
            for i in range(count):
                pack(buf, i * stride, key + i * stride)
            return
        words = np.frombuffer(buf, dtype=np.uint64, count=self.transfer_size // 8)
        np.add(self._block_offsets, np.uint64(key), out=words[:: self._stride_words])

    def single_stamp(self, buf: mmap.mmap) -> tuple[memoryview, int] | None:
        """For a transfer holding one stamp: `(words, key)`, where ``words[0] = key | offset``
        stamps `buf` for a file offset with no function call (a loop can do it inline);
        None when the transfer holds several stamps or none (use :meth:`stamper`)."""
        if not self._stamps or len(self._block_offsets) != 1 or sys.byteorder != "little":
            return None
        return memoryview(buf).cast("Q"), int(self._key)  # native order is the stamps' "<Q"

    def stamper(self, buf: mmap.mmap) -> Any:
        """A function stamping `buf` for a file offset, as cheap as the transfer size allows."""
        if not self._stamps:
            return lambda offset: None
        key = int(self._key)
        count = len(self._block_offsets)
        pack = _WORD.pack_into
        if count == 1:
            return lambda offset: pack(buf, 0, key | offset)
        if count <= _PACK_LIMIT:
            positions = (np.arange(count) * self._stride_words * 8).tolist()

            def stamp_few(offset: int) -> None:
                at = key | offset
                for position in positions:
                    pack(buf, position, at + position)

            return stamp_few
        words = np.frombuffer(buf, dtype=np.uint64, count=self.transfer_size // 8)[:: self._stride_words]
        block_offsets = self._block_offsets

        def stamp_many(offset: int) -> None:
            np.add(block_offsets, np.uint64(key | offset), out=words)

        return stamp_many

    def expected(self, offset: int, scratch: mmap.mmap) -> memoryview:
        """The exact bytes of the transfer at `offset` (built in `scratch`)."""
        scratch[: self.transfer_size] = self.base[: self.transfer_size]
        self.stamp(scratch, offset)
        return memoryview(scratch)[: self.transfer_size]

    def first_mismatch(self, data: memoryview | mmap.mmap, offset: int, length: int,
                       scratch: mmap.mmap) -> int:
        """File offset of the first byte that differs from the pattern, or -1."""
        want = np.frombuffer(self.expected(offset, scratch), dtype=np.uint8, count=length)
        got = np.frombuffer(data, dtype=np.uint8, count=length)
        if np.array_equal(want, got):
            return -1
        return offset + int(np.flatnonzero(want != got)[0])


class BufferPool:
    """A rank's working buffers, allocated once and reused by every phase, as IOR and fio
    allocate theirs before they time anything.

    Allocating inside a timed phase charged its first transfers with the kernel zeroing
    (and, in a VM, the host backing) fresh memory: with 16 MiB transfers about 50 ms of a
    0.47 s phase. A workload keeps its buffers in its untimed setup (:meth:`take` with
    keep), and the engine takes the same ones again inside the phase; sizes nobody kept
    (a checkpoint shard's tail) get fresh buffers each time. Writes and reads share the
    buffers (a rank runs one region at a time), so memory stays one buffer per I/O in
    flight. Write buffers hold a pattern's base content, copied in again only when another
    base is wanted or a read has overwritten it, which is why a workload takes them again
    before each write phase; every transfer rewrites all its stamps, so patterns sharing
    a base (DataPattern.for_file) share buffers.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, list[mmap.mmap]] = {}
        self._holds: dict[int, Any] = {}  # id(buffer) -> the base whose bytes it holds

    def take(self, writing: bool, transfer_size: int, count: int,
             pattern: DataPattern | None = None, keep: bool = False) -> list[mmap.mmap]:
        """`count` buffers for transfers of `transfer_size`; for writes, holding `pattern`'s
        base. Kept ones (`keep`, or a size kept before) are reused by later calls."""
        key = transfer_size
        kept = keep or key in self._buffers
        found = self._buffers.setdefault(key, []) if kept else []
        while len(found) < count:
            buf = aligned_buffer(max(transfer_size, PAGE))
            np.frombuffer(buf, dtype=np.uint8)[::PAGE] = 0  # fault every page in now, untimed
            found.append(buf)
        bufs = found[:count]
        for buf in bufs:
            if not writing or pattern is None:
                self._holds.pop(id(buf), None)  # a read overwrites what it held
            elif not kept or self._holds.get(id(buf)) is not pattern.base:
                buf[:transfer_size] = pattern.base[:transfer_size]
                if kept:  # only a kept buffer's id stays its own (a freed one's is reused)
                    self._holds[id(buf)] = pattern.base
        return bufs
