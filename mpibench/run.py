"""The orchestrator, imported by the CLI alone: rank-0 preflight, the run on every rank,
cleanup and the results document.

What workloads, engines and backends need from a run (RunContext, the phase runner,
agreement on errors, broadcast) is in mpibench.context; the error protocol is described
there. A failure is raised on every rank, cleanup runs, and rank 0 writes a partial result
marked incomplete.
"""

from __future__ import annotations

import secrets
import time
import traceback
from typing import Any

from mpibench import buffers, environment, uring
from mpibench.backends import backend_class
from mpibench.backends.base import Backend
from mpibench.comm import Comm, NodeLayout
from mpibench.config import AUTO, Config
from mpibench.context import (
    PreflightInfo,
    RunContext,
    broadcast_outcome,
    rank_line,
    resolve_io_depth,
    resolve_threads,
)
from mpibench.engine import resolve_io_engine
from mpibench.errors import (
    BenchIOError,
    ConfigError,
    MpibenchError,
    PreflightError,
    agreed,
)
from mpibench.lifecycle import Lifecycle, State
from mpibench.plan import RUN_DIR_PREFIX
from mpibench.results import SCHEMA_VERSION, summarize_repetitions, write_json_atomic
from mpibench.units import format_size
from mpibench.workloads import Workload, get_workload

MEMORY_MARGIN = 512 * 2**20  # memory left to the processes and the system beside the I/O buffers


def new_run_id() -> str:
    """A run name that sorts by time and does not collide: 20261122-031500-3fa9c1."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def rank_threads(config: Config, layout: NodeLayout) -> int:
    """s3dlio runtime threads per rank for this run's workload (context.resolve_threads)."""
    depth = resolve_io_depth(config, layout)
    return resolve_threads(config, layout, get_workload(config.workload).requests_in_flight(config, depth))


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
    """Rank 0's checks of the configuration and the storage, before any benchmark I/O."""
    workload = get_workload(config.workload)
    run_id = config.run_id or new_run_id()
    info = PreflightInfo(run_id=run_id, run_key=RUN_DIR_PREFIX + run_id)
    info.planned_bytes = workload.planned_bytes(config, size)
    workload.check(config, size, 1)
    memory = check_memory(config, workload, size, layout)
    engine = resolve_io_engine(config)
    if engine == "threads" and config.io.engine == AUTO and resolve_io_depth(config, layout) > 1:
        info.warnings.append(f"io_uring unavailable ({uring.unavailable()}): "
                             "io_depth is kept in flight by threads")
    if engine == "none" and config.io.engine != AUTO:
        info.warnings.append(f"io.engine={config.io.engine} is ignored: it applies to "
                             "local_fs and direct_fs with storage.library=native")
    cls = backend_class(config.storage.type, config.storage.library)
    info.checks.append(f"configuration valid: workload {config.workload} on {config.storage.type} "
                       f"({cls.name}), {size} rank(s) on {layout.num_nodes} node(s)")
    if memory:
        info.checks.append(memory)
    if config.huge_pages:
        info.checks.append(check_huge_pages())
    plan = cls.preflight(config, info.run_key, info.planned_bytes, layout, workload.access_hints(config),
                         rank_threads(config, layout))
    info.plan = plan
    info.backend = dict(plan.record)
    info.checks.extend(plan.checks)
    info.alignment = plan.alignment
    info.alignment_source = plan.alignment_source
    info.created_root = plan.created_root
    info.created_dirs = list(plan.created_dirs)
    info.free_bytes = plan.free_bytes
    info.filesystem = dict(plan.filesystem)
    info.warnings.extend(plan.warnings)
    try:
        backend = _make_rank_backend(config, info, layout)
        backend.begin("preflight", 0)
        workload.check(config, size, info.alignment)
        workload.prepare(config, size, backend, info)
    except BaseException:
        _remove_run_dir(config, info)
        raise
    return info


def _remove_run_dir(config: Config, info: PreflightInfo) -> None:
    """Undo what preflight created (the run directory, the root leaf and the parents it made)."""
    if info.plan is not None:
        backend_class(config.storage.type, config.storage.library).undo(config, info.plan)


def execute(config: Config, comm: Comm, *, output: str | None, force: bool = False,
            progress: Any = None,
            preflight_only: bool = False, restore_signals: bool = True,
            lifecycle: Lifecycle | None = None) -> dict[str, Any] | None:
    """Run the configured workload on every rank; return the results document on rank 0.

    `lifecycle`: the process's signal handling (the CLI's; a library caller gets one of its
    own). The run puts it in its RUNNING state: SIGINT/SIGTERM stop the run gracefully
    (the current phase ends, cleanup runs, exit 130), and a signal this rank noted before
    the run stops it at its first check. Once the run's cleanup is over it is FINISHING:
    signals are ignored while the results are put together (what was measured is never
    lost to a late signal); the handlers found at the start are put back before
    returning, unless `restore_signals` is false (the CLI, which goes on ignoring them
    while it writes the results and MPI shuts down).
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
    life = lifecycle if lifecycle is not None else Lifecycle(State.WAITING)
    previous_handlers = life.start_run()
    failure: MpibenchError | None = None
    started = time.time()
    try:
        backend = _make_rank_backend(config, info, layout)
        ctx = RunContext(config, comm, info, backend, io_engine=resolve_io_engine(config), progress=progress,
                         can_preallocate=workload.preallocates_writes)
        life.attach(ctx)
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
        life.restore(previous_handlers)
        raise
    life.finish()
    try:
        return _document(config, comm, info, ctx, backend, workload, env, started, failure,
                         cleanup_error, output, force)
    finally:
        if restore_signals:
            life.restore(previous_handlers)


def _document(config: Config, comm: Comm, info: PreflightInfo, ctx: RunContext, backend: Backend,
              workload: Workload, env: dict[str, Any], started: float, failure: MpibenchError | None,
              cleanup_error: MpibenchError | None, output: str | None, force: bool) -> dict[str, Any] | None:
    """Rank 0's results document (None elsewhere), written to `output` if given; a failure
    of the run is raised with the document attached as its partial result."""
    if failure is None and cleanup_error is not None:
        failure = cleanup_error
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
            "auto_choices": ctx.choices.record,
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
    """This rank's backend instance, from the preflight's plan (Backend.for_rank)."""
    assert info.plan is not None
    workload = get_workload(config.workload)
    in_flight = workload.requests_in_flight(config, resolve_io_depth(config, layout))
    return backend_class(config.storage.type, config.storage.library).for_rank(
        config, info.plan, layout, workload.access_hints(config), in_flight)


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
    lines = ctx.comm.gather(rank_line(ctx.comm.rank, error) if error else None)
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


__all__ = ["ConfigError", "execute", "format_traceback", "new_run_id", "preflight"]
