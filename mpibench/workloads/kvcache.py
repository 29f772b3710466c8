"""kvcache: LLM inference offloading the KV cache of many conversations to storage.

Every rank serves `kvcache.users` simulated users with `kvcache.concurrency` threads (the
users split between them, each user served by one thread), for `kvcache.duration` seconds
after `kvcache.warmup` seconds of the same traffic that are not counted. The traffic
(mpibench.kvtraffic) is seeded per rank: a request reads the shared prefix and its
conversation's earlier turns back, writes its new KV (prefill), then reads it back at
decode, once and again every `decode_batch` output tokens, sleeping the emulated GPU
time per token between reads. KV lives in a memory tier of `memory_budget` bytes (LRU;
what no longer fits is written to storage) or on storage, one object per KV block
(`grouping`), written and read through the run's backend: local_fs (fsync per object,
posix_fadvise DONTNEED before each read, as the reference), direct_fs (O_DIRECT, objects
rounded up to the alignment) or s3 (s3dlio). Each object's content is seeded and
stamped (DataPattern); with `verify` every byte read is checked.

One measured phase "kvcache" per entry of `kvcache.users`. Per rank it records object
read and write latency histograms (one sample per object: open, every piece, fsync,
close), time to first token per request, tokens, requests and tier hits; rank 0 merges
the histograms into pooled percentiles and reports them beside the max of the per-rank
p95 (the reference's figure), and with several user counts the capacity: the largest
count whose pooled p95 read latency stays under `kvcache.p95_target`.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpibench.backends.base import io_error
from mpibench.buffers import DataPattern, aligned_buffer, buffer_footprint
from mpibench.config import Config
from mpibench.engine import run_workers
from mpibench.errors import BenchIOError, VerifyError
from mpibench.kvtraffic import (
    GENERATION_S,
    MODELS,
    Entry,
    Layout,
    Request,
    Tiers,
    TrafficModel,
    capacity,
    round_up,
)
from mpibench.metrics import LatencyHistogram, OpLog, PhaseRecorder
from mpibench.results import device_bytes
from mpibench.units import GiB, format_size
from mpibench.workloads.bandwidth import check_alignment
from mpibench.workloads.base import Workload

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

PREFIX_ID = 0
_BASE_ID = 0x6B76 << 32  # the content's base ids, apart from other workloads' file ids
CSV_COLUMNS = ("kv_users", "kv_tokens_per_s", "kv_requests_per_s", "kv_read_GiBps", "kv_write_GiBps",
               "kv_read_p50_s_pooled", "kv_read_p95_s_pooled", "kv_read_p99_s_pooled", "kv_read_p999_s_pooled",
               "kv_read_p95_s_max_rank", "kv_write_p95_s_pooled", "kv_write_p95_s_max_rank", "kv_ttft_p50_s",
               "kv_ttft_p95_s", "kv_memory_hit_rate", "kv_storage_hit_rate", "kv_device_read_bytes",
               "kv_device_write_bytes", "kv_client_cpu_s")
PERCENTILES = (("p50_s", 50.0), ("p95_s", 95.0), ("p99_s", 99.0), ("p999_s", 99.9))


def step_dir(step: int, rank: int) -> str:
    """Folder of one rank's objects for user-count step `step`."""
    return f"kv_{step}/r{rank}"


def object_key(step: int, rank: int, entry_id: int, block: int) -> str:
    """Relative key of one KV block object."""
    return f"{step_dir(step, rank)}/e{entry_id}.{block}"


def content_id(entry_id: int, block: int) -> int:
    """The id stamped into an object's content (its low 20 bits differ between neighbours)."""
    return entry_id * 1031 + block


def percentiles(hist: LatencyHistogram) -> dict[str, float | int]:
    """count, mean and p50/p95/p99/p99.9 in seconds of a histogram."""
    out: dict[str, float | int] = {"count": hist.count}
    if hist.count:
        out["mean_s"] = hist.total_ns / hist.count / 1e9
        out.update({name: hist.percentile(pct) / 1e9 for name, pct in PERCENTILES})
        out["max_s"] = hist.max_ns / 1e9
    return out


