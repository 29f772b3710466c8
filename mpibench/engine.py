"""The transfer loop shared by the workloads: aligned I/Os over one file region, at a
given queue depth, timed per operation, stoppable between operations."""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench.buffers import DataPattern, aligned_buffer
from mpibench.errors import BenchIOError, VerifyError
from mpibench.metrics import FLUSH_EVERY, PhaseRecorder

if TYPE_CHECKING:
    from mpibench.run import RunContext

POLL_INTERVAL_NS = 5_000_000  # look for another rank's stop notice at most every 5 ms


def transfer_region(ctx: RunContext, rec: PhaseRecorder, handle: Any, op: str, path: str,
                    base: int, offsets: np.ndarray, transfer_size: int, pattern: DataPattern,
                    *, verify: bool = False, deadline_ns: int = 0) -> int:
    """Write or read `transfer_size` bytes at base + each offset; return the bytes moved.

    With ctx.io_depth > 1, that many threads each keep one I/O in flight (os.preadv and
    os.pwritev release the GIL); the main thread keeps polling for a stop notice. Writes
    to a backend that takes them only in order (random_write false: an S3 upload) use
    one thread; such a backend keeps its own writes in flight.
    """
    depth = max(1, min(ctx.io_depth, len(offsets)))
    if op == "write" and not ctx.backend.random_write:
        depth = 1
    if depth == 1:
        return _loop(ctx, rec, handle, op, path, base, offsets, transfer_size, pattern,
                     verify, deadline_ns, None, None)
    counter = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []
    moved = [0] * depth

    def worker(slot: int) -> None:
        try:
            moved[slot] = _loop(ctx, rec, handle, op, path, base, offsets, transfer_size,
                                pattern, verify, deadline_ns, counter, stop)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(depth)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.005)
                ctx.check_stop()
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join()
        raise
    if errors:
        raise errors[0]
    return sum(moved)


def _loop(ctx: RunContext, rec: PhaseRecorder, handle: Any, op: str, path: str, base: int,
          offsets: np.ndarray, transfer_size: int, pattern: DataPattern, verify: bool,
          deadline_ns: int, counter: Any, stop: threading.Event | None) -> int:
    """One thread's I/Os. The per-operation path is kept to a few hundred nanoseconds:
    stamp, time, call, append; everything else (deadline, faults, stop notices) is
    checked only when the clock passes `next_check`."""
    writing = op == "write"
    buf = pattern.new_buffer()
    view = memoryview(buf)[:transfer_size]
    io = ctx.backend.writer(handle, view) if writing else ctx.backend.reader(handle, view)
    stamp = pattern.stamper(buf) if writing else None
    scratch = aligned_buffer(transfer_size) if verify and not writing else None
    log = rec.new_log()
    entries = log.entries
    extend = entries.extend  # one append per operation; folded every FLUSH_EVERY operations
    flush_at = 3 * FLUSH_EVERY
    clock = time.perf_counter_ns
    threaded = counter is not None
    fault = ctx.fault
    never = 1 << 62
    stop_at = deadline_ns or never

    def next_check_after(now: int) -> int:
        # Stop notices are polled by this thread only when it is the only one (else the
        # main thread polls); faults fire after a number of operations.
        if fault is not None:
            return 0
        return min(stop_at, now + POLL_INTERVAL_NS if not threaded else never)

    next_check = next_check_after(clock())
    absolute = (offsets + base).tolist()
    total = len(absolute)
    index = -1
    moved = 0
    while True:
        if threaded:
            index = next(counter)
            if index >= total or stop.is_set():  # type: ignore[union-attr]
                break
            offset = absolute[index]
        else:
            index += 1
            if index >= total:
                break
            offset = absolute[index]
        if stamp is not None:
            stamp(offset)
        start = clock()
        n = io(offset)
        end = clock()
        extend((n, start, end))
        moved += n
        if len(entries) >= flush_at:
            log.flush()
        if not writing:
            if n < transfer_size:
                raise BenchIOError(
                    f"read {path} at offset {offset}: expected {transfer_size} bytes, got {n}",
                    "the file is shorter than written: was it truncated or replaced by another process?",
                    path=path)
            if verify:
                bad = pattern.first_mismatch(view, offset, transfer_size, scratch)  # type: ignore[arg-type]
                if bad >= 0:
                    raise VerifyError(
                        f"data verification failed: {path} differs from what was written at offset {bad}",
                        "the storage returned wrong data", path=path)
        if end >= next_check:
            if end >= stop_at:
                rec.stonewalled = True
                if stop is not None:
                    stop.set()
                break
            if fault is not None and log.ops >= fault.after_ops:
                injected, fault, ctx.fault = fault, None, None
                injected.trigger()
            if not threaded:
                ctx.check_stop(end)
            next_check = next_check_after(end)
    return moved
