"""Partition maths: which files, offsets and lengths each rank touches (pure: no MPI, no I/O).

Every rank computes its own part from the same configuration, so no listing of the
storage and no large broadcast is needed, whatever the number of ranks. Nothing here
builds a per-file Python object for the whole dataset: shuffles are bijective functions
evaluated only on the indices a rank owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

PAGE = 4096
RUN_DIR_PREFIX = "mpibench-"
RUN_MARKER = ".mpibench-run"


def part_range(total: int, parts: int, part: int) -> tuple[int, int]:
    """(start, count) of part `part` when `total` units are split as evenly as possible.

    The first `total % parts` parts get one unit more, so counts differ by at most one.
    """
    if parts <= 0 or not 0 <= part < parts:
        raise ValueError(f"part {part} out of range for {parts} parts")
    base, extra = divmod(total, parts)
    start = part * base + min(part, extra)
    return start, base + (1 if part < extra else 0)


def aligned_slice(total_bytes: int, unit: int, parts: int, part: int) -> tuple[int, int]:
    """(offset, length) in bytes of one part of a range split in whole `unit`s.

    Offsets are multiples of `unit`; the last part takes the remainder that is not a
    whole unit, so every byte is covered exactly once.
    """
    units, tail = divmod(total_bytes, unit)
    start, count = part_range(units, parts, part)
    length = count * unit
    if part == parts - 1:
        length += tail
    return start * unit, length


def round_up(value: int, alignment: int) -> int:
    """The smallest multiple of `alignment` that is >= value."""
    return -(-value // alignment) * alignment


def round_down(value: int, alignment: int) -> int:
    """The largest multiple of `alignment` that is <= value."""
    return value // alignment * alignment


def nearest_aligned(value: int, alignment: int) -> tuple[int, int]:
    """The multiples of `alignment` just below and above value (below is at least one unit)."""
    return max(alignment, round_down(value, alignment)), round_up(value, alignment)


def reorder_partner(rank: int, size: int, ranks_per_node: int, num_nodes: int) -> int:
    """The rank whose data `rank` reads back, as IOR's -C does.

    Shifting by the ranks of one node makes every rank read data written from another
    node, so no client cache can serve it; on one node the shift is one rank.
    """
    if size <= 1:
        return rank
    shift = ranks_per_node if num_nodes > 1 else 1
    return (rank + shift) % size


class FeistelPermutation:
    """A seeded bijection of range(n), evaluated on demand (no array of size n).

    A balanced Feistel network over the smallest even power of two >= n, with cycle
    walking to stay inside range(n). Each rank evaluates it only for its own positions,
    so a shuffle of ten million files costs no more memory than the rank's share.
    """

    ROUNDS = 4

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("permutation of an empty range")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half_bits = bits // 2
        self.mask = np.uint64((1 << self.half_bits) - 1)
        rng = np.random.default_rng(np.random.SeedSequence([seed, n]))
        self.keys = rng.integers(0, 2**63, size=self.ROUNDS, dtype=np.uint64)

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        # splitmix64-style mixing of (right, key); only the low half_bits are kept.
        with np.errstate(over="ignore"):
            z = right * np.uint64(0x9E3779B97F4A7C15) + key
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        return z & self.mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        hb = np.uint64(self.half_bits)
        left = x >> hb
        right = x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << hb) | right

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        """The permuted positions of the given indices (each in range(n))."""
        x = np.atleast_1d(np.asarray(index, dtype=np.uint64))
        if x.size and int(x.max()) >= self.n:
            raise ValueError("index out of range")
        out = self._encrypt(x)
        outside = out >= self.n
        while outside.any():
            out[outside] = self._encrypt(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)


class EpochShare:
    """The files one rank reads in one epoch, made a slice at a time, never all at once.

    Every file once per epoch across ranks; shares differ by at most one file. With
    shuffle the assignment and the order change every epoch, seeded (a Feistel bijection
    on the file indices, so any position is computable alone); without it rank r reads a
    contiguous run of files, the same each epoch. Memory is one slice, whatever the
    dataset size; `share[position]` computes (and keeps) the slice holding `position`.
    """

    SLICE = 1 << 14

    def __init__(self, num_files: int, size: int, rank: int, epoch: int, shuffle: bool, seed: int) -> None:
        self.start, self.count = part_range(num_files, size, rank)
        self.perm = (FeistelPermutation(num_files, seed * 1_000_003 + epoch)
                     if shuffle and self.count else None)
        self._held: tuple[int, np.ndarray | None] = (-1, None)

    def __len__(self) -> int:
        return self.count

    def slice(self, first: int, last: int) -> np.ndarray:
        """The file indices at positions first..last-1 of the rank's epoch order."""
        last = min(last, self.count)
        positions = np.arange(self.start + first, self.start + max(first, last), dtype=np.int64)
        return positions if self.perm is None else self.perm(positions)

    def slices(self) -> Iterator[np.ndarray]:
        """The whole share in order, one slice of at most SLICE files at a time."""
        for first in range(0, self.count, self.SLICE):
            yield self.slice(first, first + self.SLICE)

    def __getitem__(self, position: int) -> int:
        block = position // self.SLICE
        held, values = self._held  # one tuple: threads see a consistent pair
        if held != block or values is None:
            values = self.slice(block * self.SLICE, (block + 1) * self.SLICE)
            self._held = (block, values)
        return int(values[position - block * self.SLICE])