def merge_sparse(items: list[dict[str, Any]]) -> LatencyHistogram:
    """One histogram from the sparse histograms of several ranks (exact: counts add)."""
    total = LatencyHistogram()
    for item in items:
        total.merge(LatencyHistogram.from_sparse(item))
    return total


@dataclass
class Counters:
    """What one thread counted while serving requests."""

    requests: int = 0
    output_tokens: int = 0
    context_tokens: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    read_objects: int = 0
    write_objects: int = 0
    deleted_objects: int = 0
    memory_hits: int = 0
    storage_hits: int = 0
    misses: int = 0
    prefix_reads: int = 0
    history_reads: int = 0
    ttft_ns: list[int] = field(default_factory=list)

    def add(self, other: Counters) -> None:
        """Add another thread's counts."""
        for name in self.__dataclass_fields__:
            if name == "ttft_ns":
                self.ttft_ns.extend(other.ttft_ns)
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))


class _Deadline(Exception):
    """The time is up: leave the request being served before its next read."""


class _Step:
    """One rank's state for one user count: the traffic, the tiers, the content."""

    def __init__(self, ctx: RunContext, step: int, users: int) -> None:
        kv = ctx.config.kvcache
        self.ctx = ctx
        self.step = step
        self.users = users
        self.backend = ctx.backend
        unit = max(1, ctx.backend.alignment)
        self.layout = Layout(MODELS[kv.model], kv.grouping, kv.block_tokens, unit)
        self.model = TrafficModel(ctx.config.seed, ctx.comm.rank, users, self.layout,
                                  max_context=kv.max_context, multi_turn=kv.multi_turn, max_turns=kv.max_turns,
                                  decode_batch=kv.decode_batch, step=step)
        self.storage_capacity = storage_capacity(kv.storage_capacity, ctx.info.free_bytes, ctx.comm.size)
        self.tiers = Tiers(kv.memory_budget, self.storage_capacity)
        self.chunk = chunk_size(ctx.config, unit)
        self.pattern = DataPattern(ctx.config.seed, _BASE_ID | (step << 20) | ctx.comm.rank, self.chunk)
        self.verify = kv.verify or ctx.config.verify
        self.fsync = kv.fsync and not ctx.backend.direct
        self.evict = not ctx.backend.direct
        self.gen_s = GENERATION_S[kv.generation]
        self.workers = min(kv.concurrency, users)
        self.buffers = [(self.pattern.new_buffer(), aligned_buffer(self.chunk),
                         aligned_buffer(self.chunk) if self.verify else None) for _ in range(self.workers)]
        self.prefix = self.model.entry(kv.prefix_tokens, PREFIX_ID) if kv.prefix_tokens else None
        self.removed: set[int] = set()
        if self.prefix is not None:  # the system prompt's KV, there before the first request
            tier, demoted, deleted = self.tiers.place(self.prefix)
            counters = Counters()
            if tier == "storage":
                self._write_entry(self.prefix, 0, None, counters)
            self.tiers.unpin([self.prefix, *demoted])

    # -- objects ----------------------------------------------------------------------
    def _key(self, entry: Entry, block: int) -> str:
        return self.ctx.key(object_key(self.step, self.ctx.comm.rank, entry.entry_id, block))

    def _write_entry(self, entry: Entry, slot: int, log: OpLog | None, c: Counters) -> None:
        backend = self.backend
        buf = self.buffers[slot][0]
        view = memoryview(buf)
        clock = time.perf_counter_ns
        for block, size in enumerate(entry.sizes):
            key = self._key(entry, block)
            pattern = self.pattern.for_file(content_id(entry.entry_id, block))
            offset = 0
            start = clock()
            try:
                handle = backend.open(key, "w")
                try:
                    for offset in range(0, size, self.chunk):
                        n = min(self.chunk, size - offset)
                        pattern.stamp(buf, offset)
                        done = backend.write_at(handle, view[:n], offset)
                        if done != n:
                            raise OSError(28, "short write")
                    if self.fsync:
                        backend.fsync(handle)
                finally:
                    backend.close(handle)
            except OSError as exc:
                raise io_error("write", backend.path_of(key), exc, offset) from None
            end = clock()
            if log is not None:
                log.record(size, start, end)
            c.write_bytes += size
            c.write_objects += 1

    def _read_entry(self, entry: Entry, slot: int, log: OpLog | None, c: Counters, deadline_ns: int) -> None:
        backend = self.backend
        _, buf, scratch = self.buffers[slot]
        view = memoryview(buf)
        clock = time.perf_counter_ns
        for block, size in enumerate(entry.sizes):
            key = self._key(entry, block)
            if self.evict:
                # untimed, as the reference drops the page cache before np.load; an object
                # fsynced at its write has nothing to flush first
                backend.evict(key, synced=self.fsync)
            start = clock()
            if start >= deadline_ns:
                raise _Deadline
            offset = 0
            pattern = self.pattern.for_file(content_id(entry.entry_id, block)) if self.verify else None
            try:
                handle = backend.open(key, "r")
                try:
                    for offset in range(0, size, self.chunk):
                        n = min(self.chunk, size - offset)
                        got = backend.read_at(handle, view[:n], offset)
                        if got != n:
                            raise BenchIOError(f"read {backend.path_of(key)} at offset {offset}: expected {n} "
                                               f"bytes, got {got}", "was the object truncated or replaced?",
                                               path=backend.path_of(key))
                        if pattern is not None:
                            bad = pattern.first_mismatch(view, offset, n, scratch)  # type: ignore[arg-type]
                            if bad >= 0:
                                raise VerifyError(f"data verification failed: {backend.path_of(key)} differs "
                                                  f"from what was written at offset {bad}",
                                                  "the storage returned wrong data", path=backend.path_of(key))
                finally:
                    backend.close(handle)
            except OSError as exc:
                raise io_error("read", backend.path_of(key), exc, offset) from None
            end = clock()
            if log is not None:
                log.record(size, start, end)
            c.read_bytes += size
            c.read_objects += 1

    def _remove(self, entries: list[Entry], c: Counters) -> None:
        for entry in entries:
            for block in range(len(entry.sizes)):
                self.backend.remove(self._key(entry, block))
                c.deleted_objects += 1
            self.removed.add(entry.entry_id)

    # -- requests ---------------------------------------------------------------------
    def _access(self, entry: Entry, slot: int, logs: tuple[OpLog, OpLog] | None, c: Counters,
                deadline_ns: int) -> None:
        """Read an entry from wherever it is (nothing to move from the memory tier)."""
        where = self.tiers.touch(entry)
        if where is None:
            c.misses += 1
            return
        try:
            if where == "memory":
                c.memory_hits += 1
            else:
                c.storage_hits += 1
                self._read_entry(entry, slot, logs[0] if logs else None, c, deadline_ns)
        finally:
            self.tiers.unpin([entry])

    def serve(self, request: Request, slot: int, logs: tuple[OpLog, OpLog] | None, c: Counters,
              deadline_ns: int) -> None:
        """One request: prefix and history reads, prefill write, decode reads."""
        start = time.perf_counter_ns()
        if self.prefix is not None:
            self._access(self.prefix, slot, logs, c, deadline_ns)
            c.prefix_reads += 1
        for earlier in request.history:
            self._access(earlier, slot, logs, c, deadline_ns)
            c.history_reads += 1
        tier, demoted, deleted = self.tiers.place(request.entry)
        try:  # a prefill is written whole, even past the deadline: a later read finds every object
            write_log = logs[1] if logs else None
            if tier == "storage":
                self._write_entry(request.entry, slot, write_log, c)
            for entry in demoted:  # the waterfall: what left the memory tier goes to storage
                self._write_entry(entry, slot, write_log, c)
        finally:
            self.tiers.unpin([request.entry, *demoted])
        self.model.remember(request)
        self._remove(deleted, c)
        ttft = 0
        left = request.output_tokens
        for _ in range(request.decode_reads):
            self._access(request.entry, slot, logs, c, deadline_ns)
            if not ttft:
                ttft = time.perf_counter_ns() - start
            if self.gen_s and left > 0:
                tokens = min(left, self.ctx.config.kvcache.decode_batch)
                time.sleep(tokens * self.gen_s)
                left -= tokens
        # counted with the request, once it is complete (prefill only: the first token
        # follows the prefill)
        c.ttft_ns.append(ttft or time.perf_counter_ns() - start)
        c.requests += 1
        c.output_tokens += request.output_tokens
        c.context_tokens += request.context_tokens

    def drive(self, rec: PhaseRecorder | None, seconds: float) -> Counters:
        """Serve requests with the worker threads for `seconds` (rec None: warm-up, unrecorded)."""
        deadline = time.perf_counter_ns() + int(seconds * 1e9)
        stop = threading.Event()
        errors: list[BaseException] = []
        counters = [Counters() for _ in range(self.workers)]
        logs = [(rec.new_log(), rec.new_log()) if rec is not None else None for _ in range(self.workers)]
        limit = self.ctx.config.kvcache.max_requests if rec is not None else 0
        tickets = itertools.count()  # next() is atomic under the GIL

        def worker(slot: int) -> None:
            mine = list(range(slot, self.users, self.workers))
            try:
                while not stop.is_set() and time.perf_counter_ns() < deadline:
                    for user in mine:
                        if stop.is_set() or time.perf_counter_ns() >= deadline:
                            return
                        if limit and next(tickets) >= limit:
                            return
                        self.serve(self.model.next_request(user), slot, logs[slot], counters[slot], deadline)
            except _Deadline:
                return
            except BaseException as exc:  # handed to the main thread
                errors.append(exc)
                stop.set()

        run_workers(self.workers, worker, stop, errors, self.ctx.check_stop if rec is not None else None)
        total = Counters()
        for c in counters:
            total.add(c)
        if rec is not None:
            reads, writes = LatencyHistogram(), LatencyHistogram()
            for read_log, write_log in logs:  # type: ignore[misc]
                read_log.flush()
                write_log.flush()
                reads.merge(read_log.hist)
                writes.merge(write_log.hist)
            ttft = LatencyHistogram()
            ttft.add_many(_ns_array(total.ttft_ns))
            rec.files += total.read_objects + total.write_objects
            rec.extra["kvcache"] = self.rank_record(total, reads, writes, ttft)
        return total

    def rank_record(self, c: Counters, reads: LatencyHistogram, writes: LatencyHistogram,
                    ttft: LatencyHistogram) -> dict[str, Any]:
        """This rank's kvcache values for the results file (histograms sparse)."""
        return {
            "users": self.users, "requests": c.requests, "output_tokens": c.output_tokens,
            "context_tokens": c.context_tokens, "read_bytes": c.read_bytes, "write_bytes": c.write_bytes,
            "read_objects": c.read_objects, "write_objects": c.write_objects,
            "deleted_objects": c.deleted_objects, "memory_hits": c.memory_hits,
            "storage_hits": c.storage_hits, "misses": c.misses, "prefix_reads": c.prefix_reads,
            "history_reads": c.history_reads,
            "read_p95_s": reads.percentile(95) / 1e9, "write_p95_s": writes.percentile(95) / 1e9,
            "read_histogram": reads.to_sparse(), "write_histogram": writes.to_sparse(),
            "ttft_histogram": ttft.to_sparse(),
        }

    def remove_all(self) -> None:
        """Delete every object of this step that is still on storage."""
        self._remove([e for e in self.tiers.stored() if e.entry_id not in self.removed], Counters())


