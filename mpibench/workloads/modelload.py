"""modelload: ranks cold-start an LLM from its safetensors shards, and say where the bytes came from.

The model is a Hugging Face layout in ``<storage.root>/<dataset.name>/`` written by
`datagen` with ``dataset.format=safetensors`` (mpibench.safetensors_layout: llama3 tensor
names and shapes, bf16, seeded random content, ``model.safetensors.index.json`` written
last). Preflight checks the index against the configured model and, on a FUSE mount,
probes what the mount serves (shared and private mappings, O_DIRECT, whether reads leave
pages in the page cache) and refuses a reader it cannot serve in one line.

Each iteration is a cold load, then a warm load, each one measured phase. Before the
cold one, the first rank of every node evicts every shard (posix_fadvise DONTNEED; also
under ``modelload.backing_root``, a FUSE mount's backing directory) and every rank
measures with mincore how much of its shards is still resident; the warm load follows
without eviction, its residency measured likewise. In a load every rank opens each
shard it needs, reads and checks its safetensors header and copies every byte of its
extents (mpibench.safetensors_layout.rank_extents) into a staging buffer, the way a
loader hands tensors to a device:

- ``mmap``: the shard mapped (MAP_PRIVATE as safetensors does, or MAP_SHARED), each
  tensor copied out of the mapping: the pages are really faulted in;
- ``read``: pread of each tensor's extent (each piece of a strided slice);
- ``direct``: O_DIRECT reads of the extents rounded out to the alignment and merged
  where they touch (native, or s3dlio's direct:// with storage.library=s3dlio);
- ``s3``: one ranged GET per tensor slice (from its first to its last byte), or with
  s3_fetch=objects each shard whole in one GET into a shard-sized buffer.

Per rank and load: time to the first tensor and to all, bytes touched (headers, and
what alignment or a covering range adds), tensor bytes, major and minor page faults
(getrusage), resident bytes of its shards before and after, /proc/self/io; per node the
block device's counters (the node's first rank, around the phase).
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench import environment
from mpibench.buffers import aligned_buffer, buffer_footprint
from mpibench.config import Config, modelload_reader
from mpibench.errors import BenchIOError, ConfigError, PreflightError, ResultsError
from mpibench.formats import check_dataset_name
from mpibench.metrics import OpLog, PhaseRecorder
from mpibench.pagecache import errno_name, evict_file, probe_mount, resident_bytes
from mpibench.plan import round_down, round_up
from mpibench.safetensors_layout import (
    PAGE,
    Extent,
    ModelFiles,
    ShardFile,
    aligned_runs,
    covering_runs,
    extents_summary,
    parse_header,
    rank_extents,
    shards_of,
)
from mpibench.units import format_size
from mpibench.workloads.base import Workload
from mpibench.workloads.modelgen import checked_index, model_of, parallelism

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

HEAD_READ = 64 * 1024  # the first read of a shard: the header length and, mostly, the header
COLD_RESIDENT_LIMIT = 0.01  # a cold load with more of its shards resident than this is flagged
WARM_FROM_MEMORY = 0.02  # a warm load whose processes read less than this from storage came from memory
PLAN_EXTENTS = 12  # extents `mpibench plan` lists per rank


def refuse_reader(config: Config, probe: dict[str, Any], mount: str) -> None:
    """A PreflightError when the FUSE mount cannot serve the configured reader."""
    reader = modelload_reader(config)
    option = ("it is mounted with direct_io without FUSE_DIRECT_IO_ALLOW_MMAP"
              if probe.get("direct_io") else "the mount refuses it")
    if reader == "mmap":
        mapping = config.modelload.mmap_mapping
        result = probe[f"{mapping}_mmap"]
        if result != "ok":
            other = "private" if mapping == "shared" else "shared"
            hint = (f"use modelload.mmap_mapping={other} (as safetensors maps) or modelload.reader=read"
                    if probe[f"{other}_mmap"] == "ok" else "use modelload.reader=read")
            flag = "MAP_SHARED" if mapping == "shared" else "MAP_PRIVATE"
            raise PreflightError(f"mmap ({flag}) on this FUSE mount {mount} fails with {result}: {option}", hint)
    if reader == "direct" and probe.get("o_direct") != "ok":
        raise PreflightError(f"O_DIRECT on this FUSE mount {mount} fails with {probe.get('o_direct')}",
                             "use storage.type=local_fs with modelload.reader=read")


# -- loading ----------------------------------------------------------------------------------------
def first_read(header_end: int, alignment: int, buffer_size: int) -> int:
    """Bytes of a shard's first read: HEAD_READ, or the header rounded to the alignment if
    longer, at most one buffer."""
    length = min(max(HEAD_READ, round_up(header_end, alignment)), buffer_size)
    return round_down(length, alignment) if alignment > 1 else length


def _faults() -> tuple[int, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_majflt, usage.ru_minflt


class _Load:
    """One rank's load of its extents: the reader's loop, with the figures it records."""

    def __init__(self, ctx: RunContext, rec: PhaseRecorder, model: ModelFiles, extents: list[Extent],
                 reader: str, buf: mmap.mmap) -> None:
        self.ctx = ctx
        self.rec = rec
        self.model = model
        self.extents = extents
        self.reader = reader
        self.buf = buf
        self.view = memoryview(buf)
        self.staging = np.frombuffer(buf, dtype=np.uint8)
        self.log: OpLog = rec.new_log()
        self.first_tensor: float | None = None
        self.header_bytes = 0
        self.shards = {s.name: s for s in model.shards}

    def run(self) -> None:
        """Load every shard this rank needs, in order."""
        backend = self.ctx.backend
        majflt, minflt = _faults()
        by_file: dict[str, list[Extent]] = {}
        for e in self.extents:
            by_file.setdefault(e.file, []).append(e)
        for name, extents in by_file.items():
            shard = self.shards[name]
            key = f"{self.ctx.config.dataset.name}/{name}"
            path = backend.path_of(key)
            t = time.perf_counter()
            handle = backend.open(key, "r")
            self.rec.open_s += time.perf_counter() - t
            self.rec.files += 1
            try:
                t = time.perf_counter()
                if self.reader == "mmap":
                    self._mmap(_fd(backend, handle), shard, extents, path)
                elif _whole_objects(self.ctx.config):
                    self._object(handle, shard, path)
                else:
                    self._check_header(shard, self._read_header(handle, shard, path), path)
                    if self.reader == "read":
                        self._read(handle, extents, path)
                    elif self.reader == "direct":
                        self._direct(handle, shard, extents, path)
                    else:
                        self._ranges(handle, shard, extents, path)
                self.rec.transfer_s += time.perf_counter() - t
            finally:
                t = time.perf_counter()
                backend.close(handle)
                self.rec.close_s += time.perf_counter() - t
        majflt2, minflt2 = _faults()
        self.rec.extra.update(
            first_tensor_s=self.first_tensor if self.first_tensor is not None else 0.0,
            tensors=len(self.extents), tensor_bytes=sum(e.nbytes for e in self.extents),
            header_bytes=self.header_bytes, shards=len(by_file), major_faults=majflt2 - majflt,
            minor_faults=minflt2 - minflt)

    # -- pieces shared by the readers --
    def _tensor_done(self) -> None:
        if self.first_tensor is None:
            self.first_tensor = self.ctx.comm.wtime() - self.rec.start

    def _check_header(self, shard: ShardFile, prefix: bytes, path: str) -> None:
        """The header the file holds must be the one the plan expects (offsets, shapes, dtype)."""
        try:
            _length, doc = parse_header(prefix)
        except ValueError as exc:
            raise BenchIOError(f"{path} is not a safetensors file: {exc}", "write the model again with datagen",
                               path=path) from None
        if doc != json.loads(shard.header):
            raise BenchIOError(f"the safetensors header of {path} differs from the configured model",
                               "write the model again with datagen, or fix the modelload section", path=path)

    def _read_exact(self, handle: Any, view: memoryview, offset: int, path: str, want: int | None = None) -> int:
        t0 = time.perf_counter_ns()
        got = self.ctx.backend.read_at(handle, view, offset)
        t1 = time.perf_counter_ns()
        need = len(view) if want is None else want
        if got < need:
            raise BenchIOError(f"read {path} at offset {offset}: {got} of {need} bytes (the file is shorter)",
                               "write the model again with datagen", path=path)
        self.log.record(got, t0, t1)
        self.ctx.check_stop()
        return got

    def _read_header(self, handle: Any, shard: ShardFile, path: str) -> bytes:
        """The first bytes (length and header) as the reader reads them, aligned where it must."""
        alignment = max(self.ctx.backend.alignment, 1) if self.reader == "direct" else 1
        need = shard.data_start
        length = first_read(need, alignment, len(self.buf))
        got = self._read_exact(handle, self.view[:length], 0, path, min(length, shard.file_bytes))
        data = bytes(self.view[:min(got, need)])
        done = got
        while len(data) < need:  # a header larger than one read
            n = min(len(self.buf), round_up(need - done, alignment))
            got = self._read_exact(handle, self.view[:n], done, path, min(n, shard.file_bytes - done))
            data += bytes(self.view[:min(got, need - done)])
            done += got
        self.header_bytes += done
        return data

    # -- the readers --
    def _read(self, handle: Any, extents: list[Extent], path: str) -> None:
        size = len(self.buf)
        for e in extents:
            if e.count == 1:
                for at in range(e.offset, e.offset + e.length, size):
                    self._read_exact(handle, self.view[:min(size, e.offset + e.length - at)], at, path)
            else:
                fill = 0
                for start in e.starts().tolist():
                    if fill + e.length > size:
                        fill = 0
                    self._read_exact(handle, self.view[fill:fill + e.length], start, path)
                    fill += e.length
            self._tensor_done()

    def _object(self, handle: Any, shard: ShardFile, path: str) -> None:
        """The whole shard in one GET (no range, no HEAD) into the shard-sized buffer, then its header checked."""
        view = self.view[:shard.file_bytes]
        t0 = time.perf_counter_ns()
        got = self.ctx.backend.read_object(handle, view)
        self.log.record(got, t0, time.perf_counter_ns())
        self.ctx.check_stop()
        self.header_bytes += shard.data_start
        self._check_header(shard, bytes(view[:shard.data_start]), path)
        self._tensor_done()  # every tensor of the shard arrived with it

    def _ranges(self, handle: Any, shard: ShardFile, extents: list[Extent], path: str) -> None:
        size = len(self.buf)
        for offset, length in covering_runs(extents):
            for at in range(offset, offset + length, size):
                self._read_exact(handle, self.view[:min(size, offset + length - at)], at, path)
            self._tensor_done()


    def _direct(self, handle: Any, shard: ShardFile, extents: list[Extent], path: str) -> None:
        alignment = max(self.ctx.backend.alignment, 1)
        size = round_down(len(self.buf), alignment)
        first_end = extents[0].end
        for offset, length in aligned_runs(extents, alignment):
            for at in range(offset, offset + length, size):
                n = min(size, offset + length - at)
                self._read_exact(handle, self.view[:n], at, path, min(n, shard.file_bytes - at))
                if self.first_tensor is None and at + n >= first_end:
                    self._tensor_done()

    def _mmap(self, fd: int | None, shard: ShardFile, extents: list[Extent], path: str) -> None:
        assert fd is not None
        shared = self.ctx.config.modelload.mmap_mapping == "shared"
        try:
            mapped = mmap.mmap(fd, shard.file_bytes, flags=mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE,
                               prot=mmap.PROT_READ)
        except OSError as exc:
            raise BenchIOError(f"mmap of {path} failed: {os.strerror(exc.errno or 0)} [{errno_name(exc)}]",
                               "on a FUSE mount with direct_io use modelload.mmap_mapping=private or "
                               "modelload.reader=read", path=path, errno=exc.errno) from None
        try:
            data = np.frombuffer(mapped, dtype=np.uint8)
            t0 = time.perf_counter_ns()
            prefix = bytes(data[:shard.data_start])  # safetensors reads the header through the mapping too
            self.log.record(len(prefix), t0, time.perf_counter_ns())
            self.header_bytes += len(prefix)
            self._check_header(shard, prefix, path)
            size = len(self.buf)
            staging = self.staging
            for e in extents:
                if e.count == 1:
                    for at in range(e.offset, e.offset + e.length, size):
                        n = min(size, e.offset + e.length - at)
                        t0 = time.perf_counter_ns()
                        staging[:n] = data[at:at + n]  # the page faults happen here
                        self.log.record(n, t0, time.perf_counter_ns())
                        self.ctx.check_stop()
                else:
                    rows = np.lib.stride_tricks.as_strided(data[e.offset:], shape=(e.count, e.length),
                                                           strides=(e.stride, 1))
                    per = max(1, size // e.length)
                    for first in range(0, e.count, per):
                        last = min(e.count, first + per)
                        n = (last - first) * e.length
                        t0 = time.perf_counter_ns()
                        staging[:n].reshape(last - first, e.length)[:] = rows[first:last]
                        self.log.record(n, t0, time.perf_counter_ns())
                        self.ctx.check_stop()
                    del rows
                self._tensor_done()
            del data
        finally:
            try:
                mapped.close()
            except BufferError:
                pass  # a view is still alive after an error: the mapping goes with the process


# -- the workload -----------------------------------------------------------------------------------
def _fd(backend: Any, handle: Any) -> int:
    """The file descriptor the mmap reader maps (the config check keeps mmap to files)."""
    fd = backend.fd_for(handle)
    assert fd is not None, "the mmap reader needs a backend whose handles are files"
    return int(fd)


def _whole_objects(config: Config) -> bool:
    """The s3 reader fetching every shard whole, in one GET into a buffer of its size."""
    return modelload_reader(config) == "s3" and config.modelload.s3_fetch == "objects"


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


class ModelloadWorkload(Workload):
    """iterations x (cold load, warm load) of the model's shards by every rank."""

    name = "modelload"
    describe_totals = True

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        if _whole_objects(config):
            largest = max(s.file_bytes for s in model_of(config).shards)
            return (buffer_footprint(max(config.modelload.buffer_size, largest), config.huge_pages),
                    f"the largest shard, {format_size(largest)}, in one GET (modelload.s3_fetch=objects)",
                    "use modelload.s3_fetch=ranges, or write the model with a smaller modelload.shard_size, "
                    "or run fewer ranks per node")
        return (buffer_footprint(config.modelload.buffer_size, config.huge_pages), "modelload.buffer_size",
                "lower modelload.buffer_size, or run fewer ranks per node")

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        return 1  # one read at a time per rank, as a loader's thread issues them

    def check(self, config: Config, size: int, alignment: int) -> None:
        check_dataset_name(config.dataset.name)
        model_of(config)
        parallelism(config, size)
        if modelload_reader(config) == "direct" and config.modelload.buffer_size % max(alignment, 1):
            raise ConfigError(f"modelload.buffer_size={config.modelload.buffer_size} is not a multiple of the "
                              f"direct-I/O alignment {alignment}", f"use a multiple of {alignment}")

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        model, checks = checked_index(config, backend)
        info.checks.extend(checks)
        if modelload_reader(config) == "s3":
            return  # objects: no page cache and no mount to probe
        first = backend.path_of(f"{config.dataset.name}/{model.shards[0].name}")
        fs = environment.filesystem_of(first)
        if fs["fstype"].startswith("fuse"):
            probe = probe_mount(first)
            probe.update(mount=fs["mount"], fstype=fs["fstype"])
            info.backend["fuse_probe"] = probe
            info.checks.append(
                f"FUSE mount {fs['mount']} ({fs['fstype']}): shared mmap {probe['shared_mmap']}, private mmap "
                f"{probe['private_mmap']}, O_DIRECT {probe['o_direct']}, reads "
                + ("leave pages in the page cache" if probe["page_cache"] else "bypass the page cache (direct_io)"))
            refuse_reader(config, probe, fs["mount"])
        backing = config.modelload.backing_root
        if backing is not None:
            missing = [s.name for s in model.shards if not os.path.isfile(os.path.join(backing, config.dataset.name,
                                                                                        s.name))]
            if missing:
                raise PreflightError(f"modelload.backing_root {backing} does not hold the model's shard "
                                     f"{config.dataset.name}/{missing[0]}",
                                     "give the directory the FUSE mount at storage.root serves")
            info.checks.append(f"the backing directory {backing} holds the shards: evicted too before a cold load")

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        model = model_of(config)
        par = parallelism(config, size)
        if rank < 0:
            return {"totals": {"model": config.modelload.model, "scale": config.modelload.scale,
                               "shards": len(model.shards), "tensors": model.num_tensors,
                               "file_bytes": model.file_bytes, "tensor_bytes": model.tensor_bytes,
                               "layout": par.layout, "tp": par.tp, "pp": par.pp, "reader": modelload_reader(config),
                               "loads": ["cold", "warm"] * config.modelload.iterations}}
        extents = rank_extents(model, par, rank)
        from mpibench.presets import coordinates

        tp, pp, dp = coordinates(rank, par.tp, par.pp)
        return {"rank": rank, "tp": tp, "pp": pp, "dp": dp, "shards": shards_of(extents),
                "tensors": len(extents), "tensor_bytes": sum(e.nbytes for e in extents),
                "extents": extents_summary(extents, PLAN_EXTENTS),
                "extents_not_listed": max(0, len(extents) - PLAN_EXTENTS)}

    def run(self, ctx: RunContext) -> None:
        config = ctx.config
        ml = config.modelload
        comm = ctx.comm
        model = model_of(config)
        par = parallelism(config, comm.size)
        extents = rank_extents(model, par, comm.rank)
        reader = modelload_reader(config)
        mine = shards_of(extents)
        files = reader != "s3"  # residency is a file's
        if ml.backing_root is not None and ctx.layout.local_rank == 0:
            # The FUSE mount has no block device of its own: count the backing directory's.
            ctx.block_stat = environment.block_stat_path(ml.backing_root)

        def staging() -> mmap.mmap:  # a whole shard for s3_fetch=objects (sized in buffer_bytes' preflight)
            whole = [s.file_bytes for s in model.shards] if _whole_objects(config) else []
            buf = aligned_buffer(max([ml.buffer_size, *whole]))
            np.frombuffer(buf, dtype=np.uint8)[::PAGE] = 0  # faulted in now, not in the load
            return buf

        buf = ctx.setup(staging)
        meta = {"reader": reader, "layout": par.layout, "tp": par.tp, "pp": par.pp, "model": ml.model,
                "scale": ml.scale, "scaled": ml.scale < 1.0, "buffer_size": ml.buffer_size}
        if reader == "mmap":
            meta["mmap_mapping"] = ml.mmap_mapping
        expected = sum(e.nbytes for e in extents) * comm.size
        for i in range(ml.iterations):
            for load in ("cold", "warm"):
                evicted = ctx.setup(lambda ld=load: self._evict(ctx, model) if ld == "cold" else True)
                before = self._resident(ctx, mine) if files else None
                phase = ctx.phase(f"{load}_load", i,
                                  lambda rec: _Load(ctx, rec, model, extents, reader, buf).run(),
                                  expected_bytes=expected, load=load, cache=self._cache(ctx, load, reader), **meta)
                after = self._resident(ctx, mine) if files else None
                everywhere = comm.allreduce_min(1 if evicted else 0)
                residency = comm.gather((before, after))
                if phase is not None and residency is not None:
                    self._annotate(ctx, phase, residency, bool(everywhere), model)

    def _evict(self, ctx: RunContext, model: ModelFiles) -> bool:
        """The node's first rank drops every shard (and its backing file) from the page cache."""
        if ctx.layout.local_rank != 0:
            return True
        name = ctx.config.dataset.name
        done = True
        for shard in model.shards:
            done &= ctx.backend.evict(f"{name}/{shard.name}")
            if ctx.config.modelload.backing_root is not None:
                done &= evict_file(os.path.join(ctx.config.modelload.backing_root, name, shard.name))
        return done

    def _resident(self, ctx: RunContext, shards: list[str]) -> dict[str, int] | None:
        total = resident = 0
        for name in shards:
            found = resident_bytes(ctx.backend.path_of(f"{ctx.config.dataset.name}/{name}"))
            if found is None:
                return None
            resident += found[0]
            total += found[1]
        return {"resident_bytes": resident, "file_bytes": total}

    def _cache(self, ctx: RunContext, load: str, reader: str) -> dict[str, Any]:
        if reader == "s3":
            return {"state": "object", "load": load, "method": "s3: no client cache, every request goes to the server"}
        if reader == "direct":
            return {"state": "direct", "load": load, "method": f"O_DIRECT ({ctx.backend.name})"}
        if load == "cold":
            method = ("posix_fadvise(POSIX_FADV_DONTNEED) of every shard by the first rank of each node"
                      + (", also in modelload.backing_root" if ctx.config.modelload.backing_root else ""))
            return {"state": "cold", "load": load, "method": method}
        return {"state": "warm", "load": load, "method": "no eviction after the cold load"}

    def _annotate(self, ctx: RunContext, phase: dict[str, Any], residency: list[Any], evicted: bool,
                  model: ModelFiles) -> None:
        """Rank 0: residency per rank, the cold check or the warm verdict, per node where the
        bytes came from."""
        for record, (before, after) in zip(phase["ranks"], residency, strict=True):
            record["resident_before_bytes"] = before["resident_bytes"] if before else None
            record["resident_after_bytes"] = after["resident_bytes"] if after else None
            record["shard_file_bytes"] = before["file_bytes"] if before else None
        cache = dict(phase["cache"])
        fractions = [b["resident_bytes"] / b["file_bytes"] for b, _a in residency if b and b["file_bytes"]]
        touched = phase["bytes"]
        proc_read = phase["storage_bytes"]["read_bytes"]
        cache["resident_before_max_fraction"] = max(fractions) if fractions else None
        cache["process_read_ratio"] = proc_read / touched if touched else 0.0
        if phase["load"] == "cold":
            cache["evicted"] = evicted
            if fractions and max(fractions) > COLD_RESIDENT_LIMIT and cache["state"] == "cold":
                cache["confirmed"] = False
                cache["warning"] = (f"not cold: up to {max(fractions) * 100:.1f}% of a rank's shards were resident "
                                    "after the eviction (pages mapped or locked by another process?)")
            else:
                cache["confirmed"] = evicted and fractions is not None
        phase["nodes"] = self._nodes(ctx, phase, model)
        if phase["load"] == "warm":
            cache["served_from_memory"] = self._from_memory(ctx, phase, touched, proc_read)
        phase["cache"] = cache

    def _from_memory(self, ctx: RunContext, phase: dict[str, Any], touched: int, proc_read: int) -> bool | None:
        """Whether a warm load came from the page cache: the ranks' own /proc/self/io read_bytes
        (exact, per process); through FUSE, whose daemon does the reads, the device counter
        (every process of the node), or None where there is none."""
        if not touched or phase["reader"] in ("direct", "s3"):
            return False if touched else None
        if ctx.info.backend.get("fuse_probe") is None:
            return proc_read < WARM_FROM_MEMORY * touched
        device = [n["device_read_bytes"] for n in phase["nodes"]]
        if any(d is None for d in device):
            return None
        return sum(device) < WARM_FROM_MEMORY * touched

    def _nodes(self, ctx: RunContext, phase: dict[str, Any], model: ModelFiles) -> list[dict[str, Any]]:
        """Per node: bytes its ranks touched, the bytes a cold load must read from storage (the
        union of their pages; each rank's own for O_DIRECT), what the processes and the
        device read, and so how much came from the page cache."""
        par = parallelism(ctx.config, ctx.comm.size)
        direct = phase["reader"] == "direct"
        alignment = max(ctx.backend.alignment, 1)
        buffer = round_down(ctx.config.modelload.buffer_size, alignment)
        rows = []
        by_host: dict[str, list[dict[str, Any]]] = {}
        for record in phase["ranks"]:
            by_host.setdefault(str(record.get("host", "")), []).append(record)
        shard_by_name = {s.name: s for s in model.shards}
        for host, records in by_host.items():
            per_file: dict[str, list[Extent]] = {}
            unique = 0
            for record in records:
                mine = rank_extents(model, par, int(record["rank"]))
                if direct:  # no sharing: each rank reads its first block(s) and its own aligned runs
                    for name in shards_of(mine):
                        shard = shard_by_name[name]
                        end = shard.file_bytes
                        unique += min(end, first_read(shard.data_start, alignment, buffer))
                        unique += sum(min(o + n, end) - o
                                      for o, n in aligned_runs([e for e in mine if e.file == name], alignment))
                for e in mine:
                    per_file.setdefault(e.file, []).append(e)
            if not direct:  # the node's ranks share the page cache: the union of their pages
                for name, extents in per_file.items():
                    end = shard_by_name[name].file_bytes
                    runs = aligned_runs(extents, PAGE)
                    unique += sum(min(o + n, end) - o for o, n in runs)
                    unique += runs[0][0]  # the header's pages before the first tensor's
            device = next((r.get("block_device") for r in records if r.get("block_device")), None)
            touched = sum(int(r["bytes"]) for r in records)
            proc = sum(int(r.get("proc_io", {}).get("read_bytes", 0)) for r in records)
            device_read = int(device["read_bytes"]) if device else None
            from_storage = device_read if device_read is not None else proc
            rows.append({"host": host, "ranks": len(records), "bytes_touched": touched,
                         "storage_bytes_needed": unique, "process_read_bytes": proc,
                         "device_read_bytes": device_read,
                         "device_over_needed": device_read / unique if device_read is not None and unique else None,
                         "from_storage_bytes": min(from_storage, touched),
                         "from_page_cache_bytes": max(0, touched - from_storage)})
        return rows

    def cleanup(self, ctx: RunContext) -> None:
        pass  # the model is the product of datagen: never removed by a load

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        config = ctx.config
        model = model_of(config)
        par = parallelism(config, ctx.comm.size)
        loads = []
        for phase in ctx.phases:
            if phase["name"] not in ("cold_load", "warm_load"):
                continue
            ranks = phase["ranks"]
            first = [float(r.get("first_tensor_s", 0.0)) for r in ranks]
            all_s = [float(r["end"]) - float(r["start"]) for r in ranks]
            cache = phase.get("cache") or {}
            loads.append({
                "load": phase["load"], "iteration": phase["iteration"], "reader": phase["reader"],
                "bytes_touched": phase["bytes"], "tensor_bytes": sum(int(r.get("tensor_bytes", 0)) for r in ranks),
                "seconds": phase["seconds"], "bandwidth_GBps": phase["bandwidth_GBps"],
                "bandwidth_GiBps": phase["bandwidth_GiBps"],
                "first_tensor_s": _stats(first), "all_tensors_s": _stats(all_s),
                "major_faults": sum(int(r.get("major_faults", 0)) for r in ranks),
                "minor_faults": sum(int(r.get("minor_faults", 0)) for r in ranks),
                "process_read_bytes": phase["storage_bytes"]["read_bytes"],
                "device_read_bytes": sum(n["device_read_bytes"] for n in phase.get("nodes", [])
                                         if n["device_read_bytes"] is not None)
                if any(n["device_read_bytes"] is not None for n in phase.get("nodes", [])) else None,
                "storage_bytes_needed": sum(n["storage_bytes_needed"] for n in phase.get("nodes", [])),
                "cache_state": cache.get("state"), "confirmed": cache.get("confirmed"),
                "served_from_memory": cache.get("served_from_memory"),
                "complete": phase.get("complete", True),
            })
        out: dict[str, Any] = {
            "model": config.modelload.model, "scale": config.modelload.scale, "scaled": config.modelload.scale < 1.0,
            "folder": ctx.backend.path_of(config.dataset.name), "shards": len(model.shards),
            "tensors": model.num_tensors, "file_bytes": model.file_bytes, "tensor_bytes": model.tensor_bytes,
            "reader": modelload_reader(config), "layout": par.layout, "tp": par.tp, "pp": par.pp,
            "world_size": ctx.comm.size, "loads": loads,
            "fuse_probe": ctx.info.backend.get("fuse_probe"),
        }
        for label in ("cold", "warm"):
            rows = [r for r in loads if r["load"] == label]
            out[label] = {"count": len(rows),
                          "bandwidth_GBps": _stats([r["bandwidth_GBps"] for r in rows]),
                          "first_tensor_s": _stats([r["first_tensor_s"].get("max", 0.0) for r in rows]),
                          "all_tensors_s": _stats([r["seconds"] for r in rows])}
        cold, warm = out["cold"]["bandwidth_GBps"], out["warm"]["bandwidth_GBps"]
        out["warm_over_cold"] = (warm["median"] / cold["median"]) if cold and warm and cold["median"] > 0 else None
        return {"modelload": out}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        m = document.get("modelload") or {}
        if not m.get("loads"):
            return []
        scaled = f" SCALED by {m['scale']:g}" if m["scaled"] else ""
        lines = ["", f"modelload {m['model']}{scaled}: {m['shards']} shard(s), {m['tensors']} tensors, "
                     f"{format_size(m['file_bytes'])} ({m['file_bytes']} bytes); reader {m['reader']}, layout "
                     f"{m['layout']} (TP{m['tp']} x PP{m['pp']}) on {m['world_size']} rank(s)",
                 f"{'load':<6}{'it':>3}{'reader':>8}{'GB/s':>9}{'GiB/s':>9}{'first s':>9}{'all s':>8}"
                 f"{'touched':>12}{'dev read':>12}{'maj flt':>9}{'min flt':>9}  cache"]
        for r in m["loads"]:
            dev = format_size(r["device_read_bytes"]) if r["device_read_bytes"] is not None else "n/a"
            verdict = r["cache_state"] or ""
            if r["load"] == "cold" and r["confirmed"] is False:
                verdict += " (NOT confirmed cold)"
            if r["load"] == "warm" and r["served_from_memory"] is not None:
                verdict += " (served from memory)" if r["served_from_memory"] else " (read from storage)"
            lines.append(f"{r['load']:<6}{r['iteration']:>3}{r['reader']:>8}{r['bandwidth_GBps']:>9.3f}"
                         f"{r['bandwidth_GiBps']:>9.3f}{r['first_tensor_s'].get('max', 0.0):>9.3f}"
                         f"{r['all_tensors_s'].get('max', 0.0):>8.3f}{format_size(r['bytes_touched']):>12}{dev:>12}"
                         f"{r['major_faults']:>9}{r['minor_faults']:>9}  {verdict}")
        if m.get("warm_over_cold"):
            lines.append(f"warm / cold GB/s (medians): {m['warm_over_cold']:.2f}")
        probe = m.get("fuse_probe")
        if probe:
            lines.append(f"FUSE {probe['fstype']} at {probe['mount']}: shared mmap {probe['shared_mmap']}, private "
                         f"mmap {probe['private_mmap']}, O_DIRECT {probe['o_direct']}, page cache "
                         f"{'used' if probe['page_cache'] else 'bypassed (direct_io)'}")
        lines.append("GB/s over bytes touched (headers and alignment included) = bytes / (latest end - earliest "
                     "start); first/all s: the slowest rank's time to its first tensor / all its tensors")
        return lines



