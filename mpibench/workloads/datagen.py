"""datagen: write the synthetic training dataset, every rank a disjoint share of the files.

The dataset lives in ``<storage.root>/<dataset.name>/`` (not in the run directory: it is
the product, and `train` reads it later). Rank 0 checks in preflight that the folder
holds no dataset (a manifest, or the first or last file name) so datagen never
overwrites what it did not write, and creates the folder and its subfolders. Rank 0 then
writes the manifest ``.mpibench-dataset.json`` marked incomplete, the ranks write their
files (rank r: a contiguous run of indices, plan.part_range), and rank 0 finally marks
the manifest complete with the total bytes. The dataset is never removed by mpibench.

Per rank, producer threads (the node's cores shared by its ranks, 1 to 4) generate and
encode the next files while the main thread writes, so the phase measures the storage,
not numpy, wherever the storage is slower than generation (``generation_wait_s`` says how
long writing waited for data). Each file is written with one call, truncated to its true
size after a padded O_DIRECT write, fsynced and closed. On direct_fs a small file whose
size is not a multiple of the alignment (SMALL_FILE) is written through the page cache
and fsynced instead: O_DIRECT would pad it, extend the file past its end (which ext4
journals with the inode on its orphan list) and truncate it back, 11.0 device bytes per
payload byte for 4,500-byte files against 9.2 buffered; the result counts these files
(`buffered_files`) and the phase's `device_per_payload` shows what reached the device.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from mpibench.backends.base import AccessHints
from mpibench.buffers import buffer_footprint
from mpibench.config import Config
from mpibench.context import broadcast_outcome
from mpibench.engine import timed_close, timed_fsync
from mpibench.errors import BenchIOError, PreflightError
from mpibench.formats import (
    EncodedFile,
    check_dataset_name,
    encode,
    encode_manifest,
    file_key,
    key_exists,
    manifest_key,
    manifest_of,
    size_bound,
    subfolder_keys,
)
from mpibench.metrics import PhaseRecorder
from mpibench.plan import part_range
from mpibench.units import format_size
from mpibench.workloads.base import Workload
from mpibench.workloads.modelgen import MODEL_WRITER

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

MANIFEST_READ_BYTES = 1 << 20
SMALL_FILE = 64 * 1024  # direct_fs: unaligned files below this are written buffered and fsynced


def read_manifest(backend: Backend, ds: Any) -> dict[str, Any] | None:
    """The dataset's manifest, or None when there is none."""
    import json

    from mpibench.buffers import aligned_buffer

    key = manifest_key(ds)
    if not key_exists(backend, key):
        return None
    buf = aligned_buffer(MANIFEST_READ_BYTES)
    n = backend.get(key, memoryview(buf)[:MANIFEST_READ_BYTES])
    try:
        found = json.loads(bytes(buf[:n]).decode("utf-8"))
    except ValueError:
        raise PreflightError(f"dataset manifest {backend.path_of(key)} is not valid JSON",
                             "it was not written by mpibench datagen, or was damaged") from None
    if not isinstance(found, dict) or "mpibench_dataset" not in found:
        raise PreflightError(f"{backend.path_of(key)} is not an mpibench dataset manifest")
    return found


def write_manifest(backend: Backend, ds: Any, doc: dict[str, Any]) -> None:
    """Write (or replace) the manifest: padded, truncated and fsynced."""
    buf, size, padded = encode_manifest(doc, backend.alignment)
    key = manifest_key(ds)
    handle = backend.open(key, "w")
    try:
        backend.write_at(handle, memoryview(buf)[:padded], 0)
        backend.truncate(handle, size)  # also cuts a longer earlier version
        backend.fsync(handle)
    finally:
        backend.close(handle)