FREE_SHARE = 0.8  # of the free space at preflight, shared by the ranks, when storage_capacity is 0


def storage_capacity(configured: int, free_bytes: int | None, ranks: int) -> int:
    """Bytes of KV one rank keeps on storage: `kvcache.storage_capacity`, or with 0 a rank's
    share of FREE_SHARE of the free space preflight found (as the reference sizes its
    storage tier from the free space); 0 (unbounded) where free space is unknown (S3)."""
    if configured:
        return configured
    return int(free_bytes * FREE_SHARE) // max(1, ranks) if free_bytes else 0


def _ns_array(values: list[int]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.int64)


def chunk_size(config: Config, unit: int) -> int:
    """Bytes per I/O: transfer_size, or less when every object is smaller; a multiple of `unit`."""
    kv = config.kvcache
    shape = MODELS[kv.model]
    layout = Layout(shape, kv.grouping, kv.block_tokens, unit)
    largest = layout.largest_object(kv.max_context or 25000)
    return round_up(min(kv.transfer_size, largest), max(unit, 4096))


class KvcacheWorkload(Workload):
    """Users' inference requests writing and reading KV blocks for a fixed time."""

    name = "kvcache"

    def planned_bytes(self, config: Config, size: int) -> int:
        return config.kvcache.storage_capacity * size

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        kv = config.kvcache
        chunk = chunk_size(config, 4096)
        per_thread = 3 if kv.verify or config.verify else 2
        count = min(kv.concurrency, max(kv.users)) * per_thread + 1
        return (count * buffer_footprint(chunk, config.huge_pages),
                f"min(kvcache.transfer_size, largest object) {format_size(chunk)} x {per_thread} per thread "
                f"x kvcache.concurrency {kv.concurrency}",
                "lower kvcache.transfer_size or kvcache.concurrency, or run fewer ranks per node")

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        return config.kvcache.concurrency * config.storage.parts_in_flight

    def check(self, config: Config, size: int, alignment: int) -> None:
        check_alignment("kvcache.transfer_size", config.kvcache.transfer_size, alignment)

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        steps = len(config.kvcache.users)
        for step in range(steps):
            for rank in range(size):
                backend.makedirs(f"{info.run_key}/{step_dir(step, rank)}")
        info.checks.append(f"created {steps} x {size} folder(s) kv_<step>/r<rank>/ in the run directory")

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        kv = config.kvcache
        shape = MODELS[kv.model]
        layout = Layout(shape, kv.grouping, kv.block_tokens, 1)
        model = TrafficModel(config.seed, max(rank, 0), max(kv.users), layout, max_context=kv.max_context,
                             multi_turn=kv.multi_turn, max_turns=kv.max_turns, decode_batch=kv.decode_batch)
        return {"model": shape.name, "bytes_per_token": shape.bytes_per_token, "users": kv.users,
                "first_users": [{"kind": u.kind, "context_tokens": u.context_length,
                                 "output_tokens": u.output_length} for u in model.users[:4]],
                "object_bytes_at_max_context": layout.object_sizes(kv.max_context or 25000)[:1]}

    def run(self, ctx: RunContext) -> None:
        kv = ctx.config.kvcache
        shape = MODELS[kv.model]
        for step, users in enumerate(kv.users):
            state: _Step = ctx.setup(lambda s=step, u=users: _Step(ctx, s, u))
            self._last = state
            if kv.warmup > 0:  # fills the tiers and conversations; not recorded
                ctx.setup(lambda st=state: st.drive(None, kv.warmup))
            ctx.phase("kvcache", step, lambda rec, st=state: st.drive(rec, kv.duration),
                      users=users, model=shape.name, bytes_per_token=shape.bytes_per_token,
                      grouping=kv.grouping, memory_budget=kv.memory_budget, generation=kv.generation,
                      concurrency=min(kv.concurrency, users), duration_s=kv.duration, warmup_s=kv.warmup,
                      fsync=state.fsync, verified=state.verify, storage_capacity=state.storage_capacity,
                      cache=self._cache(ctx))
            if not ctx.config.keep_files:
                ctx.setup(state.remove_all)

    def _cache(self, ctx: RunContext) -> dict[str, Any]:
        own = ctx.backend.cache_state()
        if own is not None:
            return own
        return {"state": "cold", "method": "posix_fadvise(POSIX_FADV_DONTNEED) on each object before it is read; "
                                           "fsync after each object written" if ctx.config.kvcache.fsync else
                "posix_fadvise(POSIX_FADV_DONTNEED) on each object before it is read; no fsync"}

    def cleanup(self, ctx: RunContext) -> None:
        state = getattr(self, "_last", None)
        if state is not None and state.ctx is ctx:
            state.remove_all()  # a run stopped mid-step leaves that step's objects

    def cleanup_shared(self, ctx: RunContext) -> None:
        for step in range(len(ctx.config.kvcache.users)):
            for rank in range(ctx.comm.size):
                ctx.backend.remove_dir(ctx.key(step_dir(step, rank)))
            ctx.backend.remove_dir(ctx.key(f"kv_{step}"))

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        return {"kvcache": summarize_kvcache(ctx.config, ctx.phases)}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        return kvcache_lines(document)

    def csv_columns(self) -> list[str]:
        return list(CSV_COLUMNS)

    def csv_values(self, document: dict[str, Any], phase: dict[str, Any]) -> list[Any]:
        steps = {s["iteration"]: s for s in (document.get("kvcache") or {}).get("steps", [])}
        step = steps.get(phase.get("iteration")) if phase.get("name") == "kvcache" else None
        if step is None:
            return [""] * len(CSV_COLUMNS)
        rd, wr, ttft = step["read_latency"], step["write_latency"], step["ttft"]
        dev = step.get("device_bytes") or {}
        return [step["users"], f"{step['tokens_per_s']:.3f}", f"{step['requests_per_s']:.3f}",
                f"{step['read_GiBps']:.6f}", f"{step['write_GiBps']:.6f}",
                *(rd.get(k, "") for k in ("p50_s", "p95_s", "p99_s", "p999_s")), step["read_p95_max_rank_s"],
                wr.get("p95_s", ""), step["write_p95_max_rank_s"], ttft.get("p50_s", ""), ttft.get("p95_s", ""),
                f"{step['hit_rates']['memory']:.6f}", f"{step['hit_rates']['storage']:.6f}",
                dev.get("read", ""), dev.get("write", ""), step["client_cpu_s"]]


