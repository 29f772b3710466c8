"""What workloads and engines need from a run, on every rank: the run context
(config, comm, backend, the phase runner), agreement on errors, broadcast from rank 0, and
the sizing rules (queue depth, s3dlio threads) they share.

Error protocol: rank 0 validates and runs the preflight, then broadcasts the checked
information or the error (broadcast_outcome); every rank raises the same error. During a
phase a failing rank tells the others to stop (CancelChannel) and every rank meets at the
phase-end agreement, so no rank is left waiting in a collective; the first error is raised
everywhere. This module imports no workload, engine, backend registry or driver: they
import it (mpibench.run, the orchestrator, is imported by the CLI alone).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpibench import buffers, choices, environment
from mpibench.backends import backend_class
from mpibench.backends.base import Backend, StoragePlan
from mpibench.buffers import out_of_memory
from mpibench.comm import CancelChannel, Comm, NodeLayout
from mpibench.config import AUTO, Config
from mpibench.errors import (
    EXIT_INTERRUPTED,
    BenchIOError,
    Interrupted,
    MpibenchError,
    PreflightError,
    agreed,
    interrupt_in,
)
from mpibench.metrics import LatencyHistogram, PhaseRecorder
from mpibench.results import annotate_storage, summarize_phase

POLL_INTERVAL_NS = 5_000_000  # test for another rank's stop notice at most every 5 ms
STOP_GRACE_S = 10.0  # after SIGINT/SIGTERM, how long a rank may take to stop before the job is aborted


class Stopped(Exception):
    """This rank left a phase because another rank failed or the job was interrupted."""


@dataclass
class PreflightInfo:
    """What rank 0 checked and decided; broadcast to every rank."""

    run_id: str
    run_key: str
    alignment: int = 1
    alignment_source: str = "none"
    planned_bytes: int = 0
    free_bytes: int | None = None
    filesystem: dict[str, str] = field(default_factory=dict)
    created_root: bool = False
    created_dirs: list[str] = field(default_factory=list)  # made by preflight, deepest first
    checks: list[str] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    plan: StoragePlan | None = None  # the backend's preflight (StoragePlan), what for_rank and undo take


class StopWatchdog:
    """Ends the job when a graceful stop after SIGINT/SIGTERM does not finish in time.

    A rank stuck in an I/O call that does not return (hung storage) cannot leave its
    phase, and every other rank would wait for it at the phase end. After STOP_GRACE_S a
    rank still inside an I/O call aborts the job with one line naming itself; a rank
    that is only waiting for the others gives the stuck one half as long again to speak
    first, then aborts too. A second signal aborts at once.
    """

    def __init__(self, comm: Comm, run_dir: str) -> None:
        self.comm = comm
        self.run_dir = run_dir
        self.in_io = False  # set while this rank is inside a phase's I/O or the cleanup
        self._signal: str | None = None

    def arm(self, name: str) -> None:
        """Start the grace period (on the first signal only)."""
        if self._signal is None:
            self._signal = name
            threading.Thread(target=self._watch, name="mpibench-stop-watchdog", daemon=True).start()

    def abort(self, reason: str) -> None:
        """Print one line naming this rank and why, then end every rank of the job."""
        print(f"mpibench: error: rank {self.comm.rank}: {reason}: aborting the job; "
              f"{self.run_dir} may keep files, remove it by hand", file=sys.stderr, flush=True)
        self.comm.abort(EXIT_INTERRUPTED)

    def _watch(self) -> None:
        # A daemon thread: when the run stops in time the process exits and takes it along.
        time.sleep(STOP_GRACE_S)
        if self.in_io:
            self.abort(f"an I/O call has not returned {STOP_GRACE_S:.0f} s after {self._signal}")
        time.sleep(STOP_GRACE_S / 2)  # only waiting for others: let a stuck rank name itself first
        self.abort(f"other ranks have not stopped {STOP_GRACE_S * 1.5:.0f} s after {self._signal}")


def resolve_io_depth(config: Config, layout: NodeLayout) -> int:
    """io.depth, with 'auto' the backend's default (Backend.default_io_depth)."""
    depth = config.io.depth
    if depth != AUTO:
        return int(depth)
    return backend_class(config.storage.type, config.storage.library).default_io_depth(layout)


def resolve_threads(config: Config, layout: NodeLayout, in_flight: int) -> int:
    """A client library's runtime threads per rank (Backend.runtime_threads). `in_flight`: the
    workload's requests in flight per rank (Workload.requests_in_flight)."""
    return backend_class(config.storage.type, config.storage.library).runtime_threads(config, layout, in_flight)


