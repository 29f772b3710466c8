"""IOR-like bandwidth test: every rank writes its block, then reads another rank's back."""

from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench.backends.base import AccessHints, io_error
from mpibench.buffers import DataPattern, buffer_footprint
from mpibench.choices import fallocate
from mpibench.config import Config
from mpibench.engine import prepare_buffers, timed_close, timed_fsync, transfer_region
from mpibench.errors import ConfigError
from mpibench.metrics import PhaseRecorder
from mpibench.plan import (
    bandwidth_file,
    nearest_aligned,
    reorder_partner,
    round_up,
    transfer_offsets,
)
from mpibench.units import format_exact_size
from mpibench.workloads.base import Workload

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext


def check_alignment(key: str, value: int, alignment: int, fstype: str = "") -> None:
    """A ConfigError naming the alignment and the nearest valid sizes when misaligned."""
    if alignment > 1 and value % alignment:
        low, high = nearest_aligned(value, alignment)
        if low == high:  # below one unit: the nearest valid size is the alignment itself
            other = round_up(4096, alignment) if round_up(4096, alignment) > low else 2 * low
            hint = (f"use a multiple of {alignment} such as {format_exact_size(low)} "
                    f"or {format_exact_size(other)}")
        else:
            hint = f"use {format_exact_size(low)} or {format_exact_size(high)}"
        raise ConfigError(
            f"{key}={value} is not a multiple of the direct-I/O alignment {alignment} bytes"
            + (f" of this {fstype} filesystem" if fstype else ""),
            hint,
        )


