"""The transfer loop shared by the workloads: aligned I/Os over one file region, at a
given queue depth, timed per operation, stoppable between operations."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench import uring
from mpibench.backends import backend_class
from mpibench.backends.base import complete_short, io_error
from mpibench.buffers import DataPattern, aligned_buffer
from mpibench.config import Config
from mpibench.context import POLL_INTERVAL_NS
from mpibench.errors import ConfigError, VerifyError
from mpibench.metrics import FLUSH_EVERY, PhaseRecorder

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import RunContext


def uses_files(config: Config) -> bool:
    """True when the rank's I/O goes through file descriptors of its own (Backend.file_descriptors)."""
    return backend_class(config.storage.type, config.storage.library).file_descriptors


def resolve_io_engine(config: Config) -> str:
    """How io_depth > 1 is kept in flight: 'io_uring', 'threads', or 'none' (no file I/O)."""
    if not uses_files(config):
        return "none"
    wanted = config.io.engine
    if wanted == "threads":
        return "threads"
    reason = uring.unavailable()
    if reason is None:
        return "io_uring"
    if wanted == "io_uring":
        raise ConfigError(f"io.engine=io_uring cannot be used here: {reason}",
                          "set io.engine=auto (io_uring where available) or threads")
    return "threads"


def transfer_region(ctx: RunContext, rec: PhaseRecorder, handle: Any, op: str, path: str,
                    base: int, offsets: np.ndarray, transfer_size: int, pattern: DataPattern,
                    *, verify: bool = False, deadline_ns: int = 0) -> int:
    """Write or read `transfer_size` bytes at base + each offset; return the bytes moved.

    With ctx.io_depth > 1 on a file descriptor and ctx.io_engine "io_uring", one thread
    keeps that many I/Os in flight in an io_uring ring (mpibench.uring). Otherwise that
    many threads each keep one I/O in flight (os.preadv and os.pwrite release the GIL),
    taking the next offset from one shared iterator, so the operations done are always a
    prefix of `offsets`; the main thread keeps polling for a stop notice. Writes to a
    backend that takes them only in order (random_write false: an S3 upload) use one
    thread; such a backend keeps its own writes in flight.
    """
    depth = region_depth(ctx, op, len(offsets))
    absolute = (offsets + base).tolist()
    writing = op == "write"
    bufs = ctx.buffers.take(writing, transfer_size, depth, pattern if writing else None)
    fd = ctx.backend.fd_for(handle) if depth > 1 and ctx.io_engine == "io_uring" else None
    if fd is not None:
        return uring.uring_region(ctx, rec, handle, fd, op, path, absolute, transfer_size, pattern,
                            bufs, verify=verify, deadline_ns=deadline_ns)
    if depth == 1:
        return _loop(ctx, rec, handle, op, path, absolute, transfer_size, pattern, bufs[0],
                     verify, deadline_ns, None)
    shared = iter(absolute)  # a list iterator hands out each item once, under the GIL
    stop = threading.Event()
    errors: list[BaseException] = []
    moved = [0] * depth

    def worker(slot: int) -> None:
        try:
            moved[slot] = _loop(ctx, rec, handle, op, path, shared, transfer_size,
                                pattern, bufs[slot], verify, deadline_ns, stop)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)
            stop.set()

    run_workers(depth, worker, stop, errors, ctx.check_stop)
    return sum(moved)


def run_workers(count: int, target: Callable[[int], None], stop: threading.Event,
                errors: list[BaseException], poll: Callable[[], None] | None) -> None:
    """Run target(slot) on `count` daemon threads and wait for them, calling `poll` (the run's
    stop check) every 5 ms. On an exception in this thread every worker is told to stop
    (`stop`) and joined before it propagates; then the first error a worker handed over in
    `errors` is raised."""
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.005)
                if poll is not None:
                    poll()
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join()
        raise
    if errors:
        raise errors[0]


def region_depth(ctx: RunContext, op: str, transfers: int) -> int:
    """The operations transfer_region keeps in flight for `transfers` transfers (writes and
    reads may differ: mpibench.choices)."""
    if op == "write" and not ctx.backend.random_write:
        return 1
    return max(1, min(ctx.write_io_depth if op == "write" else ctx.io_depth, transfers))