class RunContext:
    """What a workload needs on every rank: config, comm, backend, and the phase runner."""

    def __init__(self, config: Config, comm: Comm, info: PreflightInfo, backend: Backend,
                 *, io_engine: str, progress: Any = None, can_preallocate: bool = False) -> None:
        self.config = config
        self.comm = comm
        self.info = info
        self.backend = backend
        self.layout = comm.layout()
        self.phases: list[dict[str, Any]] = []
        self.cancel = CancelChannel(comm)
        self.interrupted: str | None = None
        self.progress = progress
        self.io_depth = resolve_io_depth(config, self.layout)  # reads' (and writes' unless chosen otherwise)
        self.io_engine = io_engine  # engine.resolve_io_engine: 'io_uring', 'threads' or 'none'
        # can_preallocate: the workload preallocates the files it writes when asked (mpibench.choices)
        self.choices = choices.decide(config, self.io_depth, io_engine, info.filesystem.get("fstype", ""),
                                      self.layout.node_cpus(), self.layout.local_size, can_preallocate)
        self.write_io_depth = self.choices.write_depth
        buffers.use_huge_pages(config.huge_pages)
        self.buffers = buffers.BufferPool()  # working buffers, allocated untimed, reused by every phase
        self._next_poll = 0
        self.failure: MpibenchError | None = None
        # The node's first rank reads the block device counters of the root around each phase.
        device_root = backend.local_root() if self.layout.local_rank == 0 else None
        self.block_stat = environment.block_stat_path(device_root) if device_root else None
        self.watchdog = StopWatchdog(comm, backend.path_of(info.run_key))
        backend.begin("start", comm.rank)

    def key(self, relative: str) -> str:
        """The storage key of a file inside this run's directory."""
        return f"{self.info.run_key}/{relative}"

    def check_stop(self, now_ns: int | None = None) -> None:
        """Raise Stopped when the job is interrupted or another rank failed (cheap)."""
        if self.interrupted is not None:
            raise Stopped(self.interrupted)
        now = time.perf_counter_ns() if now_ns is None else now_ns
        if now >= self._next_poll:
            self._next_poll = now + POLL_INTERVAL_NS
            notice = self.cancel.poll()
            if notice is not None:
                raise Stopped(notice)

    def phase(self, name: str, iteration: int, body: Callable[[PhaseRecorder], None],
              expected_bytes: int | None = None, **meta: Any) -> dict[str, Any] | None:
        """Run one measured phase on every rank and reduce it (the record on rank 0).

        All ranks barrier, take their start time, run `body`, take their end time, then
        agree on errors; bandwidth = total bytes / (max end - min start).
        """
        rec = PhaseRecorder(name, iteration, self.config.metrics.interval)
        self.backend.begin(name, self.comm.rank)
        self.comm.idle_barrier()  # ranks still setting up (or rank 0 reducing) hold no core...
        self.comm.barrier()  # ...and this one lets every rank leave together
        block_before = environment.read_block_stat(self.block_stat)
        rec.begin(self.comm.wtime())
        if self.progress is not None:
            self.progress.start(f"{name} {iteration}", rec, self.comm.size, expected_bytes)
        error: MpibenchError | None = None
        self.watchdog.in_io = True
        try:
            body(rec)
        except Stopped:
            pass
        except MpibenchError as exc:
            error = exc
        except MemoryError:
            error = out_of_memory()
        except Exception as exc:  # a bug must still end every rank cleanly
            error = BenchIOError(f"internal error in phase {name}: {type(exc).__name__}: {exc}",
                                 "rerun with --debug and report it")
            error.__cause__ = exc
        self.watchdog.in_io = False
        if error is not None:
            if isinstance(error, BenchIOError) and error.rank is None:
                error.rank = self.comm.rank
            self.cancel.notify(rank_line(self.comm.rank, error))
        rec.finish(self.comm.wtime())
        if self.progress is not None:
            self.progress.stop()
        # Ranks done early sleep here instead of spinning in the agreement's collective while
        # the others are still timed (the end times are taken already).
        self.comm.idle_barrier()
        worst, first = self._agree(error)
        if self.block_stat:
            # Read after the agreement, a collective every rank enters only once its I/O is
            # done: the node's other ranks may still be writing when this one finishes.
            rec.extra["block_device"] = {"stat": self.block_stat,
                                         **environment.block_delta(block_before, environment.read_block_stat(self.block_stat))}
        if self.config.huge_pages:  # this process's buffers so far: requested and granted
            rec.extra["huge_page_bytes"] = dict(buffers.huge_page_bytes)
        # The phase is reduced even when it failed: the partial result shows how far it got.
        phase = self._reduce(rec, {**meta, "complete": worst == 0} if worst else meta)
        if worst == 2:
            raise_agreed_failure(self.comm, error, first)
        if worst == 1:
            raise agreed(Interrupted(f"interrupted by {self.interrupted or 'a signal on another rank'}",
                                     "the partial result is marked incomplete"))
        return phase

    def setup(self, produce: Callable[[], Any]) -> Any:
        """Run `produce` (a rank's preparation outside any phase: buffers, content) on every
        rank and agree on its errors as a phase end does, so that one rank's failure (out
        of memory) ends every rank with the same line and the cleanup still runs."""
        error: MpibenchError | None = None
        value = None
        try:
            value = produce()
        except MpibenchError as exc:
            error = exc
        except MemoryError:
            error = out_of_memory()
        if error is not None and isinstance(error, BenchIOError) and error.rank is None:
            error.rank = self.comm.rank
        worst, first = self._agree(error)
        if worst == 2:
            raise_agreed_failure(self.comm, error, first)
        return value  # an interruption is seen by the next phase

    def _agree(self, error: MpibenchError | None) -> tuple[int, str | None]:
        """Every rank learns whether any rank failed (2) or was interrupted (1), and the first error."""
        return agree_on_errors(self.comm, error, self.interrupted is not None)

    def _reduce(self, rec: PhaseRecorder, meta: dict[str, Any]) -> dict[str, Any] | None:
        record = rec.rank_record(self.comm.rank, self.layout.host)
        hist = rec.histogram()
        merged = self.comm.reduce_array_sum(hist.counts)
        extremes = self.comm.gather((hist.count, hist.total_ns, hist.min_ns, hist.max_ns))
        ranks = self.comm.gather(record)
        if not self.comm.is_root:
            return None
        total_hist = LatencyHistogram()
        assert merged is not None and extremes is not None and ranks is not None
        total_hist.counts = merged
        nonempty = [e for e in extremes if e[0] > 0]
        total_hist.count = sum(e[0] for e in nonempty)
        total_hist.total_ns = sum(e[1] for e in nonempty)
        total_hist.min_ns = min((e[2] for e in nonempty), default=0)
        total_hist.max_ns = max((e[3] for e in nonempty), default=0)
        phase = summarize_phase(rec.name, rec.iteration, ranks, total_hist,
                                interval_s=self.config.metrics.interval, **meta)
        annotate_storage(phase, buffered=not self.backend.direct, workload=self.config.workload)
        self.phases.append(phase)
        return phase