def epoch_files(num_files: int, size: int, rank: int, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
    """The file indices `rank` reads in `epoch`, all at once (see EpochShare)."""
    share = EpochShare(num_files, size, rank, epoch, shuffle, seed)
    return share.slice(0, len(share)) if len(share) <= share.SLICE else np.concatenate(list(share.slices()))


def file_name(index: int, num_files: int, ext: str, num_subfolders: int) -> str:
    """The deterministic relative name of dataset file `index` (no listing needed)."""
    return file_names(num_files, ext, num_subfolders)(index)


def file_names(num_files: int, ext: str, num_subfolders: int, prefix: str = "") -> Callable[[int], str]:
    """file_name of any index, as one function made once (`prefix` put before each name):
    a loader naming every file saves the format's parsing per file."""
    width = max(7, len(str(num_files)))
    pattern = f"img_{{:0{width}d}}_of_{num_files:0{width}d}.{ext}"
    if num_subfolders > 0:
        named = pattern.format
        return lambda index: f"{prefix}{index % num_subfolders:05d}/{named(index)}"
    return (prefix + pattern).format


@dataclass(frozen=True)
class BandwidthFile:
    """One file (or shared-file slice) a rank writes or reads in the bandwidth test."""

    key: str  # path relative to the run directory
    owner: int  # rank that writes it (its data pattern depends on this)
    offset: int  # first byte of the rank's slice
    length: int  # bytes of the slice


def bandwidth_file(file_mode: str, rank: int, block_size: int) -> BandwidthFile:
    """The file or slice `rank` writes: its own file, or slice `rank` of the shared file."""
    if file_mode == "shared":
        return BandwidthFile("bandwidth/shared.dat", rank, rank * block_size, block_size)
    return BandwidthFile(f"bandwidth/rank-{rank:06d}.dat", rank, 0, block_size)


def transfer_offsets(length: int, transfer_size: int, access: str, seed: int) -> np.ndarray:
    """Offsets (relative to the slice) of the transfers covering `length` bytes.

    Sequential order, or a seeded random permutation of the same transfers (each once).
    """
    count = length // transfer_size
    order = np.arange(count, dtype=np.int64)
    if access == "random" and count > 1:
        order = np.random.default_rng(np.random.SeedSequence([seed, count])).permutation(count)
    return order * transfer_size