def figure_cold_warm(document: dict[str, Any], figure: Any) -> Any:
    """`mpibench report`'s modelload figure: GB/s and time to first tensor, cold beside warm,
    per iteration, drawn on a matplotlib Figure."""
    m = document.get("modelload") or {}
    loads = m.get("loads") or []
    speed, first = figure.subplots(1, 2)
    iterations = sorted({r["iteration"] for r in loads})
    for offset, label, color in ((-0.2, "cold", "#4477aa"), (0.2, "warm", "#ee6677")):
        rows = {r["iteration"]: r for r in loads if r["load"] == label}
        xs = [i + offset for i in iterations if i in rows]
        speed.bar(xs, [rows[i]["bandwidth_GBps"] for i in iterations if i in rows], 0.4, label=label, color=color)
        first.bar(xs, [rows[i]["first_tensor_s"].get("max", 0.0) * 1e3 for i in iterations if i in rows], 0.4,
                  label=label, color=color)
    for axes, ylabel in ((speed, "GB/s over bytes touched"), (first, "time to first tensor, ms (slowest rank)")):
        axes.set_xticks(iterations, [str(i) for i in iterations])
        axes.set_xlabel("iteration")
        axes.set_ylabel(ylabel)
        axes.legend()
    figure.suptitle(f"modelload {m['model']}: reader {m['reader']}, {m['layout']}, {m['world_size']} rank(s)")
    return figure