def prepare_buffers(ctx: RunContext, op: str, transfers: int, transfer_size: int,
                    pattern: DataPattern | None) -> None:
    """Outside the timed phases: allocate (and fault in, and fill) the buffers a region of
    `transfers` transfers will take from ctx.buffers."""
    writing = op == "write"
    ctx.buffers.take(writing, transfer_size, region_depth(ctx, op, transfers), pattern if writing else None,
                     keep=True)


def _loop(ctx: RunContext, rec: PhaseRecorder, handle: Any, op: str, path: str,
          offsets: Iterable[int], transfer_size: int, pattern: DataPattern, buf: Any, verify: bool,
          deadline_ns: int, stop: threading.Event | None) -> int:
    """One thread's I/Os at the given absolute offsets, from or into `buf` (from ctx.buffers:
    for writes it holds the pattern's base).

    The per-operation path is kept to a few hundred nanoseconds: stamp (writes), the
    backend's call (for POSIX files os.pwrite/os.preadv itself, no Python frame), one
    clock reading appended to the log (see OpLog: an operation's latency runs from the
    previous completion), one comparison of the bytes moved. Everything else (deadline,
    stop notices, folding the log) is done only when the clock passes
    `next_check`, at most every POLL_INTERVAL_NS, after which the clock is marked anew
    so that work never counts as an operation's latency.
    """
    writing = op == "write"
    backend = ctx.backend
    view = memoryview(buf)[:transfer_size]
    io = backend.writer(handle, view) if writing else backend.reader(handle, view, keep=verify)
    single = pattern.single_stamp(buf) if writing else None
    words, key = single if single is not None else (None, 0)
    stamp = pattern.stamper(buf) if writing and single is None else None
    scratch = aligned_buffer(transfer_size) if verify and not writing else None
    log = rec.new_log(transfer_size)
    entries = log.entries
    note = entries.append  # one append per operation; folded every FLUSH_EVERY entries
    clock = time.perf_counter_ns
    threaded = stop is not None
    stop_at = deadline_ns or (1 << 62)
    offset = -1
    now = clock()
    next_check = min(stop_at, now + POLL_INTERVAL_NS)
    note(-now)
    try:
        for offset in offsets:
            if words is not None:
                words[0] = key | offset  # the stamp of a transfer of one 4 KiB block
            elif stamp is not None:
                stamp(offset)
            n = io(offset)
            end = clock()
            note(end)
            if n != transfer_size:
                complete_short(backend, handle, view, writing, path, offset, n, transfer_size)
                entries[-1] = end = clock()  # the operation ended when it was complete
            if verify:
                bad = pattern.first_mismatch(view, offset, transfer_size, scratch)  # type: ignore[arg-type]
                if bad >= 0:
                    raise VerifyError(
                        f"data verification failed: {path} differs from what was written at offset {bad}",
                        "the storage returned wrong data", path=path)
                note(-clock())
            if end >= next_check:
                if end >= stop_at:
                    rec.stonewalled = True
                    if stop is not None:
                        stop.set()
                    break
                if len(entries) >= FLUSH_EVERY:
                    log.flush()
                if threaded:
                    if stop.is_set():  # type: ignore[union-attr]
                        break
                else:
                    ctx.check_stop(end)
                now = clock()
                next_check = min(stop_at, now + POLL_INTERVAL_NS)
                note(-now)
    except OSError as exc:  # the backend's call failed: name the file and the offset
        raise io_error(op, path, exc, offset) from None
    return log.ops * transfer_size


def timed_fsync(backend: Backend, handle: Any, rec: PhaseRecorder) -> None:
    """fsync a handle, adding the time to the phase's sync seconds."""
    start = time.perf_counter()
    backend.fsync(handle)
    rec.sync_s += time.perf_counter() - start


def timed_close(backend: Backend, handle: Any, rec: PhaseRecorder) -> None:
    """Close a handle (for object stores: commit it), adding the time to the close seconds."""
    start = time.perf_counter()
    pending = backend.uncommitted(handle)  # before close, which lets the handle go
    try:
        backend.close(handle)
    except BaseException:
        rec.uncommitted(pending)  # acknowledged writes whose object never came to be
        raise
    else:
        rec.uncommitted(backend.uncommitted(handle))  # an upload abandoned after a failed write
    finally:
        rec.close_s += time.perf_counter() - start