def producer_threads(ranks_on_node: int, files: int, node_cpus: int | None = None) -> int:
    """Threads generating files per rank: the node's usable CPUs shared by its ranks, 1 to 4
    (without `node_cpus`, the host's CPUs: an upper bound, as the memory check wants)."""
    cpus = node_cpus if node_cpus is not None else os.cpu_count() or 1
    return max(1, min(4, cpus // max(1, ranks_on_node), files))


def model_writer(config: Config) -> Any:
    """The writer of a safetensors model (dataset.format=safetensors), else None."""
    return MODEL_WRITER if config.dataset.format == "safetensors" else None


class DatagenWorkload(Workload):
    """Generate dataset.num_files files in parallel and record how fast they reach storage
    (with dataset.format=safetensors: the modelload section's model, see workloads.modelload)."""

    name = "datagen"
    describe_totals = True

    def planned_bytes(self, config: Config, size: int) -> int:
        if (writer := model_writer(config)) is not None:
            return writer.planned_bytes(config, size)
        ds = config.dataset
        return ds.num_files * size_bound(ds, 0, ds.record_size)

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        return 1  # one writer: each file is one write (one PUT), then the next

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        if (writer := model_writer(config)) is not None:
            return writer.buffer_bytes(config)
        # Per rank: each producer holds a file's samples and its encoding, the queue holds
        # one encoded file per producer, and the writer one more.
        ds = config.dataset
        producers = producer_threads(ranks_per_node, -(-ds.num_files // size))
        return ((3 * producers + 1) * buffer_footprint(size_bound(ds, 0, ds.record_size), config.huge_pages),
                f"dataset.record_size x samples_per_file x ({3 * producers + 1} files in memory)",
                "lower dataset.record_size or dataset.samples_per_file, or run fewer ranks per node")

    def access_hints(self, config: Config) -> AccessHints:
        """The dataset's files, each written front to back by one rank."""
        return AccessHints(unit="dataset file")

    def check(self, config: Config, size: int, alignment: int) -> None:
        if (writer := model_writer(config)) is not None:
            return writer.check(config, size, alignment)
        check_dataset_name(config.dataset.name)

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        if (writer := model_writer(config)) is not None:
            return writer.prepare(config, backend, info)
        ds = config.dataset
        where = backend.path_of(ds.name)
        for key in [ds.name, *subfolder_keys(ds)]:
            taken = backend.not_a_dir(key)
            if taken is not None:
                raise PreflightError(
                    f"dataset folder {backend.path_of(key)} cannot be created: {taken} exists and is not a directory",
                    "choose another dataset.name, or move that file away",
                )
        found = read_manifest(backend, ds)
        if found is not None:
            state = "a complete dataset" if found.get("complete") else "a partial dataset (an interrupted datagen)"
            raise PreflightError(
                f"dataset folder {where} already holds {state} "
                f"({found.get('num_files')} {found.get('format')} files, run {found.get('run_id')})",
                "choose another dataset.name, or remove the folder first: datagen never overwrites a dataset",
            )
        for index in sorted({0, ds.num_files - 1}):
            if key_exists(backend, file_key(ds, index)):
                raise PreflightError(
                    f"dataset folder {where} exists and holds {backend.path_of(file_key(ds, index))}",
                    "choose another dataset.name or remove it: datagen writes only files it creates",
                )
        backend.makedirs(ds.name)
        for sub in subfolder_keys(ds):
            backend.makedirs(sub)
        info.checks.append(f"dataset folder {where} holds no dataset; created it"
                           + (f" with {ds.num_subfolders} subfolders" if ds.num_subfolders else ""))

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        if (writer := model_writer(config)) is not None:
            return writer.describe_plan(config, size, rank)
        ds = config.dataset
        if rank < 0:
            return {"totals": {"files": ds.num_files, "samples": ds.num_files * ds.samples_per_file,
                               "bytes_estimate": self.planned_bytes(config, size),
                               "folder": ds.name, "format": ds.format}}
        start, count = part_range(ds.num_files, size, rank)
        plan: dict[str, Any] = {"rank": rank, "files": count}
        if count:
            plan.update(first=file_key(ds, start), last=file_key(ds, start + count - 1),
                        bytes_estimate=count * size_bound(ds, start, ds.record_size))
        return plan

    def run(self, ctx: RunContext) -> None:
        if (writer := model_writer(ctx.config)) is not None:
            return writer.run(ctx)
        config = ctx.config
        ds = config.dataset
        comm = ctx.comm
        backend = ctx.backend
        start, count = part_range(ds.num_files, comm.size, comm.rank)
        created = time.time()
        broadcast_outcome(comm, lambda: write_manifest(
            backend, ds, manifest_of(ds, complete=False, run_id=ctx.info.run_id, created=created)))
        phase = ctx.phase("datagen", 0, lambda rec: self._generate(ctx, rec, start, count),
                          expected_bytes=ctx.info.planned_bytes, format=ds.format,
                          dataset=backend.path_of(ds.name), fsync=True, cache=None)

        def finish() -> None:
            assert phase is not None
            write_manifest(backend, ds, manifest_of(ds, complete=True, total_bytes=phase["bytes"],
                                                    run_id=ctx.info.run_id, created=created))

        broadcast_outcome(comm, finish)

    def _generate(self, ctx: RunContext, rec: PhaseRecorder, start: int, count: int) -> None:
        ds = ctx.config.dataset
        alignment = ctx.backend.alignment
        producers = producer_threads(ctx.layout.local_size, count, ctx.layout.node_cpus())
        ready: queue.Queue[EncodedFile] = queue.Queue(maxsize=producers)
        stop = threading.Event()
        failed: list[BaseException] = []
        claim = threading.Lock()
        next_index = [start]
        busy = [0.0] * producers

        def produce(slot: int) -> None:
            try:
                while not stop.is_set():
                    with claim:
                        index = next_index[0]
                        if index >= start + count:
                            return
                        next_index[0] += 1
                    t = time.perf_counter()
                    item = encode(ds, index, alignment)
                    busy[slot] += time.perf_counter() - t
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.05)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:  # handed to the writing thread
                failed.append(exc)
                stop.set()

        threads = [threading.Thread(target=produce, args=(i,), name=f"datagen-encode-{i}", daemon=True)
                   for i in range(producers)]
        log = rec.new_log()
        waited = 0.0
        written = 0
        for thread in threads:
            thread.start()
        try:
            for _ in range(count):
                t = time.perf_counter()
                while True:
                    try:
                        item = ready.get(timeout=0.005)
                        break
                    except queue.Empty:
                        if failed:
                            raise failed[0] from None
                        ctx.check_stop()
                waited += time.perf_counter() - t
                self._write_file(ctx, rec, log, item)
                written += 1
                del item
                ctx.check_stop()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            rec.extra.update(samples=written * ds.samples_per_file, encode_s=sum(busy),
                             encode_threads=producers, generation_wait_s=waited)
        if failed:
            raise failed[0]

    def _write_file(self, ctx: RunContext, rec: PhaseRecorder, log: Any, item: EncodedFile) -> None:
        backend = ctx.backend
        key = file_key(ctx.config.dataset, item.index)
        buffered = (backend.direct and item.padded != item.size and item.size < SMALL_FILE
                    and hasattr(backend, "open_buffered"))
        t = time.perf_counter()
        handle = backend.open_buffered(key) if buffered else backend.open(key, "w")  # type: ignore[attr-defined]
        rec.open_s += time.perf_counter() - t
        rec.files += 1
        if buffered:
            rec.extra["buffered_files"] = rec.extra.get("buffered_files", 0) + 1
        try:
            t0 = time.perf_counter_ns()
            if buffered:  # its true size, no padding to cut (the fsync below makes it durable)
                written = backend.write_at(handle, item.view()[: item.size], 0) + item.padded - item.size
            else:
                written = backend.write_at(handle, item.view(), 0)
            if item.padded != item.size and not buffered:
                backend.truncate(handle, item.size)  # O_DIRECT wrote whole blocks: cut the padding
            t1 = time.perf_counter_ns()
            if written < item.padded:
                raise BenchIOError(f"write {backend.path_of(key)}: {written} of {item.padded} bytes written",
                                   "is the filesystem full?", path=backend.path_of(key))
            log.record(item.size, t0, t1)
            rec.transfer_s += (t1 - t0) / 1e9
            timed_fsync(backend, handle, rec)
        finally:
            timed_close(backend, handle, rec)

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        if (writer := model_writer(ctx.config)) is not None:
            return writer.summarize(ctx)
        ds = ctx.config.dataset
        phases = [p for p in ctx.phases if p["name"] == "datagen"]
        out: dict[str, Any] = {"dataset": ctx.backend.path_of(ds.name), "format": ds.format,
                               "num_files": ds.num_files, "samples_per_file": ds.samples_per_file,
                               "record_size": ds.record_size, "record_size_stdev": ds.record_size_stdev,
                               "manifest": ctx.backend.path_of(manifest_key(ds))}
        if phases:
            phase = phases[0]
            ranks = phase["ranks"]
            seconds = phase["seconds"]
            files = sum(r["files"] for r in ranks)
            out.update(
                files=files,
                samples=sum(r.get("samples", 0) for r in ranks),
                bytes=phase["bytes"],
                seconds=seconds,
                files_per_s=files / seconds if seconds > 0 else 0.0,
                bandwidth_MiBps=phase["bandwidth_MiBps"],
                bandwidth_GBps=phase["bandwidth_GBps"],
                encode_s_max=max(r.get("encode_s", 0.0) for r in ranks),
                generation_wait_s_max=max(r.get("generation_wait_s", 0.0) for r in ranks),
                spread=phase["spread"],
                buffered_files=sum(r.get("buffered_files", 0) for r in ranks),
                device_per_payload=phase.get("device_per_payload"),
            )
        return {"datagen": out}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        d = document.get("datagen") or {}
        if d.get("format") == "safetensors":
            return MODEL_WRITER.report_lines(document)
        if "files" not in d:
            return []
        lines = [
            "",
            f"datagen: {d['files']} {d['format']} files, {d['samples']} samples, "
            f"{format_size(d['bytes'])} ({d['bytes']} bytes) into {d['dataset']}",
            f"  {d['files_per_s']:.1f} files/s, {d['bandwidth_MiBps']:.1f} MiB/s ({d['bandwidth_GBps']:.3f} GB/s) "
            f"in {d['seconds']:.3f} s; per rank {d['spread']['min_MiBps']:.1f} / "
            f"{d['spread']['median_MiBps']:.1f} / {d['spread']['max_MiBps']:.1f} MiB/s (min / median / max)",
        ]
        if d.get("buffered_files"):
            lines.append(f"  {d['buffered_files']} files below {format_size(SMALL_FILE)} and not a multiple of the "
                         "direct-I/O alignment written through the page cache and fsynced (O_DIRECT would pad, "
                         "extend and truncate them)")
        if d.get("device_per_payload") is not None:
            lines.append(f"  the device wrote {d['device_per_payload']:.2f} bytes per byte of the dataset "
                         "(every process of the node counted)")
        if d["seconds"] > 0 and d["generation_wait_s_max"] > 0.2 * d["seconds"]:
            lines.append(f"  note: writing waited {d['generation_wait_s_max']:.3f} s for data generation "
                         "(the CPU, not the storage, limited this run)")
        return lines


WORKLOAD = DatagenWorkload()
