"""The driver: rank-0 preflight, broadcast, measured phases, agreement on errors, results.

Error protocol: rank 0 validates and runs the preflight, then broadcasts the checked
information or the error; every rank raises the same error. During a phase a failing
rank tells the others to stop (CancelChannel) and every rank meets at the phase-end
agreement, so no rank is left waiting in a collective; the first error is raised
everywhere, cleanup runs, and rank 0 writes a partial result marked incomplete.
"""

from __future__ import annotations

import secrets
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mpibench import buffers, environment, faults, uring
from mpibench.backends import backend_class, make_backend
from mpibench.backends.base import Backend
from mpibench.buffers import out_of_memory
from mpibench.comm import CancelChannel, Comm, NodeLayout
from mpibench.config import AUTO, Config
from mpibench.errors import (
    EXIT_INTERRUPTED,
    BenchIOError,
    ConfigError,
    Interrupted,
    MpibenchError,
    PreflightError,
    agreed,
    interrupt_in,
)
from mpibench.metrics import LatencyHistogram, PhaseRecorder
from mpibench.plan import RUN_DIR_PREFIX, RUN_MARKER
from mpibench.results import (
    SCHEMA_VERSION,
    annotate_storage,
    summarize_phase,
    summarize_repetitions,
    write_json_atomic,
)
from mpibench.units import format_size
from mpibench.workloads import Workload, get_workload

POLL_INTERVAL_NS = 5_000_000  # test for another rank's stop notice at most every 5 ms
MEMORY_MARGIN = 512 * 2**20  # memory left to the processes and the system beside the I/O buffers
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