def _reader_key(document: dict[str, Any]) -> str:
    """A results document's reader as the cross-file view names it (storage, s3 fetch or mmap mapping)."""
    m = document["modelload"]
    config = document.get("config") or {}
    ml = config.get("modelload") or {}
    how = {"mmap": ml.get("mmap_mapping"), "s3": f"{ml.get('s3_fetch')} GETs"}.get(m["reader"])
    storage = (config.get("storage") or {}).get("type", "?")
    return f"{m['reader']}{f' ({how})' if how else ''} on {storage}"


def readers_text(documents: list[tuple[str, dict[str, Any]]]) -> str:
    """`mpibench report A.json B.json ...` of modelload results: one cold-vs-warm table per reader
    across the files (medians over each file's loads; every figure recomputes from its rows)."""
    m0 = documents[0][1]["modelload"]
    scaled = f" SCALED by {m0['scale']:g}" if m0["scaled"] else ""
    lines = [f"modelload {m0['model']}{scaled}: {m0['shards']} shard(s), {format_size(m0['file_bytes'])} "
             f"({m0['file_bytes']} bytes); cold vs warm per reader, {len(documents)} results file(s)"]
    by_reader: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path, doc in documents:
        by_reader.setdefault(_reader_key(doc), []).append((path, doc))
    header = (f"{'load':<6}{'loads':>6}{'GB/s':>9}{'GiB/s':>9}{'first s':>9}{'all s':>8}{'dev read':>12}"
              f"{'dev/needed':>11}  cache  (run)")
    for reader, group in by_reader.items():
        lines += ["", f"reader {reader}", header, "-" * len(header)]
        for path, doc in group:
            m = doc["modelload"]
            for label in ("cold", "warm"):
                rows = [r for r in m["loads"] if r["load"] == label]
                if not rows:
                    continue
                dev = [r["device_read_bytes"] for r in rows if r["device_read_bytes"] is not None]
                ratio = [r["device_read_bytes"] / r["storage_bytes_needed"] for r in rows
                         if r["device_read_bytes"] is not None and r["storage_bytes_needed"]]
                if label == "cold":
                    verdict = f"cold, confirmed {sum(1 for r in rows if r['confirmed'])}/{len(rows)}"
                else:
                    verdict = f"served from memory {sum(1 for r in rows if r['served_from_memory'])}/{len(rows)}"
                lines.append(
                    f"{label:<6}{len(rows):>6}{statistics.median(r['bandwidth_GBps'] for r in rows):>9.3f}"
                    f"{statistics.median(r['bandwidth_GiBps'] for r in rows):>9.3f}"
                    f"{statistics.median(r['first_tensor_s'].get('max', 0.0) for r in rows):>9.3f}"
                    f"{statistics.median(r['all_tensors_s'].get('max', 0.0) for r in rows):>8.3f}"
                    f"{format_size(int(statistics.median(dev))) if dev else 'n/a':>12}"
                    f"{f'{statistics.median(ratio):.3f}' if ratio else 'n/a':>11}  {verdict}  "
                    f"({doc.get('run_id')}, {m['layout']}, {m['world_size']} rank(s), {os.path.basename(path)})")
            if m.get("warm_over_cold"):
                lines.append(f"warm / cold GB/s (medians): {m['warm_over_cold']:.2f}")
    lines += ["", "medians over each file's loads; GB/s over bytes touched; first/all s: the slowest rank's; "
                  "dev read: the block device's bytes per load (n/a on S3); dev/needed: over the bytes the load "
                  "needed from storage (the node's pages once; each rank's own for direct)"]
    return "\n".join(lines)


