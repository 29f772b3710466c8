"""Queue depth from one thread through io_uring, for POSIX files.

With `io.depth` > 1 on local_fs and direct_fs, one thread keeps that many
operations in flight in an io_uring ring (through the `liburing` binding): it prepares
and submits one read or write per free slot, waits, reaps whatever has completed and
refills those slots. Nothing blocks per operation and no completion has
to take the GIL back from another thread, which is what limits a thread per I/O in
CPython (see docs/performance.md). Where io_uring is missing (the binding is not
installed, the kernel lacks it or a seccomp policy forbids it), `io.engine:
auto` falls back to threads and the results say which engine ran.

Every slot owns a page-aligned buffer and an iovec over it for the whole region. An
operation's latency runs from the reap that freed its slot (just before it was prepared
and submitted, as fio's starts at preparation) to the reap that saw it complete; the
clock is read once per reap, not per operation. Operations are prepared in the order of
the offsets and a stop (deadline, another rank's failure) only stops new submissions,
so the operations done are always a prefix of the offsets.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Any

from mpibench.backends.base import complete_short, io_error
from mpibench.buffers import DataPattern, aligned_buffer
from mpibench.context import POLL_INTERVAL_NS
from mpibench.errors import BenchIOError, VerifyError
from mpibench.metrics import FLUSH_EVERY

_import_error = ""
try:  # a binary dependency with Linux x86_64 wheels only
    import liburing as _lu
except Exception as exc:  # pragma: no cover - depends on the platform (not installed, or it fails to load)
    _lu = None
    _import_error = f"{type(exc).__name__}: {exc}"

if TYPE_CHECKING:
    from mpibench.context import RunContext
    from mpibench.metrics import PhaseRecorder

WAIT_S = 0.005  # longest wait for a completion before the loop looks at stop notices again
_DRAIN_S = 5.0  # on an error, how long to wait for the operations still in flight

_probe_result: tuple[str | None] | None = None


def unavailable() -> str | None:
    """Why io_uring cannot be used in this process, or None when it can.

    Creates a ring, submits a no-op and reaps it: this fails where the kernel has no
    io_uring, where a seccomp policy (some container runtimes) or
    kernel.io_uring_disabled forbids it, and where the binding is not installed.
    """
    global _probe_result
    if _probe_result is None:
        _probe_result = (_probe(),)
    return _probe_result[0]


def _probe() -> str | None:
    if _lu is None:
        if _import_error.startswith("ModuleNotFoundError"):
            return "the liburing package is not installed (pip install liburing; Linux x86_64 only)"
        return f"the liburing package does not load ({_import_error})"
    ring = _lu.Ring()
    try:
        _lu.io_uring_queue_init(2, ring)
    except OSError as exc:
        return f"the kernel refused an io_uring ring ({exc.strerror or exc})"
    try:
        cqe = _lu.Cqe()
        sqe = _lu.io_uring_get_sqe(ring)
        _lu.io_uring_prep_nop(sqe)
        _lu.io_uring_submit(ring)
        _lu.io_uring_wait_cqe_timeout(ring, cqe, _lu.timespec(1.0))
        _lu.io_uring_cqe_seen(ring, cqe[0])
    except OSError as exc:
        return f"an io_uring no-op failed ({exc.strerror or exc})"
    finally:
        _lu.io_uring_queue_exit(ring)
    return None


def _ring_entries(depth: int) -> int:
    entries = 1
    while entries < depth:
        entries *= 2
    return entries


def uring_region(ctx: RunContext, rec: PhaseRecorder, handle: Any, fd: int, op: str, path: str,
                 offsets: list[int], transfer_size: int, pattern: DataPattern, bufs: list[Any],
                 *, verify: bool = False, deadline_ns: int = 0) -> int:
    """Write or read `transfer_size` bytes at each absolute offset, `depth` in flight.

    Returns the bytes moved. Short transfers are completed synchronously (writes) or are
    an error (reads), as in the threaded loop; an errno from the kernel becomes the usual
    one-line error naming the file and the offset.
    """
    lu = _lu
    writing = op == "write"
    backend = ctx.backend
    depth = len(bufs)  # one buffer per operation in flight (ctx.buffers; writes hold the base)
    views = [memoryview(buf)[:transfer_size] for buf in bufs]
    iovecs = [lu.Iovec([view]) for view in views]  # held for the whole region
    stamps = [pattern.stamper(buf) for buf in bufs] if writing else None
    scratch = aligned_buffer(transfer_size) if verify and not writing else None
    prep = lu.io_uring_prep_writev if writing else lu.io_uring_prep_readv
    get_sqe, submit, wait = lu.io_uring_get_sqe, lu.io_uring_submit, lu.io_uring_submit_and_wait_timeout
    advance, reaped = lu.io_uring_cq_advance, lu.CqeIter
    wait_ts = lu.timespec(WAIT_S)
    ring, cqe = lu.Ring(), lu.Cqe()
    try:
        lu.io_uring_queue_init(_ring_entries(depth), ring)
    except OSError as exc:
        raise BenchIOError(f"cannot set up an io_uring ring of {_ring_entries(depth)} entries for {path}: "
                           f"{exc.strerror or exc}", "set io.engine=threads", path=path) from None

    log = rec.new_log(transfer_size)
    note = log.entries.append  # -start then end per operation: a pair, see OpLog
    clock = time.perf_counter_ns
    stop_at = deadline_ns or (1 << 62)
    slot_offset = [0] * depth
    slot_start = [0] * depth  # negated: as the log stores a start
    upcoming = iter(offsets)
    pending = 0  # operations prepared whose completion has not been consumed yet
    offset = -1
    try:
        now = clock()
        free = list(range(depth))  # slots whose buffer is idle: refilled, in order, each round
        issuing = True
        next_check = min(stop_at, now + POLL_INTERVAL_NS)
        while True:
            if issuing:
                for slot in free:
                    offset = next(upcoming, -1)
                    if offset < 0:
                        issuing = False
                        break
                    if stamps is not None:
                        stamps[slot](offset)
                    sqe = get_sqe(ring)
                    prep(sqe, fd, iovecs[slot], offset)
                    sqe.user_data = slot
                    slot_offset[slot], slot_start[slot] = offset, -now
                    pending += 1
                    # Submitted at once, as fio does by default (iodepth_batch_submit=1): the
                    # device starts on it while the next slot is prepared. Submitting the
                    # round as one batch saves a system call per operation, but 4 KiB random
                    # reads at depth 16 on a virtio disk then ran at 0.7-0.9 of the rate of
                    # one submission per operation (docs/performance.md).
                    submit(ring)
            free.clear()
            if not pending:
                break
            # Wait for a completion (none when one is already there); at most WAIT_S, so stop
            # notices are seen.
            try:
                wait(ring, cqe, 1, wait_ts)
            except OSError as exc:  # ETIME: nothing completed in WAIT_S; EINTR: a signal
                if exc.errno not in (errno.ETIME, errno.EINTR):
                    raise
                next_check = 0
            now = clock()
            count = 0
            for count in reaped(ring, cqe, 1):  # noqa: B007 - numbered from 1: the count reaped
                done = cqe[0]
                slot = done.user_data
                if done.res != transfer_size:
                    offset = slot_offset[slot]
                    if done.res < 0:
                        raise OSError(-done.res, os.strerror(-done.res))
                    complete_short(backend, handle, views[slot], writing, path, offset, done.res,
                                   transfer_size)
                    now = clock()
                note(slot_start[slot])
                note(now)
                if verify:
                    offset = slot_offset[slot]
                    bad = pattern.first_mismatch(views[slot], offset, transfer_size, scratch)  # type: ignore[arg-type]
                    if bad >= 0:
                        raise VerifyError(
                            f"data verification failed: {path} differs from what was written at offset {bad}",
                            "the storage returned wrong data", path=path)
                free.append(slot)
            if count:
                advance(ring, count)
                pending -= count
            if now >= next_check:
                if now >= stop_at and issuing:
                    rec.stonewalled = True
                    issuing = False  # what is in flight completes: the operations done stay a prefix
                if len(log.entries) >= 2 * FLUSH_EVERY:
                    log.flush()
                ctx.check_stop(now)
                next_check = min(stop_at, now + POLL_INTERVAL_NS)
    except OSError as exc:
        _drain(ring, cqe, pending)
        raise io_error(op, path, exc, offset) from None
    except BaseException:
        _drain(ring, cqe, pending)
        raise
    finally:
        lu.io_uring_queue_exit(ring)
    return log.ops * transfer_size


def _drain(ring: Any, cqe: Any, pending: int) -> None:
    """After an error: submit what was prepared and wait (bounded) for every operation
    still in flight, so that no buffer is unmapped under an I/O."""
    lu = _lu
    deadline = time.monotonic() + _DRAIN_S
    wait_ts = lu.timespec(WAIT_S)
    while pending > 0 and time.monotonic() < deadline:
        try:
            lu.io_uring_submit_and_wait_timeout(ring, cqe, 1, wait_ts)
        except OSError:
            continue
        count = sum(1 for _ in lu.CqeIter(ring, cqe))
        lu.io_uring_cq_advance(ring, count)
        pending -= count