def step_figures(phase: dict[str, Any]) -> dict[str, Any]:
    """The figures of one measured step, recomputed from its rank records."""
    ranks = [r["kvcache"] for r in phase["ranks"] if "kvcache" in r]
    seconds = float(phase["seconds"])

    def total(name: str) -> int:
        return sum(int(r[name]) for r in ranks)

    def rate(value: float) -> float:
        return value / seconds if seconds > 0 else 0.0

    reads = merge_sparse([r["read_histogram"] for r in ranks])
    writes = merge_sparse([r["write_histogram"] for r in ranks])
    ttft = merge_sparse([r["ttft_histogram"] for r in ranks])
    accesses = total("memory_hits") + total("storage_hits") + total("misses")
    device = device_bytes(phase)
    read_bytes, write_bytes = total("read_bytes"), total("write_bytes")
    moved = read_bytes + write_bytes
    cpu = phase.get("client_cpu") or {}
    cpu_s = float(cpu.get("user_s", 0.0)) + float(cpu.get("system_s", 0.0))
    return {
        "users": int(phase.get("users", ranks[0]["users"] if ranks else 0)),
        "users_total": sum(int(r["users"]) for r in ranks),
        "iteration": phase["iteration"],
        "seconds": seconds,
        "requests": total("requests"), "output_tokens": total("output_tokens"),
        "requests_per_s": rate(total("requests")), "tokens_per_s": rate(total("output_tokens")),
        "read_bytes": read_bytes, "write_bytes": write_bytes,
        "read_GiBps": rate(read_bytes) / GiB, "write_GiBps": rate(write_bytes) / GiB,
        "read_GBps": rate(read_bytes) / 1e9, "write_GBps": rate(write_bytes) / 1e9,
        "read_objects": total("read_objects"), "write_objects": total("write_objects"),
        "deleted_objects": total("deleted_objects"),
        "hit_rates": {
            "accesses": accesses,
            "memory": total("memory_hits") / accesses if accesses else 0.0,
            "storage": total("storage_hits") / accesses if accesses else 0.0,
            "miss": total("misses") / accesses if accesses else 0.0,
        },
        "read_latency": percentiles(reads),
        "write_latency": percentiles(writes),
        "read_p95_s": reads.percentile(95) / 1e9 if reads.count else None,
        "read_p95_max_rank_s": max((float(r["read_p95_s"]) for r in ranks), default=0.0),
        "write_p95_max_rank_s": max((float(r["write_p95_s"]) for r in ranks), default=0.0),
        "ttft": percentiles(ttft),
        "device_bytes": {"read": device[0], "write": device[1]} if device is not None else None,
        "client_cpu_s": cpu_s,
        "client_cpu_s_per_GB": cpu_s / (moved / 1e9) if moved else None,
        "read_histogram": reads.to_sparse(),
        "write_histogram": writes.to_sparse(),
        "ttft_histogram": ttft.to_sparse(),
    }