def figure_readers(documents: list[tuple[str, dict[str, Any]]], figure: Any) -> Any:
    """The cross-file figure: median GB/s and time to first tensor per reader, cold beside warm."""
    speed, first = figure.subplots(1, 2)
    names = [f"{_reader_key(doc)}\n{doc.get('run_id')}" for _, doc in documents]
    xs = list(range(len(documents)))
    for offset, label, color in ((-0.2, "cold", "#4477aa"), (0.2, "warm", "#ee6677")):
        rows = [[r for r in doc["modelload"]["loads"] if r["load"] == label] for _, doc in documents]
        speed.bar([x + offset for x in xs], [statistics.median(r["bandwidth_GBps"] for r in g) if g else 0.0
                                             for g in rows], 0.4, label=label, color=color)
        first.bar([x + offset for x in xs], [statistics.median(r["first_tensor_s"].get("max", 0.0) for r in g) * 1e3
                                             if g else 0.0 for g in rows], 0.4, label=label, color=color)
    for axes, ylabel in ((speed, "GB/s over bytes touched (median)"),
                         (first, "time to first tensor, ms (slowest rank, median)")):
        axes.set_xticks(xs, names, fontsize=7)
        axes.set_ylabel(ylabel)
        axes.legend()
    m = documents[0][1]["modelload"]
    figure.suptitle(f"modelload {m['model']}: cold vs warm per reader")
    return figure


def check_comparable(documents: list[tuple[str, dict[str, Any]]]) -> None:
    """Several files are reported together only as modelload loads of one model, or a ResultsError."""
    first: tuple[Any, ...] | None = None
    for path, doc in documents:
        m = doc.get("modelload") or {}
        if not m.get("loads"):
            raise ResultsError(f"{path} is not a modelload result: several files are reported together only as "
                               "modelload cold vs warm per reader", "give one file, or compare two with mpibench "
                               "compare")
        model = (m["model"], m["scale"], m["file_bytes"])
        if first is not None and model != first:
            raise ResultsError(f"{path} loads {m['model']} at scale {m['scale']:g} ({m['file_bytes']} bytes), the "
                               f"first file {first[0]} at scale {first[1]:g} ({first[2]} bytes)",
                               "report together only the loads of one model")
        first = first or model


WORKLOAD = ModelloadWorkload()