def new_run_id() -> str:
    """A run name that sorts by time and does not collide: 20261122-031500-3fa9c1."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def resolve_io_depth(config: Config, layout: NodeLayout) -> int:
    """bandwidth.io_depth, with 'auto' sized from the node's usable CPUs over its ranks."""
    depth = config.bandwidth.io_depth
    if depth != AUTO:
        return int(depth)
    if config.storage.type == "local_fs":
        return 1
    return max(1, min(16, layout.node_cpus() // max(1, layout.local_size)))


def uses_files(config: Config) -> bool:
    """True when the rank's I/O goes through file descriptors of its own (not s3dlio)."""
    return config.storage.type in ("local_fs", "direct_fs") and config.storage.library == "native"


def resolve_io_engine(config: Config) -> str:
    """How io_depth > 1 is kept in flight: 'io_uring', 'threads', or 'none' (no file I/O)."""
    if not uses_files(config):
        return "none"
    wanted = config.bandwidth.io_engine
    if wanted == "threads":
        return "threads"
    reason = uring.unavailable()
    if reason is None:
        return "io_uring"
    if wanted == "io_uring":
        raise ConfigError(f"bandwidth.io_engine=io_uring cannot be used here: {reason}",
                          "set bandwidth.io_engine=auto (io_uring where available) or threads")
    return "threads"


def resolve_threads(config: Config, layout: NodeLayout) -> int:
    """s3dlio runtime threads per rank: the node's usable CPUs divided by the ranks on it; on
    S3 no more than the rank's requests in flight. More workers than requests only pass each
    request from thread to thread: one 1 MiB GET at a time cost 12-27 % more client CPU with
    two workers than with one (docs/performance.md, "The s3dlio runtime's workers"). Not so
    for direct:// files, whose reads at depth 1 ran 7 % faster with two than with one."""
    if config.storage.threads != AUTO:
        return int(config.storage.threads)
    cpus = max(1, layout.node_cpus() // max(1, layout.local_size))
    if config.storage.type != "s3":
        return cpus
    in_flight = get_workload(config.workload).requests_in_flight(config, resolve_io_depth(config, layout))
    return max(1, min(cpus, in_flight))


def check_memory(config: Config, workload: Workload, size: int, layout: NodeLayout) -> str | None:
    """The I/O buffers of a node's ranks must fit in its available memory, or a PreflightError.

    Available: MemAvailable (or what the cgroup has left) of rank 0's node, less a margin
    of a tenth (at least MEMORY_MARGIN) for the processes themselves and the page cache;
    the busiest node's rank count is used. Without this, the kernel's OOM killer ends
    the job mid-run and leaves its files behind.
    """
    per_node = max(layout.ranks_per_node or [1])
    per_rank, driver, hint = workload.buffer_bytes(config, size, per_node, resolve_io_depth(config, layout))
    available = environment.memory_available_bytes()
    if not per_rank or not available:
        return None
    usable = max(0, available - max(MEMORY_MARGIN, available // 10))
    need = per_rank * per_node
    ranks = f"{per_node} rank{'s' if per_node > 1 else ''}"
    if need > usable:
        raise PreflightError(
            f"the run needs {format_size(need)} of I/O buffers on this node ({ranks} x "
            f"{format_size(per_rank)}: {driver}), more than the {format_size(usable)} available", hint)
    return (f"I/O buffers of {format_size(need)} per node ({ranks} x {format_size(per_rank)}) "
            f"fit in the {format_size(usable)} of memory available")


def check_huge_pages() -> str:
    """huge_pages needs the kernel's transparent huge pages (mode always or madvise)."""
    mode = buffers.transparent_huge_pages()
    if mode not in ("always", "madvise"):
        state = f"off ({mode})" if mode else "not available in this kernel"
        raise PreflightError(f"huge_pages is true but transparent huge pages are {state} on this host",
                             "as root: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled; "
                             "or set huge_pages: false")
    return (f"I/O buffers in 2 MiB transparent huge pages (this host's mode: {mode}); "
            "each rank counts what the kernel grants")


def preflight(config: Config, size: int, layout: NodeLayout) -> PreflightInfo:
    """Rank 0's checks of the configuration and the storage, before any benchmark I/O.

    Whatever fails here fails before anything is measured, so it is a PreflightError
    (exit 2), an I/O error on the way (a socket where the manifest should be) included.
    """
    try:
        return _preflight(config, size, layout)
    except BenchIOError as exc:
        raise PreflightError(exc.message, exc.hint) from exc
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise PreflightError(f"preflight failed on{where}: {exc.strerror or exc}",
                             "check storage.root and what is in it") from exc


def _preflight(config: Config, size: int, layout: NodeLayout) -> PreflightInfo:
    workload = get_workload(config.workload)
    run_id = config.run_id or new_run_id()
    info = PreflightInfo(run_id=run_id, run_key=RUN_DIR_PREFIX + run_id)
    workload.check_magnitudes(config, size)  # first: planned_bytes may list every file or shard
    info.planned_bytes = workload.planned_bytes(config, size)
    workload.check(config, size, 1)
    memory = None if workload.buffers_sized_by_input else check_memory(config, workload, size, layout)
    engine = resolve_io_engine(config)
    if engine == "threads" and config.bandwidth.io_engine == AUTO and resolve_io_depth(config, layout) > 1:
        info.warnings.append(f"io_uring unavailable ({uring.unavailable()}): "
                             "io_depth is kept in flight by threads")
    if engine == "none" and config.bandwidth.io_engine != AUTO:
        info.warnings.append(f"bandwidth.io_engine={config.bandwidth.io_engine} is ignored: it applies to "
                             "local_fs and direct_fs with storage.library=native")
    cls = backend_class(config.storage.type, config.storage.library)
    info.checks.append(f"configuration valid: workload {config.workload} on {config.storage.type} "
                       f"({cls.name}), {size} rank(s) on {layout.num_nodes} node(s)")
    if memory:
        info.checks.append(memory)
    if config.huge_pages:
        info.checks.append(check_huge_pages())
    backend_pre = getattr(cls, "preflight_storage", None)
    if backend_pre is not None:
        found = backend_pre(config, info.run_key, info.planned_bytes, layout)
        info.backend = found.get("backend", {})
        info.checks.extend(found.get("checks", []))
        info.alignment = found.get("alignment", 1)
        info.alignment_source = found.get("alignment_source", "none")
        info.created_root = found.get("created_root", False)
        info.created_dirs = found.get("created_dirs", [])
        info.free_bytes = found.get("free_bytes")
        info.filesystem = found.get("filesystem", {})
        info.warnings.extend(found.get("warnings", []))
    try:
        faults.before_phase(faults.parse(), 0, "preflight")  # tests: hold rank 0 here
        workload.check(config, size, info.alignment)
        backend = make_backend(config.storage, **_backend_kwargs(config, info))
        workload.prepare(config, size, backend, info)
        if workload.buffers_sized_by_input:
            # After prepare, which proves the input there (train's dataset): its buffers are
            # sized over all of its files, work that a missing dataset must not cost.
            memory = check_memory(config, workload, size, layout)
            if memory:
                info.checks.append(memory)
    except BaseException:
        _remove_run_dir(config, info)
        raise
    return info


def _backend_kwargs(config: Config, info: PreflightInfo) -> dict[str, Any]:
    return {"alignment": info.alignment} if config.storage.type in ("local_fs", "direct_fs") else {}


def _remove_run_dir(config: Config, info: PreflightInfo) -> None:
    """Undo what preflight created (the run directory, the root leaf and the parents it made)."""
    cls = backend_class(config.storage.type, config.storage.library)
    undo = getattr(cls, "undo_preflight", None)
    if undo is not None:
        undo(config, info.run_key, info.created_root, info.created_dirs)


class RunContext:
    """What a workload needs on every rank: config, comm, backend, and the phase runner."""

    def __init__(self, config: Config, comm: Comm, info: PreflightInfo, backend: Backend,
                 progress: Any = None) -> None:
        self.config = config
        self.comm = comm
        self.info = info
        self.backend = backend
        self.layout = comm.layout()
        self.phases: list[dict[str, Any]] = []
        self.cancel = CancelChannel(comm)
        self.interrupted: str | None = None
        self.progress = progress
        self.io_depth = resolve_io_depth(config, self.layout)
        self.io_engine = resolve_io_engine(config)
        buffers.use_huge_pages(config.huge_pages)
        self.buffers = buffers.BufferPool()  # working buffers, allocated untimed, reused by every phase
        self._next_poll = 0
        self.failure: MpibenchError | None = None
        # The node's first rank reads the block device counters of the root around each phase.
        self.block_stat = (environment.block_stat_path(getattr(backend, "root", ""))
                           if self.layout.local_rank == 0 and getattr(backend, "root", None) else None)
        self.watchdog = StopWatchdog(comm, backend.path_of(info.run_key))
        self.faults = faults.parse()
        self.fault: faults.Fault | None = None
        faults.at_start(self.faults, comm.rank)

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
        if self.faults:
            faults.before_phase(self.faults, self.comm.rank, name)
            self.fault = faults.mid_phase(self.faults, self.comm.rank, name)
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
            self.cancel.notify(_rank_line(self.comm.rank, error))
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
            if error is not None and self.comm.rank == 0:
                raise agreed(error)
            exc = BenchIOError(first or "another rank failed")
            exc.rank = -1
            exc.__cause__ = error
            raise agreed(exc)
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
            if error is not None and self.comm.rank == 0:
                raise agreed(error)
            exc = BenchIOError(first or "another rank failed")
            exc.rank = -1
            exc.__cause__ = error
            raise agreed(exc)
        return value  # an interruption is seen by the next phase

    def _agree(self, error: MpibenchError | None) -> tuple[int, str | None]:
        """Every rank learns whether any rank failed (2) or was interrupted (1), and the first error."""
        status = 2 if error is not None else (1 if self.interrupted else 0)
        worst = int(self.comm.allreduce_max(status))
        if worst == 0:
            return 0, None
        lines = self.comm.gather(_rank_line(self.comm.rank, error) if error else None)
        first = None
        if lines is not None:
            first = next((line for line in lines if line), None)
        return worst, self.comm.bcast(first)

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
        annotate_storage(phase, self.config.storage.type, self.config.workload)
        self.phases.append(phase)
        return phase


def _rank_line(rank: int, error: MpibenchError | None) -> str:
    if error is None:
        return ""
    line = error.line()
    return line if line.startswith("rank ") else f"rank {rank}: {line}"


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


def install_signal_handlers(ctx_holder: dict[str, Any]) -> dict[int, Any]:
    """SIGINT/SIGTERM stop the run gracefully: current phase ends, cleanup runs, exit 130.

    Returns the previous handlers so the caller can put them back.
    """

    def handler(signum: int, _frame: Any) -> None:
        ctx = ctx_holder.get("ctx")
        name = signal.Signals(signum).name
        if ctx is None:  # raising here could leave other ranks in a collective: the run sees it first thing
            ctx_holder.setdefault("pending", name)
            return
        if ctx.interrupted is not None:
            ctx.watchdog.abort(f"{name} during the graceful stop after {ctx.interrupted}")
            return
        ctx.interrupted = name
        ctx.watchdog.arm(name)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def execute(config: Config, comm: Comm, *, output: str | None, force: bool = False,
            progress: Any = None, printer: Callable[[str], None] = print,
            preflight_only: bool = False, restore_signals: bool = True,
            deferred: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run the configured workload on every rank; return the results document on rank 0.

    `deferred["name"]`: a SIGINT/SIGTERM this rank noted before the run's own handlers
    (cli._defer_interrupt); the run then stops at its first check, as for one during it.

    Once the run's cleanup is over, SIGINT and SIGTERM are ignored while the results are
    put together (what was measured is never lost to a late signal); the handlers found
    at the start are put back before returning, unless `restore_signals` is false (the
    CLI, which goes on ignoring them while it writes the results and MPI shuts down).
    """
    layout = comm.layout()
    comm.sync_clocks()
    env = environment.collect(comm)
    info: PreflightInfo = broadcast_outcome(comm, lambda: preflight(config, comm.size, layout))
    if preflight_only:
        if comm.is_root:
            _remove_run_dir(config, info)
        comm.barrier()
        return {"preflight": info.__dict__}
    workload: Workload = get_workload(config.workload)
    holder: dict[str, Any] = {"ctx": None}
    previous_handlers = install_signal_handlers(holder)
    noted = deferred.pop("name", None) if deferred is not None else None  # atomic: see cli._run_not_started
    if noted is not None:  # it came before: the run stops at once, gracefully
        holder.setdefault("pending", noted)
    failure: MpibenchError | None = None
    started = time.time()
    try:
        backend = _make_rank_backend(config, info, layout)
        ctx = RunContext(config, comm, info, backend, progress=progress)
        holder["ctx"] = ctx
        if "pending" in holder:
            ctx.interrupted = holder["pending"]
            ctx.watchdog.arm(ctx.interrupted)
        try:
            workload.run(ctx)
        except MpibenchError as exc:
            failure = exc
        # The cleanup is collective: only when every rank got here in step. An error that
        # only this rank raised outside a phase's agreement (or a bug) goes straight to the
        # CLI, which ends the whole job, since the others may be waiting in a collective.
        if failure is not None and not failure.agreed and comm.size > 1:
            raise failure
        cleanup_error = _cleanup(ctx, workload)
        ctx.cancel.close()
    except BaseException:
        _set_handlers(previous_handlers)
        raise
    _set_handlers(dict.fromkeys(previous_handlers, signal.SIG_IGN))
    try:
        return _document(config, comm, info, ctx, backend, workload, env, started, failure,
                         cleanup_error, output, force)
    finally:
        if restore_signals:
            _set_handlers(previous_handlers)


def _set_handlers(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _document(config: Config, comm: Comm, info: PreflightInfo, ctx: RunContext, backend: Backend,
              workload: Workload, env: dict[str, Any], started: float, failure: MpibenchError | None,
              cleanup_error: MpibenchError | None, output: str | None, force: bool) -> dict[str, Any] | None:
    """Rank 0's results document (None elsewhere), written to `output` if given; a failure
    of the run is raised with the document attached as its partial result."""
    if failure is None and cleanup_error is not None:
        failure = cleanup_error
    elif cleanup_error is not None and comm.is_root:
        # The run failed and its cleanup too: what is left (files, objects, the run's
        # marker) is named, not lost behind the run's own error line.
        warnings.warn(f"the cleanup after the failure failed as well: {cleanup_error.line()}; "
                      f"{backend.path_of(info.run_key)} may keep the run's files and its {RUN_MARKER} "
                      "marker: remove them by hand", stacklevel=2)
    document = None
    if comm.is_root:
        document = {
            "schema_version": SCHEMA_VERSION,
            "tool": "mpibench",
            "run_id": info.run_id,
            "complete": failure is None,
            "incomplete_reason": None if failure is None else failure.line(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "config": config.to_dict(),
            "environment": {
                **env,
                "filesystem": info.filesystem,
                "direct_io_alignment": info.alignment,
                "alignment_source": info.alignment_source,
                "io_depth": ctx.io_depth,
                "io_engine": ctx.io_engine,
                "io_buffers": io_buffers_record(config, ctx.phases),
                "backend": {**backend.describe(), **info.backend},
            },
            "preflight": {"checks": info.checks, "warnings": info.warnings,
                          "planned_bytes": info.planned_bytes, "free_bytes": info.free_bytes},
            "phases": ctx.phases,
            "summary": summarize_repetitions(ctx.phases),
        }
        document.update(workload.summarize(ctx))
        if output:
            try:
                write_json_atomic(output, document, force=force)
            except MpibenchError as exc:
                raise agreed(exc) from None  # every other rank is past its last collective
    if failure is not None:
        failure.partial_result = document  # type: ignore[attr-defined]
        raise agreed(failure)  # every rank has passed the cleanup's last barrier
    return document


def io_buffers_record(config: Config, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """How the I/O buffers were backed: 4 KiB pages, or huge pages with what the ranks asked
    for and were granted (each rank's total at its last phase)."""
    record: dict[str, Any] = {"huge_pages": config.huge_pages}
    if config.huge_pages:
        last = [r.get("huge_page_bytes", {}) for r in (phases[-1].get("ranks", []) if phases else [])]
        record.update(transparent_huge_pages=buffers.transparent_huge_pages(),
                      huge_requested_bytes=sum(int(b.get("requested", 0)) for b in last),
                      huge_granted_bytes=sum(int(b.get("granted", 0)) for b in last))
    return record


def _make_rank_backend(config: Config, info: PreflightInfo, layout: NodeLayout) -> Backend:
    kwargs = _backend_kwargs(config, info)
    cls = backend_class(config.storage.type, config.storage.library)
    if hasattr(cls, "rank_options"):
        kwargs.update(cls.rank_options(config, info.backend, layout, resolve_threads(config, layout)))
    return make_backend(config.storage, **kwargs)


def _cleanup(ctx: RunContext, workload: Workload) -> MpibenchError | None:
    """Every rank removes what it created; rank 0 then removes the directories and marker."""
    if ctx.config.keep_files:
        return None
    error: MpibenchError | None = None
    ctx.watchdog.in_io = True
    try:
        workload.cleanup(ctx)
    except MpibenchError as exc:
        error = exc
        if isinstance(exc, BenchIOError) and exc.rank is None:
            exc.rank = ctx.comm.rank
    ctx.watchdog.in_io = False
    # Gathering the outcome also tells rank 0 that every rank has removed its files; a
    # failure on any rank must reach rank 0, which reports it and marks the result.
    lines = ctx.comm.gather(_rank_line(ctx.comm.rank, error) if error else None)
    if ctx.comm.is_root:
        first = next((line for line in lines or [] if line), None)
        if error is None and first is not None:
            error = BenchIOError(first)
            error.rank = -1
        ctx.watchdog.in_io = True
        try:
            workload.cleanup_shared(ctx)
            _remove_run_dir(ctx.config, ctx.info)
        except MpibenchError as exc:
            error = error or exc
        ctx.watchdog.in_io = False
    ctx.comm.idle_barrier()
    return error


def format_traceback(exc: BaseException) -> str:
    """The traceback of an exception and its causes (for --debug)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


__all__ = ["ConfigError", "PreflightInfo", "RunContext", "execute", "preflight", "broadcast_outcome"]