def summarize_kvcache(config: Config, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's kvcache summary: the model, each step's figures, the capacity."""
    kv = config.kvcache
    shape = MODELS[kv.model]
    steps = [step_figures(p) for p in phases if p["name"] == "kvcache"]
    out: dict[str, Any] = {
        "model": shape.name, "bytes_per_token": shape.bytes_per_token, "layers": shape.layers,
        "kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "grouping": kv.grouping,
        "block_tokens": kv.block_tokens, "memory_budget": kv.memory_budget, "generation": kv.generation,
        "concurrency": kv.concurrency, "duration_s": kv.duration, "warmup_s": kv.warmup,
        "latency_note": "read/write latency: one sample per object (open, every piece, fsync, close); "
                        "pooled = percentiles of the histograms of every rank merged; "
                        "max_rank = the largest of the per-rank p95s (what the MLPerf reference reports)",
        "steps": steps,
    }
    if len(kv.users) > 1:
        out["capacity"] = capacity([{"users": s["users"], "read_p95_s": s["read_p95_s"]} for s in steps],
                                   kv.p95_target)
    return out


RECOMPUTED = ("read_latency", "write_latency", "ttft", "read_p95_max_rank_s", "read_bytes", "write_bytes",
              "requests", "output_tokens", "hit_rates")


def recompute_line(document: dict[str, Any]) -> str:
    """Whether each step's figures equal those recomputed from its phase's rank records."""
    phases = {p["iteration"]: p for p in document.get("phases", []) if p.get("name") == "kvcache"}
    steps = (document.get("kvcache") or {}).get("steps", [])
    bad = []
    for step in steps:
        phase = phases.get(step["iteration"])
        again = step_figures(phase) if phase is not None else {}
        bad.extend(f"users {step['users']} {key}" for key in RECOMPUTED if again.get(key) != step.get(key))
    if bad:
        return "kvcache figures recomputed from the per-rank histograms and counts: MISMATCH in " + ", ".join(bad)
    return f"kvcache figures recomputed from the per-rank histograms and counts: match ({len(steps)} step(s))"


def _ms(value: Any) -> str:
    return f"{float(value) * 1e3:.2f}" if value is not None else "-"


def kvcache_lines(document: dict[str, Any]) -> list[str]:
    """The kvcache table printed after the phase table."""
    kv = document.get("kvcache") or {}
    if not kv.get("steps"):
        return []
    lines = ["", f"kvcache {kv['model']}: {kv['bytes_per_token']} bytes of KV per token, objects per "
                 f"{kv['grouping']}, memory tier {format_size(int(kv['memory_budget']))} per rank, "
                 f"generation {kv['generation']}",
             f"{'users':>6}{'tokens/s':>10}{'req/s':>8}{'read GiB/s':>11}{'write GiB/s':>12}"
             f"{'rd p50 ms':>10}{'p95':>8}{'p99':>8}{'p99.9':>8}{'max-rank p95':>13}{'wr p95 ms':>10}"
             f"{'TTFT p95 ms':>12}{'mem hit':>8}{'sto hit':>8}"]
    for s in kv["steps"]:
        rd, wr, hr = s["read_latency"], s["write_latency"], s["hit_rates"]
        lines.append(f"{s['users']:>6}{s['tokens_per_s']:>10.1f}{s['requests_per_s']:>8.2f}"
                     f"{s['read_GiBps']:>11.3f}{s['write_GiBps']:>12.3f}{_ms(rd.get('p50_s')):>10}"
                     f"{_ms(rd.get('p95_s')):>8}{_ms(rd.get('p99_s')):>8}{_ms(rd.get('p999_s')):>8}"
                     f"{_ms(s['read_p95_max_rank_s']):>13}{_ms(wr.get('p95_s')):>10}"
                     f"{_ms(s['ttft'].get('p95_s')):>12}{hr['memory']:>8.1%}{hr['storage']:>8.1%}")
    for s in kv["steps"]:
        dev = s.get("device_bytes")
        if dev is not None:
            lines.append(f"users {s['users']}: device moved {dev['read']} B read, {dev['write']} B written "
                         f"(block device counters); mpibench moved {s['read_bytes']} B read, "
                         f"{s['write_bytes']} B written; client CPU {s['client_cpu_s']:.2f} s")
    lines.append("users per rank; read/write latency per object, pooled over every rank's merged histogram; "
                 "max-rank p95 = the largest per-rank p95 (the MLPerf reference's figure); "
                 "bandwidth = bytes / (latest end - earliest start); GiB/s = 2^30 B/s")
    lines.append(recompute_line(document))
    cap = kv.get("capacity")
    if cap:
        found = (f"{cap['users']} users per rank" if cap["met"] else "none (the smallest count is over it)")
        lines.append(f"capacity at pooled p95 read latency under {_ms(cap['p95_target_s'])} ms: {found}"
                     + (f"; {cap['first_over']} users went over" if cap.get("first_over") else ""))
    return lines


def figure_users(document: dict[str, Any], figure: Any) -> Any:
    """Pooled read latency (p50, p95, p99, and the max of per-rank p95s) and tokens/s against
    users per rank, with the p95 target and the capacity found (mpibench report --png)."""
    kv = document["kvcache"]
    steps = kv["steps"]
    users = [s["users"] for s in steps]
    left, right = figure.subplots(1, 2)
    for key, label in (("p50_s", "p50 pooled"), ("p95_s", "p95 pooled"), ("p99_s", "p99 pooled")):
        left.plot(users, [s["read_latency"].get(key, 0.0) * 1e3 for s in steps], marker="o", label=label)
    left.plot(users, [s["read_p95_max_rank_s"] * 1e3 for s in steps], marker="x", linestyle="--",
              label="p95 max of ranks (reference)")
    cap = kv.get("capacity")
    if cap:
        left.axhline(cap["p95_target_s"] * 1e3, color="grey", linestyle=":", label="p95 target")
        if cap["met"]:
            left.axvline(cap["users"], color="green", linestyle=":", label=f"capacity {cap['users']} users")
    left.set_xlabel("users per rank")
    left.set_ylabel("read latency per object (ms)")
    left.set_title("KV block read latency")
    left.legend(fontsize=7)
    right.plot(users, [s["tokens_per_s"] for s in steps], marker="o", label="tokens/s")
    right.set_xlabel("users per rank")
    right.set_ylabel("tokens/s (all ranks)")
    twin = right.twinx()
    twin.plot(users, [s["read_GiBps"] for s in steps], marker="s", color="tab:orange", label="read GiB/s")
    twin.set_ylabel("read GiB/s")
    right.set_title("throughput")
    return figure


WORKLOAD = KvcacheWorkload()