class BandwidthWorkload(Workload):
    """Sequential (or random) write then read of block_size bytes per rank per iteration."""

    name = "bandwidth"
    preallocates_writes = True

    def planned_bytes(self, config: Config, size: int) -> int:
        return config.bandwidth.block_size * size

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        # Per rank: the write and the read pattern, one buffer per I/O in flight (never
        # more than the block's transfers; kept for every phase) and, verifying, a scratch buffer.
        bw = config.bandwidth
        depth = max(1, min(io_depth, bw.block_size // bw.transfer_size))
        count = depth + 2 + (1 if config.verify else 0)
        return (count * buffer_footprint(bw.transfer_size, config.huge_pages),
                f"bandwidth.transfer_size x (io_depth {depth} + 2)",
                "lower bandwidth.transfer_size or io.depth, or run fewer ranks per node")

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        # One object per transfer: every write is one PUT, every read one GET.
        if config.bandwidth.object_size == config.bandwidth.transfer_size:
            return io_depth
        return super().requests_in_flight(config, io_depth)

    def access_hints(self, config: Config) -> AccessHints:
        """A shared file or one per rank, in order or at random, split into objects or not."""
        bw = config.bandwidth
        return AccessHints(shared_file=bw.file_mode == "shared", random_writes=bw.access == "random",
                           transfer_size=bw.transfer_size, block_size=bw.block_size, object_size=bw.object_size)

    def check(self, config: Config, size: int, alignment: int) -> None:
        bw = config.bandwidth
        check_alignment("bandwidth.transfer_size", bw.transfer_size, alignment)
        check_alignment("bandwidth.block_size", bw.block_size, alignment)

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        backend.makedirs(f"{info.run_key}/bandwidth")

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        bw = config.bandwidth
        mine = bandwidth_file(bw.file_mode, rank, bw.block_size)
        partner = reorder_partner(rank, size, ranks_per_node, num_nodes) if bw.reorder_reads else rank
        theirs = bandwidth_file(bw.file_mode, partner, bw.block_size)
        return {
            "rank": rank,
            "write": {"file": mine.key, "offset": mine.offset, "bytes": mine.length,
                      "transfers": mine.length // bw.transfer_size},
            "read": {"file": theirs.key, "offset": theirs.offset, "bytes": theirs.length,
                     "written_by": partner},
        }

    def run(self, ctx: RunContext) -> None:
        config = ctx.config
        bw = config.bandwidth
        comm = ctx.comm
        layout = ctx.layout
        mine = bandwidth_file(bw.file_mode, comm.rank, bw.block_size)
        partner = comm.rank
        if bw.reorder_reads:
            partner = reorder_partner(comm.rank, comm.size, max(layout.ranks_per_node), layout.num_nodes)
        theirs = bandwidth_file(bw.file_mode, partner, bw.block_size)
        # Every rank makes its content before the first phase; out of memory on any one
        # ends them all the same way (ctx.setup), with the cleanup.
        write_offsets = transfer_offsets(mine.length, bw.transfer_size, bw.access, config.seed + comm.rank)
        read_offsets = transfer_offsets(theirs.length, bw.transfer_size, bw.access, config.seed + 7919 * comm.rank + 1)

        def make_content() -> tuple[DataPattern, DataPattern]:
            write, read = (DataPattern(config.seed, mine.owner, bw.transfer_size),
                           DataPattern(config.seed, theirs.owner, bw.transfer_size))
            prepare_buffers(ctx, "write", len(write_offsets), bw.transfer_size, write)
            prepare_buffers(ctx, "read", len(read_offsets), bw.transfer_size, None)
            return write, read

        write_pattern, read_pattern = ctx.setup(make_content)
        cache = self._cache_state(ctx)
        written: dict[str, int] = {}

        def write_body(rec: PhaseRecorder) -> None:
            self._one_file(ctx, rec, "write", mine.key, mine.offset, write_offsets, write_pattern)
            written["ops"] = rec.ops

        for iteration in range(bw.iterations):
            if iteration > 0 and not bw.overwrite:
                self._remove_written(ctx)
            if iteration > 0:  # untimed: the base content back into the buffers the reads used
                prepare_buffers(ctx, "write", len(write_offsets), bw.transfer_size, write_pattern)
            if ctx.choices.preallocate:  # untimed: see mpibench.choices
                ctx.setup(lambda: preallocate(ctx, ctx.key(mine.key), mine.offset, mine.length))
            ctx.phase("write", iteration, write_body,
                      expected_bytes=bw.block_size * comm.size, cache=self._write_cache(ctx), file_mode=bw.file_mode, transfer_size=bw.transfer_size,
                      block_size=bw.block_size, io_depth=ctx.write_io_depth, access=bw.access,
                      fsync=bw.fsync, fresh_files=iteration == 0 or not bw.overwrite,
                      preallocated=ctx.choices.preallocate)
            if bw.deadline > 0:
                # A stonewalled writer wrote only its first transfers (a prefix of its
                # order, whatever the io_depth): read back exactly those, as IOR does.
                counts = comm.allgather(written.get("ops", 0))
                partner_order = transfer_offsets(theirs.length, bw.transfer_size, bw.access, config.seed + partner)
                read_offsets = np.sort(partner_order[: counts[partner]])
                if bw.access == "random":
                    read_offsets = np.random.default_rng(config.seed + 7919 * comm.rank + 1).permutation(read_offsets)
            evicted = None
            if cache["state"] == "cold":
                comm.barrier()  # every writer has closed its file before anyone evicts
                evicted = ctx.backend.evict(ctx.key(theirs.key))
            phase = ctx.phase("read", iteration,
                              functools.partial(self._one_file, ctx, op="read", key=theirs.key, base=theirs.offset,
                                                offsets=read_offsets, pattern=read_pattern),
                              expected_bytes=bw.block_size * comm.size,
                              cache=dict(cache, evicted=evicted) if evicted is not None else cache,
                              file_mode=bw.file_mode, transfer_size=bw.transfer_size,
                              block_size=bw.block_size, io_depth=ctx.io_depth, access=bw.access,
                              reorder_reads=bw.reorder_reads, verified=config.verify)
            if phase is not None:
                annotate_cache(phase)

    def _remove_written(self, ctx: RunContext) -> None:
        """Remove the previous iteration's files before the next write phase, as IOR does
        without -k, so that every iteration measures writes into new files (allocating
        writes), never overwrites in place: each rank its own file, rank 0 a shared one.

        Outside the timed window: the phase's start barrier comes after. The file system's
        deferred work for the removal (the journal commit, with the frees and, on a
        filesystem mounted with `discard`, the discards of the freed blocks) would
        otherwise be done inside the next timed phase, at its first fsync; so once every
        rank has removed, the node's first rank syncs the file system (syncfs)."""
        comm = ctx.comm
        file_mode = ctx.config.bandwidth.file_mode

        def remove() -> None:
            try:
                if file_mode == "per_rank":
                    ctx.backend.remove(ctx.key(bandwidth_file("per_rank", comm.rank, 0).key))
                elif comm.is_root:
                    ctx.backend.remove(ctx.key(bandwidth_file("shared", 0, 0).key))
            finally:
                comm.idle_barrier()  # ranks done first sleep while the others still remove

        ctx.setup(remove)  # every rank has removed its file, or all learn that one could not
        if ctx.layout.local_rank == 0:
            ctx.backend.sync_filesystem()

    def _write_cache(self, ctx: RunContext) -> dict[str, Any]:
        own = ctx.backend.cache_state()
        if own is not None:
            return own
        return {"state": "buffered", "method": "page cache" + (", fsync before close" if ctx.config.bandwidth.fsync else "")}

    def _cache_state(self, ctx: RunContext) -> dict[str, Any]:
        own = ctx.backend.cache_state()
        if own is not None:
            return own
        if ctx.config.bandwidth.cache == "warm":
            return {"state": "warm", "method": "no eviction: the page cache may serve the reads"}
        return {"state": "cold", "method": "posix_fadvise(POSIX_FADV_DONTNEED) by the reading rank before the phase"}

    def _one_file(self, ctx: RunContext, rec: PhaseRecorder, op: str, key: str, base: int,
                  offsets: Any, pattern: DataPattern) -> None:
        bw = ctx.config.bandwidth
        backend = ctx.backend
        storage_key = ctx.key(key)
        path = backend.path_of(storage_key)
        deadline_ns = rec.t0_ns + int(bw.deadline * 1e9) if bw.deadline > 0 else 0
        t = time.perf_counter()
        handle = backend.open(storage_key, "w" if op == "write" else "r")
        rec.open_s += time.perf_counter() - t
        rec.files += 1
        try:
            t = time.perf_counter()
            verify = ctx.config.verify and op == "read"
            transfer_region(ctx, rec, handle, op, path, base, offsets, bw.transfer_size, pattern,
                            verify=verify, deadline_ns=deadline_ns)
            if deadline_ns and bw.stonewall_mode == "wearout":
                # IOR's wear-out: after the deadline every rank goes on until it has moved as
                # many transfers as the rank that moved the most, so all ranks move the same.
                done = rec.ops
                target = int(ctx.comm.allreduce_max_polled(done, ctx.check_stop))
                rec.extra["stonewall_ops_at_deadline"] = done
                if target > done:
                    transfer_region(ctx, rec, handle, op, path, base, offsets[done:target],
                                    bw.transfer_size, pattern, verify=verify)
            rec.transfer_s += time.perf_counter() - t
            if op == "write" and bw.fsync:
                timed_fsync(backend, handle, rec)
        finally:
            timed_close(backend, handle, rec)

    def cleanup(self, ctx: RunContext) -> None:
        if ctx.config.bandwidth.file_mode == "per_rank":
            ctx.backend.remove(ctx.key(bandwidth_file("per_rank", ctx.comm.rank, 0).key))

    def cleanup_shared(self, ctx: RunContext) -> None:
        if ctx.config.bandwidth.file_mode == "shared":
            ctx.backend.remove(ctx.key(bandwidth_file("shared", 0, 0).key))
        ctx.backend.remove_dir(ctx.key("bandwidth"))


def annotate_cache(phase: dict[str, Any]) -> None:
    """Compare bytes requested with bytes the kernel says reached storage, and flag cache hits."""
    cache = phase.get("cache") or {}
    requested = phase["bytes"]
    storage = phase["storage_bytes"]["read_bytes"]
    if cache.get("state") in ("cold", "warm") and requested > 0:
        ratio = storage / requested
        cache["storage_read_ratio"] = ratio
        cache["confirmed"] = ratio >= 0.9
        if ratio < 0.5:
            cache["warning"] = (f"requested {requested} bytes, storage read {storage}: "
                                f"{(1 - ratio) * 100:.0f}% served from the page cache")
        phase["cache"] = cache


def preallocate(ctx: RunContext, key: str, offset: int, length: int) -> None:
    """Outside the timed window: reserve a file's region to be written and make it durable
    (fsync), so that the phase's writes land inside its size (mpibench.choices decides
    when). Where the filesystem cannot, writes go back to depth 1 and the result says why."""
    backend = ctx.backend
    path = backend.path_of(key)
    handle = backend.open(key, "w")
    try:
        fd = backend.fd_for(handle)
        try:
            reason = fallocate(fd, offset, length) if fd is not None else "the backend has no file descriptor"
            if reason is None:
                os.fsync(fd)  # type: ignore[arg-type]
        except OSError as exc:
            raise io_error("preallocate", path, exc, offset) from None
    finally:
        backend.close(handle)
    if reason is not None:
        ctx.choices.preallocate = False
        ctx.choices.write_depth = ctx.write_io_depth = 1
        ctx.choices.record["preallocate"] = {"value": False, "why": f"cannot preallocate {path}: {reason}"}
        ctx.choices.record["write_io_depth"] = {
            "value": 1, "why": "writes that extend a file serialize on this filesystem and it cannot "
                               f"preallocate: writes keep depth 1, reads keep {ctx.io_depth}"}


WORKLOAD = BandwidthWorkload()