def rank_line(rank: int, error: MpibenchError | None) -> str:
    """The error's one line, prefixed with the rank that raised it ("" for none)."""
    if error is None:
        return ""
    line = error.line()
    return line if line.startswith("rank ") else f"rank {rank}: {line}"


def agree_on_errors(comm: Comm, error: MpibenchError | None, interrupted: bool) -> tuple[int, str | None]:
    """Collective: whether any rank failed (2) or was interrupted (1), and the first error's line."""
    status = 2 if error is not None else (1 if interrupted else 0)
    worst = int(comm.allreduce_max(status))
    if worst == 0:
        return 0, None
    lines = comm.gather(rank_line(comm.rank, error) if error else None)
    first = None
    if lines is not None:
        first = next((line for line in lines if line), None)
    return worst, comm.bcast(first)


def raise_agreed_failure(comm: Comm, error: MpibenchError | None, first: str | None) -> None:
    """After agree_on_errors found a failure: rank 0 raises its own error (or the first
    rank's line), every other rank the first line; all marked agreed."""
    if error is not None and comm.rank == 0:
        raise agreed(error)
    exc = BenchIOError(first or "another rank failed")
    exc.rank = -1
    exc.__cause__ = error
    raise agreed(exc)


def broadcast_outcome(comm: Comm, produce: Callable[[], Any]) -> Any:
    """Run `produce` on rank 0 and give every rank its value, or raise its error everywhere."""
    outcome: tuple[str, Any] | None = None
    if comm.is_root:
        try:
            outcome = ("ok", produce())
        except MpibenchError as exc:
            outcome = ("error", exc)
        except MemoryError:
            outcome = ("error", out_of_memory())
        except Exception as exc:
            interrupt = interrupt_in(exc)
            if interrupt is not None:  # a signal, not a bug
                raise interrupt from None
            err = PreflightError(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug and report it")
            err.__cause__ = exc
            outcome = ("error", err)
    comm.idle_barrier()  # the other ranks sleep while rank 0 works
    kind, value = comm.bcast(outcome)
    if kind == "error":
        raise agreed(value)
    return value
