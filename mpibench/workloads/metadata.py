"""mdtest-like metadata test: many small files (or objects) created, stat'ed, read, listed,
renamed and removed, each step a timed phase.

Phases, in order (each through ctx.phase: barrier, per-rank start and end, rate = operations
of all ranks / (last end - first start), latency histograms merged over the ranks):

- ``mkdir``: the directory tree (not on object storage, which has only key prefixes);
- ``create``: metadata.items files per rank, each created and written with file_size bytes
  (one PUT on S3); stopped at metadata.deadline when set (stonewalling);
- ``stat``, ``read`` (optional), ``list`` (optional), ``rename`` (optional), ``remove``: on the
  files of the stride partner (mdtest -N), exactly those it created;
- ``rmdir``: the tree again, deepest directories first.

Names come from mdplan, so no rank lists anything to find a file. The create phase counts
every file it starts, so the cleanup after an error or a signal removes exactly those.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench.backends.base import AccessHints
from mpibench.buffers import aligned_buffer, buffer_footprint
from mpibench.config import Config
from mpibench.context import POLL_INTERVAL_NS
from mpibench.errors import BenchIOError, PreflightError
from mpibench.mdplan import (
    MD_DIR,
    file_name,
    item_dirs,
    listed_dirs,
    name_prefix,
    renamed_of,
    stride_partner,
    tree_dirs,
    tree_owner_dirs,
    tree_top,
)
from mpibench.metrics import FLUSH_EVERY, PhaseRecorder
from mpibench.plan import PAGE, round_up
from mpibench.units import format_size
from mpibench.workloads.base import Workload

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

PHASES = ("mkdir", "create", "stat", "read", "list", "rename", "remove", "rmdir")
FULL_ERRNOS = (errno_mod.ENOSPC, errno_mod.EDQUOT)


@dataclass
class _RankState:
    """What one rank has done, for the later phases and the cleanup."""

    created: int = 0  # own files started: 0..created-1 may exist
    counts: list[int] = field(default_factory=list)  # files each rank created (after the create phase)
    renaming: bool = False  # the rename phase began: a file may have either name
    files_removed: bool = False  # the remove phase completed on every rank
    tree_removed: bool = False
    handles: list[Any] = field(default_factory=list)  # open directory handles, closed at the end


class MetadataWorkload(Workload):
    """Create, stat, read, list, rename and remove metadata.items files per rank."""

    name = "metadata"

    def access_hints(self, config: Config) -> AccessHints:
        """Small whole files, each created, stat'ed, read and removed by one request."""
        return AccessHints(unit="file (PUT, HEAD, GET, LIST, DELETE one request each)",
                           object_size=config.metadata.file_size)

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[Any, _RankState] = weakref.WeakKeyDictionary()

    def planned_bytes(self, config: Config, size: int) -> int:
        return config.metadata.items * config.metadata.file_size * size

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        return 1  # one operation at a time per rank, as mdtest

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        return (2 * buffer_footprint(round_up(max(1, config.metadata.file_size), PAGE), config.huge_pages),
                "metadata.file_size x 2 (write and read buffers)", "lower metadata.file_size")

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        md = config.metadata
        if md.rename and not backend.can_rename:
            raise PreflightError(f"metadata.rename: {backend.name} cannot rename", "remove metadata.rename")
        backend.makedirs(f"{info.run_key}/{MD_DIR}")
        dirs = len(item_dirs(md.depth, md.branching, md.items_at == "leaves"))
        trees = size if md.layout == "unique" else 1
        info.checks.append(f"metadata: {md.items} files of {md.file_size} bytes per rank in {trees} tree(s) of "
                           f"{dirs} item directories ({md.layout} layout)")
        entries = md.items * size + trees * len(tree_dirs(md.depth, md.branching))
        free = backend.free_entries(f"{info.run_key}/{MD_DIR}")
        if free is not None and entries > free:
            info.warnings.append(
                f"the file system holding {backend.path_of(info.run_key)} has {free} free inodes, fewer than the "
                f"{entries} files and directories the run may create: the create phase will stop with ENOSPC "
                f"unless metadata.deadline stops it first")
        elif free is not None:
            info.checks.append(f"{free} free inodes cover the {entries} files and directories the run may create")
        batch = backend.probe_batch_delete(f"{info.run_key}/{MD_DIR}")
        if batch is not None:
            info.backend["metadata_delete"] = batch  # every rank's remove phase follows it
            if batch["mode"] == "batched":
                info.checks.append(f"metadata: the store deletes with {batch['method']} (probed)")
            else:
                info.warnings.append(f"metadata: {batch['reason']}: the remove phase sends {batch['method']}")

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        md = config.metadata
        dirs = item_dirs(md.depth, md.branching, md.items_at == "leaves")
        partner = stride_partner(rank, size, md.stride, ranks_per_node, num_nodes)
        if rank < 0:
            return {}
        return {"rank": rank, "creates": md.items, "tree": tree_top(md.layout, rank),
                "item_directories": len(dirs), "mkdir": len(tree_owner_dirs(md.layout, rank, md.depth, md.branching)),
                "stat_read_remove_files_of": partner}

    # -- the run ---------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> None:
        md = ctx.config.metadata
        comm, backend, layout = ctx.comm, ctx.backend, ctx.layout
        rank = comm.rank
        state = self._states[ctx] = _RankState()
        partner = stride_partner(rank, comm.size, md.stride, max(layout.ranks_per_node), layout.num_nodes)
        dirs = item_dirs(md.depth, md.branching, md.items_at == "leaves")
        size = md.file_size
        io = backend.data_io(size)
        common: dict[str, Any] = {"layout": md.layout, "items": md.items, "file_size": size, "depth": md.depth,
                  "branching": md.branching, "items_at": md.items_at, "stride": md.stride}

        def make_buffers() -> tuple[memoryview, memoryview]:
            capacity = round_up(max(1, size), PAGE)
            out, back = aligned_buffer(capacity), aligned_buffer(capacity)
            # Seeded random content per rank: no storage can dedup or compress it away.
            content = np.random.default_rng([ctx.config.seed, rank]).integers(0, 256, size, dtype=np.uint8)
            memoryview(out)[:size] = content.tobytes()
            return memoryview(out)[:size], memoryview(back)[:size]

        write_view, read_view = ctx.setup(make_buffers)

        def handles(top: str) -> list[Any]:
            return [backend.open_dir(ctx.key(f"{top}/{d}" if d else top)) for d in dirs]

        def key_op(call: Callable[[str], None]) -> Callable[[str, str], None]:
            return lambda key, _name: call(key)

        if backend.has_directories:
            made = [ctx.key(key) for key in tree_owner_dirs(md.layout, rank, md.depth, md.branching)]
            ctx.phase("mkdir", 0, lambda rec: self._ops(ctx, rec, "mkdir", made, key_op(backend.mkdir), len(made),
                                                        ""), **common)
        own = ctx.setup(lambda: handles(tree_top(md.layout, rank)))
        state.handles.extend(own)
        theirs = ctx.setup(lambda: handles(tree_top(md.layout, partner)))
        state.handles.extend(theirs)
        create = functools.partial(backend.create_in, buf=write_view, fsync=md.fsync)
        started = [0]
        try:
            ctx.phase("create", 0, lambda rec: self._ops(
                ctx, rec, "create", own, create, md.items, name_prefix(rank), expect=size, moved=size,
                deadline_ns=int(md.deadline * 1e9), started=started),
                expected_bytes=md.items * size * comm.size, cache=io, fsync=md.fsync, deadline=md.deadline, **common)
        finally:
            state.created = started[0]  # a failed create may have left its file: the cleanup removes it
        state.counts = comm.allgather(state.created)
        count = state.counts[partner]  # exactly the files the partner created: never one more
        prefix = name_prefix(partner)
        ctx.phase("stat", 0, lambda rec: self._ops(ctx, rec, "stat", theirs, backend.stat_in, count, prefix,
                                                   expect=size, files_of=partner), **common)
        if md.read:
            read = functools.partial(backend.read_in, buf=read_view)
            ctx.phase("read", 0, lambda rec: self._ops(ctx, rec, "read", theirs, read, count, prefix, expect=size,
                                                       moved=size, files_of=partner),
                      expected_bytes=sum(state.counts) * size, cache=io, **common)
        if md.list:
            shown = [theirs[d] for d in listed_dirs(md.layout, rank, comm.size, partner, len(dirs))]
            ctx.phase("list", 0, lambda rec: self._list(ctx, rec, shown), **common)
        if md.rename:
            rename = backend.rename_in
            state.renaming = True
            ctx.phase("rename", 0, lambda rec: self._ops(
                ctx, rec, "rename", theirs, lambda handle, name: rename(handle, name, renamed_of(name)), count,
                prefix, files_of=partner), **common)
            prefix = renamed_of(prefix)
        batch = ctx.info.backend.get("metadata_delete") or {"mode": "single", "max_keys": 1,
                                                            "method": "one request per entry"}
        if batch["mode"] == "batched":
            ctx.phase("remove", 0, lambda rec: self._remove_batched(ctx, rec, theirs, count, prefix, partner,
                                                                    int(batch["max_keys"])),
                      delete=batch, **common)
        else:
            ctx.phase("remove", 0, lambda rec: self._ops(ctx, rec, "remove", theirs, backend.unlink_in, count,
                                                         prefix, files_of=partner), delete=batch, **common)
        state.files_removed = True
        self._close_dirs(backend, state)
        if backend.has_directories:
            gone = made[::-1]
            ctx.phase("rmdir", 0, lambda rec: self._ops(ctx, rec, "rmdir", gone, key_op(backend.rmdir), len(gone),
                                                        ""), **common)
            state.tree_removed = True

    def _ops(self, ctx: RunContext, rec: PhaseRecorder, phase: str, handles: list[Any], call: Callable[..., Any],
             count: int, prefix: str, *, expect: int | None = None, moved: int = 0, deadline_ns: int = 0,
             files_of: int | None = None, started: list[int] | None = None) -> None:
        """call(handles[i % len(handles)], prefix + str(i)) for i in range(count), back to back,
        each logged as an operation that moved `moved` bytes (see metrics.OpLog).

        `expect`: what each call must return (bytes written or read, the size stat'ed).
        The per-operation path is the backend's call, one clock reading and two appends;
        the deadline, stop notices and folding the log are looked at only every
        POLL_INTERVAL_NS, after which the clock is marked anew so that work never counts
        as an operation's latency. `started[0]`: how many calls were begun (for the cleanup).
        """
        log = rec.new_log()
        entries, sizes = log.entries, log.sizes
        note, note_size = entries.append, sizes.append
        clock = time.perf_counter_ns
        never = 1 << 62
        stop_at = rec.t0_ns + deadline_ns if deadline_ns else never
        dirs = len(handles)
        if files_of is not None:
            rec.extra["files_of_rank"] = files_of
        i = -1
        now = clock()
        next_check = min(stop_at, now + POLL_INTERVAL_NS)
        note(-now)
        try:
            for i in range(count):
                got = call(handles[i % dirs], f"{prefix}{i}")
                end = clock()
                note(end)
                note_size(moved)
                if got != expect and expect is not None:
                    where = ctx.backend.where_in(handles[i % dirs], f"{prefix}{i}")
                    raise BenchIOError(f"{phase} {where}: {got} bytes, expected {expect}",
                                       "was the file changed by another process?", path=where)
                if end >= next_check:
                    if end >= stop_at:
                        rec.stonewalled = True
                        break
                    if len(entries) >= 2 * FLUSH_EVERY:
                        log.flush()
                    ctx.check_stop(end)
                    now = clock()
                    next_check = min(stop_at, now + POLL_INTERVAL_NS)
                    note(-now)
        except BenchIOError as exc:
            if exc.errno in FULL_ERRNOS:
                what = "inodes or space" if exc.errno == errno_mod.ENOSPC else "quota"
                raise BenchIOError(
                    f"{phase} phase: the storage ran out of {what} after {log.ops} of {count} operations on "
                    f"this rank ({exc.message})",
                    "free inodes (df -i) or space, raise the quota, or lower metadata.items",
                    path=exc.path, errno=exc.errno) from None
            raise
        finally:
            done = log.ops  # calls that returned (each noted its end)
            if started is not None:
                started[0] = i + 1  # calls begun: the last may have failed after creating its file
            rec.files += done if prefix else 0  # each operation on a file (not mkdir, rmdir)
            rec.extra[f"{phase}_ops"] = done
            if phase == "create":
                rec.extra["files_created"] = done
                rec.extra["stonewall_deadline_s"] = deadline_ns / 1e9

    def _remove_batched(self, ctx: RunContext, rec: PhaseRecorder, handles: list[Any], count: int, prefix: str,
                        files_of: int, max_keys: int) -> None:
        """Remove files 0..count-1 of `files_of` with requests of up to max_keys entries of one
        directory each; each request is one operation (its latency), remove_files counts the files."""
        backend = ctx.backend
        log = rec.new_log()
        clock = time.perf_counter_ns
        dirs = len(handles)
        removed = requests = 0
        rec.extra["files_of_rank"] = files_of
        try:
            for d, handle in enumerate(handles):
                names = [f"{prefix}{i}" for i in range(d, count, dirs)]
                for at in range(0, len(names), max_keys):
                    ctx.check_stop()
                    chunk = names[at:at + max_keys]
                    start = clock()
                    backend.unlink_many_in(handle, chunk)
                    log.record(0, start, clock())
                    removed += len(chunk)
                    requests += 1
        finally:
            rec.files += removed
            rec.extra.update(remove_ops=requests, remove_files=removed, delete_requests=requests)

    def _list(self, ctx: RunContext, rec: PhaseRecorder, handles: list[Any]) -> None:
        """List each directory whole: one operation per listing, with its pages, its entries
        and the time to its first page."""
        backend = ctx.backend
        log = rec.new_log()
        clock = time.perf_counter_ns
        entries = pages = 0
        first: list[float] = []
        for handle in handles:
            ctx.check_stop()
            start = clock()
            first_ns = 0
            for page in backend.list_in(handle, ctx.config.metadata.list_page):
                if not first_ns:
                    first_ns = clock() - start
                pages += 1
                entries += len(page)
            end = clock()
            log.record(0, start, end)
            first.append((first_ns or end - start) / 1e9)
        rec.extra.update(list_entries=entries, list_pages=pages, list_dirs=len(handles),
                         first_page_s_sum=sum(first), first_page_s_max=max(first, default=0.0))

    # -- cleanup ---------------------------------------------------------------------------
    def cleanup(self, ctx: RunContext) -> None:
        """Remove this rank's own files that may be left (after an error, a signal or a
        stonewalled remove), then its own tree."""
        state = self._states.get(ctx)
        if state is None:
            return
        md = ctx.config.metadata
        backend = ctx.backend
        rank = ctx.comm.rank
        dirs = item_dirs(md.depth, md.branching, md.items_at == "leaves")
        top = tree_top(md.layout, rank)
        self._close_dirs(backend, state)
        if not state.files_removed and state.created:
            own = [backend.open_dir(ctx.key(f"{top}/{d}" if d else top)) for d in dirs]
            state.handles.extend(own)
            try:
                for i in range(state.created):
                    handle = own[i % len(dirs)]
                    backend.unlink_in(handle, file_name(rank, i), missing_ok=True)
                    if state.renaming:
                        backend.unlink_in(handle, renamed_of(file_name(rank, i)), missing_ok=True)
            finally:
                self._close_dirs(backend, state)
        if backend.has_directories and not state.tree_removed and md.layout == "unique":
            for key in tree_owner_dirs(md.layout, rank, md.depth, md.branching)[::-1]:
                backend.remove_dir(ctx.key(key))

    @staticmethod
    def _close_dirs(backend: Backend, state: _RankState) -> None:
        while state.handles:
            backend.close_dir(state.handles.pop())

    def cleanup_shared(self, ctx: RunContext) -> None:
        md = ctx.config.metadata
        state = self._states.get(ctx)
        if ctx.backend.has_directories and md.layout == "shared" and (state is None or not state.tree_removed):
            for key in tree_owner_dirs(md.layout, 0, md.depth, md.branching)[::-1]:
                ctx.backend.remove_dir(ctx.key(key))
        ctx.backend.remove_dir(ctx.key(MD_DIR))

    # -- results ---------------------------------------------------------------------------
    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        md = ctx.config.metadata
        state = self._states.get(ctx)
        out: dict[str, Any] = {
            "preset": md.preset, "layout": md.layout, "items_per_rank": md.items, "file_size": md.file_size,
            "depth": md.depth, "branching": md.branching, "items_at": md.items_at, "stride": md.stride,
            "deadline_s": md.deadline, "ranks": ctx.comm.size,
            "item_directories": len(item_dirs(md.depth, md.branching, md.items_at == "leaves")),
            "data_io": ctx.backend.data_io(md.file_size),
            "files_created_per_rank": list(state.counts) if state and state.counts else None,
            "phases": [],
        }
        for phase in ctx.phases:
            if phase["name"] not in PHASES:
                continue
            lat = phase.get("latency", {})
            row = {"name": phase["name"], "ops": phase["ops"], "seconds": phase["seconds"],
                   "ops_per_s": phase["ops_per_s"], "latency_mean_s": lat.get("mean_s", 0.0),
                   "latency_p50_s": lat.get("p50_s", 0.0), "latency_p99_s": lat.get("p99_s", 0.0),
                   "latency_max_s": lat.get("max_s", 0.0), "stonewalled": phase.get("stonewalled", False)}
            if phase["name"] == "remove" and phase.get("delete"):
                files = sum(int(r.get("remove_files", r.get("remove_ops", 0))) for r in phase["ranks"])
                row.update(delete=phase["delete"]["method"], files=files,
                           files_per_s=files / phase["seconds"] if phase["seconds"] > 0 else 0.0)
            if phase["name"] == "list":
                ranks = phase["ranks"]
                listings = sum(int(r.get("list_dirs", 0)) for r in ranks)
                row.update(entries=sum(int(r.get("list_entries", 0)) for r in ranks),
                           pages=sum(int(r.get("list_pages", 0)) for r in ranks),
                           first_page_s_mean=(sum(float(r.get("first_page_s_sum", 0.0)) for r in ranks) / listings
                                              if listings else 0.0),
                           first_page_s_max=max((float(r.get("first_page_s_max", 0.0)) for r in ranks), default=0.0))
                row["entries_per_s"] = row["entries"] / phase["seconds"] if phase["seconds"] > 0 else 0.0
            out["phases"].append(row)
        return {"metadata": out}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        m = document.get("metadata") or {}
        if not m.get("phases"):
            return []
        created = m.get("files_created_per_rank") or []
        lines = ["", f"metadata{' (preset ' + m['preset'] + ')' if m.get('preset') else ''}: {m['ranks']} rank(s) x "
                 f"{m['items_per_rank']} files of {format_size(m['file_size'])} ({m['file_size']} bytes), "
                 f"{m['layout']} layout, tree depth {m['depth']} x branching {m['branching']} "
                 f"({m['item_directories']} item directories, files at {m['items_at']}), stride {m['stride']}; "
                 f"data I/O {m['data_io']['state']}"]
        if created and min(created) < m["items_per_rank"]:
            lines.append(f"  stonewalled after {m['deadline_s']:g} s: files created per rank "
                         f"min {min(created)} / max {max(created)} (later phases use exactly these)")
        for row in m["phases"]:
            extra = ""
            if row["name"] == "remove" and row.get("files") is not None and row["files"] != row["ops"]:
                extra = f"; {row['files']} entries ({row['files_per_s']:.0f}/s) by {row['delete']}"
            if row["name"] == "list":
                extra = (f"; {row['entries']} entries ({row['entries_per_s']:.0f}/s) in {row['pages']} page(s), "
                         f"first page after {row['first_page_s_mean'] * 1e3:.3f} ms (mean)")
            lines.append(f"  {row['name']:<8}{row['ops_per_s']:>12.1f} ops/s  {row['ops']:>9} ops in "
                         f"{row['seconds']:.3f} s; latency p50 {row['latency_p50_s'] * 1e3:.3f} ms, "
                         f"p99 {row['latency_p99_s'] * 1e3:.3f} ms{extra}")
        warning = (m.get("data_io") or {}).get("warning")
        if warning:
            lines.append(f"  note: {warning}")
        return lines


WORKLOAD = MetadataWorkload()
