"""Page-aligned I/O buffers and the seeded data written into them.

A buffer is allocated once per rank (per I/O thread) with ``mmap`` so it is page-aligned,
as O_DIRECT needs, and reused for every transfer. Its content is seeded random bytes per
file (so compression gains nothing), and every 4 KiB block carries an 8-byte stamp of its
file and offset (so deduplication gains nothing and a misplaced read is caught). Only the
stamps change between transfers, which costs a few microseconds per MiB.
"""

from __future__ import annotations

import copy
import errno
import mmap
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


def aligned_buffer(size: int) -> mmap.mmap:
    """An anonymous, page-aligned, zero-filled buffer of at least `size` bytes.

    Memory the kernel refuses (ENOMEM, a ulimit -v) is a one-line BenchIOError.
    """
    try:
        return mmap.mmap(-1, max(size, 1))
    except MemoryError:
        raise out_of_memory(size) from None
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise out_of_memory(size) from None
        raise


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
