"""checkpoint: write sharded LLM checkpoints, then read them back, as MLPerf Storage does.

Each checkpoint is one measured write phase: every rank writes its shard files (model and
optimizer, sizes from mpibench.presets) into ``checkpoint_<n>/`` of the run directory in
``checkpoint.transfer_size`` I/Os, fsyncs and closes them. Then each read phase reads one
checkpoint back. Ranks read the shards another rank wrote (shifted by one node, as IOR -C
and DLIO's recovery_rank_shift do); on local_fs the reader evicts them from the page
cache first, and the result records it. With ``verify`` every byte read is checked
against the seeded content (DataPattern: per checkpoint, shard and offset).

When ``checkpoint.ranks`` emulates more ranks than the job has, actual rank r writes the
shards of emulated ranks r, r + size, r + 2 size, ... (round robin).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench.backends.base import AccessHints
from mpibench.buffers import DataPattern, buffer_footprint
from mpibench.config import Config
from mpibench.context import broadcast_outcome
from mpibench.engine import prepare_buffers, timed_close, timed_fsync, transfer_region
from mpibench.environment import memory_total_bytes
from mpibench.errors import ConfigError, PreflightError
from mpibench.formats import encode_manifest
from mpibench.metrics import PhaseRecorder
from mpibench.mlperf import ACCELERATOR_MEMORY_GB, GIB
from mpibench.plan import reorder_partner
from mpibench.presets import (
    CheckpointModel,
    Shard,
    check_world_size,
    checkpoint_bytes,
    rank_shards,
    resolve_model,
    shard_unit,
)
from mpibench.units import format_size
from mpibench.workloads.bandwidth import annotate_cache, check_alignment
from mpibench.workloads.base import Workload
from mpibench.workloads.datagen import MANIFEST_READ_BYTES, check_dataset_name, key_exists

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

_CHECKPOINT_ID_SHIFT = 21  # shard ids (2 per emulated rank) stay below 2**21


def checkpoint_dir(n: int) -> str:
    """Folder of checkpoint `n` inside the run directory."""
    return f"checkpoint_{n}"


def shard_patterns(seed: int, n: int, shards: list[Shard], transfer_size: int,
                   ) -> list[tuple[Shard, DataPattern, DataPattern | None]]:
    """The content of shards of checkpoint n: a pattern for their full transfers and their tail.

    Shards share one base per transfer size (memory stays small however many shards a rank
    emulates); every 4 KiB block still carries its own shard and offset stamp.
    """
    bases: dict[int, DataPattern] = {}
    base_id = (n << _CHECKPOINT_ID_SHIFT) | ((1 << _CHECKPOINT_ID_SHIFT) - 1)

    def pattern(size: int, shard: Shard) -> DataPattern:
        if size not in bases:
            bases[size] = DataPattern(seed, base_id, size)
        return bases[size].for_file((n << _CHECKPOINT_ID_SHIFT) + shard.shard_id)

    work = []
    for shard in shards:
        size = min(transfer_size, shard.nbytes)
        tail = shard.nbytes % size
        work.append((shard, pattern(size, shard), pattern(tail, shard) if tail else None))
    return work


def _stats(values: list[float]) -> dict[str, float]:
    """Mean, median, min and max of a list (empty: {})."""
    if not values:
        return {}
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


class CheckpointWorkload(Workload):
    """num_checkpoints_write checkpoint writes, then num_checkpoints_read reads."""

    name = "checkpoint"
    describe_totals = True

    def _model(self, config: Config, size: int | None) -> CheckpointModel:
        return resolve_model(config.checkpoint, size)

    def planned_bytes(self, config: Config, size: int) -> int:
        ck = config.checkpoint
        if ck.mode == "read":  # reads what a write run left: nothing new on storage
            return 0
        return checkpoint_bytes(self._model(config, size), ck.scale) * ck.num_checkpoints_write

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        # Per rank: the content of full transfers and of a shard's tail, one buffer per I/O
        # in flight kept for every phase, as many for a region of another size (a shard
        # smaller than a transfer needs no more than the shard).
        ck = config.checkpoint
        shards = rank_shards(self._model(config, size), ck.scale, 1, 0)  # every shard: the largest counts
        unit = min(ck.transfer_size, max((s.nbytes for s in shards), default=0))
        count = 2 * io_depth + 2 + (1 if ck.verify or config.verify else 0)
        return (count * buffer_footprint(unit, config.huge_pages),
                f"checkpoint.transfer_size x (2 x io_depth {io_depth} + 2)",
                "lower checkpoint.transfer_size or io.depth, or run fewer ranks per node")

    def access_hints(self, config: Config) -> AccessHints:
        """Each rank writes its own shard files front to back."""
        return AccessHints(unit="shard")

    def check(self, config: Config, size: int, alignment: int) -> None:
        ck = config.checkpoint
        model = self._model(config, size)
        check_world_size(model, ck.ranks, size)
        if ck.num_checkpoints_write == 0 and ck.num_checkpoints_read == 0:
            raise ConfigError("checkpoint.num_checkpoints_write and num_checkpoints_read are both 0",
                              "write at least one checkpoint")
        if ck.num_checkpoints_read > ck.num_checkpoints_write:
            raise ConfigError(
                f"checkpoint.num_checkpoints_read={ck.num_checkpoints_read} is more than the "
                f"{ck.num_checkpoints_write} checkpoint(s) written",
                f"set checkpoint.num_checkpoints_read={ck.num_checkpoints_write} or write more")
        check_alignment("checkpoint.transfer_size", ck.transfer_size, alignment)
        check_mlperf_rules(ck, model)

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        ck = config.checkpoint
        if ck.mode != "both":
            check_dataset_name(ck.folder)
            found = read_marker(backend, ck.folder)
            where = backend.path_of(ck.folder)
            if ck.mode == "write" and found is not None:
                raise PreflightError(f"{where} already holds checkpoints (written by run {found.get('run_id')})",
                                     "read them (checkpoint.mode=read) or remove the folder first")
            if ck.mode == "read":
                if found is None:
                    raise PreflightError(f"no checkpoints at {where} (no {MARKER_NAME})",
                                         "write them first: checkpoint.mode=write with the same checkpoint.folder")
                wanted = marker_of(config, size, backend.alignment)
                differs = [f"{k}={found.get(k)!r} (config says {v!r})" for k, v in wanted.items()
                           if k in MARKER_KEYS and found.get(k) != v]
                if differs:
                    raise PreflightError(f"the checkpoints at {where} were written with {', '.join(differs)}",
                                         "read with the config and rank count that wrote them")
                info.checks.append(f"checkpoints at {where}: {found['num_checkpoints_write']} written by run "
                                   f"{found.get('run_id')}")
                return
        for n in range(ck.num_checkpoints_write):
            backend.makedirs(f"{base_key(config, info)}/{checkpoint_dir(n)}")
        info.checks.append(f"created {ck.num_checkpoints_write} checkpoint folder(s) checkpoint_<n>/ in "
                           + ("the run directory" if ck.mode == "both" else backend.path_of(ck.folder)))

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        ck = config.checkpoint
        model = self._model(config, size)
        if rank < 0:
            return {"totals": self._totals(config, model, 4096)}
        shards = rank_shards(model, ck.scale, size, rank)
        return {"rank": rank, "emulated_ranks": sorted({s.rank for s in shards}),
                "shards": [{"file": f"{checkpoint_dir(0)}/{s.name}", "bytes": s.nbytes} for s in shards],
                "bytes_per_checkpoint": sum(s.nbytes for s in shards)}

    def _totals(self, config: Config, model: CheckpointModel, unit: int) -> dict[str, Any]:
        ck = config.checkpoint
        return {"model": model.name, "emulated_ranks": model.ranks, "tp": model.tp, "pp": model.pp,
                "dp": model.dp, "zero_stage": model.zero_stage, "model_bytes": model.model_bytes,
                "optimizer_bytes": model.optimizer_bytes,
                "full_checkpoint_bytes": model.model_bytes + model.optimizer_bytes,
                "scale": ck.scale, "scaled": ck.scale < 1.0,
                "bytes_per_checkpoint": checkpoint_bytes(model, ck.scale, unit),
                "checkpoints_written": ck.num_checkpoints_write, "checkpoints_read": ck.num_checkpoints_read}

    def run(self, ctx: RunContext) -> None:
        config = ctx.config
        ck = config.checkpoint
        comm = ctx.comm
        layout = ctx.layout
        backend = ctx.backend
        model = self._model(config, comm.size)
        unit = shard_unit(backend.alignment)
        mine = rank_shards(model, ck.scale, comm.size, comm.rank, unit)
        partner = reorder_partner(comm.rank, comm.size, max(layout.ranks_per_node), layout.num_nodes)
        theirs = rank_shards(model, ck.scale, comm.size, partner, unit)
        total = checkpoint_bytes(model, ck.scale, unit)
        verify = ck.verify or config.verify
        meta = {"model": model.name, "scaled": ck.scale < 1.0, "scale": ck.scale,
                "transfer_size": ck.transfer_size, "io_depth": ctx.io_depth}
        # Each node's memory, read there: the cache rule compares the data a node wrote with it.
        node_memory = dict(comm.allgather((layout.node_index, memory_total_bytes() or 0)))
        meta["node_memory_bytes"] = [node_memory[i] for i in sorted(node_memory)]
        writes = ck.num_checkpoints_write if ck.mode != "read" else 0
        reads = ck.num_checkpoints_read if ck.mode != "write" else 0
        if ck.mode == "read":  # the gap since the write run ended: the rules want the read soon after
            found = broadcast_outcome(comm, lambda: read_marker(backend, ck.folder) or {})
            meta["read_gap_s"] = comm.bcast(time.time() - float(found.get("written_at", 0.0)))
            meta["written_by_run"] = found.get("run_id")
        for n in range(writes):
            if n and ck.interval > 0:
                time.sleep(ck.interval)  # the training steps between two checkpoints
            work = ctx.setup(lambda c=n: self._content(ctx, c, mine, "write"))
            ctx.phase("write", n, lambda rec, w=work, c=n: self._shards(ctx, rec, "write", c, w, False),
                      expected_bytes=total, checkpoint=n, fsync=ck.fsync, cache=self._write_cache(ctx),
                      **{**meta, "io_depth": ctx.write_io_depth})
            del work
        if ck.mode == "write":  # the read run finds the checkpoints, and when they were done
            comm.barrier()
            if comm.is_root:
                write_marker(backend, ck.folder, {**marker_of(config, comm.size, backend.alignment),
                                                  "run_id": ctx.info.run_id, "written_at": time.time()})
            comm.barrier()
        for n in range(reads):
            work = ctx.setup(lambda c=n: self._content(ctx, c, theirs, "read"))
            cache = self._evict(ctx, n, theirs)
            phase = ctx.phase("read", n, functools.partial(self._shards, ctx, op="read", n=n, work=work, verify=verify),
                              expected_bytes=total, checkpoint=n, cache=cache, written_by=partner,
                              verified=verify, **meta)
            if phase is not None:
                annotate_cache(phase)
            del work

    def _write_cache(self, ctx: RunContext) -> dict[str, Any]:
        own = ctx.backend.cache_state()
        if own is not None:
            return own
        return {"state": "buffered", "method": "page cache" + (", fsync before close" if ctx.config.checkpoint.fsync
                                                               else ", no fsync")}

    def _evict(self, ctx: RunContext, n: int, shards: list[Shard]) -> dict[str, Any]:
        backend = ctx.backend
        own = backend.cache_state()
        if own is not None:
            return own
        evicted = all([backend.evict(shard_key(ctx, n, s)) for s in shards])
        everywhere = bool(ctx.comm.allreduce_min(1 if evicted else 0))
        return {"state": "cold", "evicted": everywhere,
                "method": "posix_fadvise(POSIX_FADV_DONTNEED) by the reading rank before the phase"}

    def _shards(self, ctx: RunContext, rec: PhaseRecorder, op: str, n: int,
                work: list[tuple[Shard, DataPattern, DataPattern | None]], verify: bool) -> None:
        backend = ctx.backend
        ck = ctx.config.checkpoint
        for shard, full, tail in work:
            key = shard_key(ctx, n, shard)
            path = backend.path_of(key)
            t = time.perf_counter()
            handle = backend.open(key, "w" if op == "write" else "r")
            rec.open_s += time.perf_counter() - t
            rec.files += 1
            try:
                t = time.perf_counter()
                size = full.transfer_size
                count = shard.nbytes // size
                transfer_region(ctx, rec, handle, op, path, 0, np.arange(count, dtype=np.int64) * size,
                                size, full, verify=verify)
                if tail is not None:
                    transfer_region(ctx, rec, handle, op, path, count * size, np.zeros(1, dtype=np.int64),
                                    tail.transfer_size, tail, verify=verify)
                rec.transfer_s += time.perf_counter() - t
                if op == "write" and ck.fsync:
                    timed_fsync(backend, handle, rec)
            finally:
                timed_close(backend, handle, rec)
            ctx.check_stop()
        rec.extra["shards"] = len(work)

    def _content(self, ctx: RunContext, n: int, shards: list[Shard], op: str,
                 ) -> list[tuple[Shard, DataPattern, DataPattern | None]]:
        """Checkpoint n's shard patterns, with the buffers of its largest shards' transfers
        allocated and filled now, untimed (other sizes get theirs in the phase)."""
        work = shard_patterns(ctx.config.seed, n, shards, ctx.config.checkpoint.transfer_size)
        if work:
            shard, full, _ = max(work, key=lambda item: item[1].transfer_size)
            prepare_buffers(ctx, op, shard.nbytes // full.transfer_size, full.transfer_size, full)
        return work

    def cleanup(self, ctx: RunContext) -> None:
        ck = ctx.config.checkpoint
        if ck.mode == "write":
            return  # kept for the read run, which removes them
        model = self._model(ctx.config, ctx.comm.size)
        shards = rank_shards(model, ck.scale, ctx.comm.size, ctx.comm.rank, shard_unit(ctx.backend.alignment))
        for n in range(ck.num_checkpoints_write):
            for shard in shards:
                ctx.backend.remove(shard_key(ctx, n, shard))

    def cleanup_shared(self, ctx: RunContext) -> None:
        ck = ctx.config.checkpoint
        if ck.mode == "write":
            return
        for n in range(ck.num_checkpoints_write):
            ctx.backend.remove_dir(f"{base_key(ctx.config, ctx.info)}/{checkpoint_dir(n)}")
        if ck.mode == "read":
            ctx.backend.remove(f"{ck.folder}/{MARKER_NAME}")
            ctx.backend.remove_dir(ck.folder)

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        config = ctx.config
        model = self._model(config, ctx.comm.size)
        out: dict[str, Any] = self._totals(config, model, shard_unit(ctx.backend.alignment))
        out["world_size"] = ctx.comm.size
        for op in ("write", "read"):
            rows = []
            for phase in (p for p in ctx.phases if p["name"] == op):
                seconds = phase["seconds"]
                rows.append({
                    "checkpoint": phase["iteration"],
                    "bytes": phase["bytes"],
                    "duration_s": max(r["end"] - r["start"] for r in phase["ranks"]),
                    "seconds": seconds,
                    "bandwidth_GiBps": phase["bandwidth_GiBps"],
                    "bandwidth_GBps": phase["bandwidth_GBps"],
                    "complete": phase.get("complete", True),
                })
            out[op] = {
                "checkpoints": rows,
                "duration_s": _stats([r["duration_s"] for r in rows]),
                "bandwidth_GiBps": _stats([r["bandwidth_GiBps"] for r in rows]),
                "bandwidth_GBps": _stats([r["bandwidth_GBps"] for r in rows]),
            }
        out["rules"] = checkpoint_rules(config, model, ctx.phases, ctx.backend.direct)
        return {"checkpoint": out}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        c = document.get("checkpoint") or {}
        if "write" not in c:
            return []
        size = c["bytes_per_checkpoint"]
        full = c["full_checkpoint_bytes"]
        scaled = (f"SCALED by {c['scale']:g}: {format_size(size)} ({size} bytes) per checkpoint instead of "
                  f"{format_size(full)}" if c["scaled"] else f"{format_size(size)} ({size} bytes) per checkpoint")
        lines = ["", f"checkpoint {c['model']}: {c['emulated_ranks']} emulated ranks (TP{c['tp']} x PP{c['pp']} "
                     f"x DP{c['dp']}, ZeRO-{c['zero_stage']}) on {c['world_size']} rank(s); {scaled}",
                 f"{'':<7}{'count':>6}{'GiB/s mean':>12}{'median':>9}{'min':>9}{'max':>9}"
                 f"{'GB/s mean':>11}{'duration s mean':>17}{'max':>9}"]
        for op in ("write", "read"):
            d = c[op]
            if not d["checkpoints"]:
                continue
            g, s, t = d["bandwidth_GiBps"], d["bandwidth_GBps"], d["duration_s"]
            lines.append(f"{op:<7}{len(d['checkpoints']):>6}{g['mean']:>12.3f}{g['median']:>9.3f}{g['min']:>9.3f}"
                         f"{g['max']:>9.3f}{s['mean']:>11.3f}{t['mean']:>17.3f}{t['max']:>9.3f}")
        lines.append("bandwidth = bytes / (latest rank end - earliest rank start); duration = the slowest "
                     "rank's time; GiB/s = 2^30 B/s, GB/s = 10^9 B/s")
        rules = c.get("rules") or {}
        if rules:
            memory = rules.get("accelerator_memory_ok")
            lines.append(f"MLPerf Storage v3.0 rules: {rules['writes']} writes then {rules['reads']} reads "
                         f"({'as required' if rules['ten_and_ten'] else 'the rules ask for 10 and 10'}), fsync "
                         f"{'at the end of every write' if rules['fsync'] else 'OFF (Rules 4.3.2 requires it)'}"
                         + ("" if memory is None else
                            f", {rules['accelerators']} x {rules['accelerator']} memory "
                            f"{'holds' if memory else 'does NOT hold'} the checkpoint")
                         + (", subset run (8B on 8 accelerators)" if rules["subset"] else "")
                         + ("" if rules.get("read_gap_s") is None else
                            f"; this read run started {rules['read_gap_s']:.1f} s after its write run ended"))
            lines.extend(f"warning: {w}" for w in rules["warnings"])
        return lines


MARKER_NAME = ".mpibench-checkpoints.json"
#: what a read run must share with the write run that left the checkpoints
MARKER_KEYS = ("model", "emulated_ranks", "scale", "seed", "shard_unit", "world_size", "num_checkpoints_write")
#: a read run that starts later than this after its write run ended gets a warning
READ_GAP_LIMIT_S = 30.0


def base_key(config: Config, info: PreflightInfo) -> str:
    """Where the checkpoint folders are: the run directory, or checkpoint.folder (write/read modes)."""
    return info.run_key if config.checkpoint.mode == "both" else config.checkpoint.folder


def shard_key(ctx: RunContext, n: int, shard: Shard) -> str:
    """Storage key of one shard file of checkpoint n."""
    return f"{base_key(ctx.config, ctx.info)}/{checkpoint_dir(n)}/{shard.name}"


def marker_of(config: Config, size: int, alignment: int) -> dict[str, Any]:
    """What the write run records beside its checkpoints (the read run must match it)."""
    ck = config.checkpoint
    model = resolve_model(ck, size)
    return {"mpibench_checkpoints": 1, "model": model.name, "emulated_ranks": model.ranks, "scale": ck.scale,
            "seed": config.seed, "shard_unit": shard_unit(alignment), "world_size": size,
            "num_checkpoints_write": ck.num_checkpoints_write}


def read_marker(backend: Backend, folder: str) -> dict[str, Any] | None:
    """The marker a write run left in `folder`, or None."""
    import json

    from mpibench.buffers import aligned_buffer

    key = f"{folder}/{MARKER_NAME}"
    if not key_exists(backend, key):
        return None
    buf = aligned_buffer(MANIFEST_READ_BYTES)
    n = backend.get(key, memoryview(buf)[:MANIFEST_READ_BYTES])
    try:
        found = json.loads(bytes(buf[:n]).decode("utf-8"))
    except ValueError:
        raise PreflightError(f"{backend.path_of(key)} is not valid JSON", "remove the folder and write again") from None
    return found if isinstance(found, dict) else None


def write_marker(backend: Backend, folder: str, doc: dict[str, Any]) -> None:
    """Write the marker (padded for O_DIRECT, cut to its size, fsynced)."""
    buf, size, padded = encode_manifest(doc, backend.alignment)
    handle = backend.open(f"{folder}/{MARKER_NAME}", "w")
    try:
        backend.write_at(handle, memoryview(buf)[:padded], 0)
        backend.truncate(handle, size)
        backend.fsync(handle)
    finally:
        backend.close(handle)


def check_mlperf_rules(ck: Any, model: CheckpointModel) -> None:
    """Rules 4.3.4 (accelerator memory x count >= checkpoint size) and 4.3.5 (subset: 8B on 8)."""
    if ck.accelerator != "none":
        memory = ACCELERATOR_MEMORY_GB[ck.accelerator] * GIB * model.ranks
        size = model.model_bytes + model.optimizer_bytes
        if memory < size:
            raise ConfigError(f"{model.ranks} emulated {ck.accelerator} accelerators hold {format_size(memory)}, "
                              f"less than the {format_size(size)} checkpoint of {model.name} (Rules 4.3.4)",
                              "emulate more ranks (checkpoint.ranks) or an accelerator with more memory")
    if ck.subset and (model.name != "llama3-8b" or model.ranks != 8):
        raise ConfigError(f"checkpoint.subset applies to llama3-8b on exactly 8 emulated ranks, not "
                          f"{model.name} on {model.ranks} (Rules 4.3.5)",
                          "remove checkpoint.subset, or use checkpoint.model=llama3-8b checkpoint.ranks=8")


def checkpoint_rules(config: Config, model: CheckpointModel, phases: list[dict[str, Any]],
                     direct: bool) -> dict[str, Any]:
    """How the run stands against the checkpoint rules of MLPerf Storage v3.0 (Rules 4.3)."""
    ck = config.checkpoint
    writes = [p for p in phases if p["name"] == "write"]
    reads = [p for p in phases if p["name"] == "read"]
    memory = next((p.get("node_memory_bytes") for p in writes + reads if p.get("node_memory_bytes")), []) or []
    nodes = max(1, len(memory))
    # A read run counts what its write run wrote: as many checkpoints of the size it reads.
    written = sum(p["bytes"] for p in writes) or (reads[0]["bytes"] * ck.num_checkpoints_write if reads else 0)
    per_node = written // nodes
    # Direct I/O keeps nothing in the page cache; buffered reads count as cleared when every
    # reading rank evicted its files (posix_fadvise) before every read phase.
    cleared = direct or (bool(reads) and all((p.get("cache") or {}).get("evicted") for p in reads))
    warnings = []
    least = min(memory) if memory else 0
    if reads and least and per_node < 3 * least and not cleared:
        warnings.append(f"each client node wrote {format_size(per_node)}, under 3x its memory "
                        f"({format_size(3 * least)}), and the caches were not cleared before the reads "
                        "(Rules 4.3.1): reads may come from memory")
    if not ck.fsync:
        warnings.append("checkpoint.fsync is off: Rules 4.3.2 requires an fsync at the end of every write")
    accelerator_ok = None
    if ck.accelerator != "none":
        accelerator_ok = ACCELERATOR_MEMORY_GB[ck.accelerator] * GIB * model.ranks >= model.model_bytes + model.optimizer_bytes
    gap = next((p.get("read_gap_s") for p in reads if p.get("read_gap_s") is not None), None)
    if gap is not None and gap > READ_GAP_LIMIT_S:
        warnings.append(f"the read run started {gap:.1f} s after the write run ended, more than "
                        f"{READ_GAP_LIMIT_S:g} s: the two do not make one checkpoint run")
    return {"edition": "MLPerf Storage v3.0", "mode": ck.mode, "read_gap_s": gap,
            "writes": len(writes), "reads": len(reads),
            # a write run and its read run together make the 10 writes then 10 reads
            "ten_and_ten": (len(writes) >= 10 or ck.mode == "read") and (len(reads) >= 10 or ck.mode == "write"),
            "fsync": ck.fsync,
            "accelerator": ck.accelerator, "accelerators": model.ranks,
            "accelerator_memory_ok": accelerator_ok, "subset": ck.subset,
            "data_per_node_bytes": per_node, "node_memory_bytes": memory, "caches_cleared": cleared,
            "warnings": warnings}


WORKLOAD = CheckpointWorkload()
