"""train: read the dataset as a training job's data loader does, with emulated compute.

Each epoch is one measured phase. Every file is read exactly once per epoch across all
ranks (plan.EpochShare: counts differ by at most one, seeded new order and assignment
each epoch unless shuffle=off). Per rank, `read_threads` threads read whole files (one
aligned buffer each, grown if a file is larger than estimated) and decode them (a
Parquet file row group by row group, each group's rows ready for batches once read); the
main thread takes batches of `batch_size` samples in order and "computes" each for
`computation_time` seconds. Readers may run at most `prefetch` batches ahead of the batch
being computed, so the I/O of the next batches overlaps the compute as a prefetching
loader's does (prefetch=0: no overlap).

With `train.runs` above 1 the epochs are repeated, each run with a new shuffle seed; the
first run is a warm-up and the summary gives the measured runs' mean, their agreement and
a PASS/FAIL against the minimum AU (mlperf.run_verdicts). train.accelerator gives the
compute time, batch and minimum AU of a published MLPerf Storage shape (mlperf.effective).
A Parquet file is read through pyarrow over the backend, only its columns marked read.

Uneven shares never deadlock: a rank's last partial batch is still processed, and ranks
meet only at epoch boundaries (the phase barrier), never per batch.

Figures as MLPerf Storage defines them: accelerator utilisation AU% = compute time /
wall time per rank, the compute time being the configured computation_time per step (not
what the emulating sleep took, which overshoots), the first step (the wait for and
compute of batch 0) excluded;
samples/s = all ranks' samples / (latest end - earliest start); MiB/s from the bytes
actually read. Each rank also reports the count, sum, sum of squares and a sum of 64-bit
keyed hashes of the file indices it read, which the summary checks against every file
read once per epoch (a wrong set of files passes with probability about 2^-64).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from mpibench.backends.base import READ_FOREIGN, AccessHints
from mpibench.buffers import aligned_buffer, buffer_footprint
from mpibench.choices import read_threads
from mpibench.config import Config
from mpibench.context import broadcast_outcome
from mpibench.environment import memory_total_bytes
from mpibench.errors import BenchIOError, PreflightError
from mpibench.formats import (
    MANIFEST_VERSION,
    decode,
    file_key,
    file_keys,
    manifest_key,
    manifest_mismatch,
    record_sizes,
    size_bound,
)
from mpibench.metrics import PhaseRecorder
from mpibench.mlperf import Effective, effective, min_dataset, run_verdicts
from mpibench.plan import EpochShare, round_up
from mpibench.units import format_size
from mpibench.workloads.bandwidth import annotate_cache
from mpibench.workloads.base import Workload
from mpibench.workloads.datagen import check_dataset_name, read_manifest

if TYPE_CHECKING:
    from mpibench.backends.base import Backend
    from mpibench.context import PreflightInfo, RunContext

COMPUTE_SLICE_S = 0.05  # emulated compute sleeps in slices, testing for a stop notice between
OVERSHOOT_NOTE_PCT = 5.0
PLAUSIBLE_GROWTH = 8  # a dataset file may exceed its read buffer's estimate at most this much  # the report names the compute's sleep overshoot above this


def checked_manifest(backend: Backend, ds: Any) -> dict[str, Any]:
    """The dataset's manifest, or a PreflightError saying why the dataset cannot be used."""
    where = backend.path_of(ds.name)
    found = read_manifest(backend, ds)
    if found is None:
        raise PreflightError(f"no dataset at {where} (no manifest {backend.path_of(manifest_key(ds))})",
                             "run datagen first: mpibench run CONFIG.yaml workload=datagen")
    if found.get("mpibench_dataset") != MANIFEST_VERSION:
        raise PreflightError(f"the dataset at {where} has manifest version {found.get('mpibench_dataset')}, "
                             f"this mpibench reads version {MANIFEST_VERSION} (sizes and content may differ)",
                             "generate the dataset again with this mpibench")
    if not found.get("complete"):
        raise PreflightError(f"the dataset at {where} is incomplete: its datagen (run {found.get('run_id')}) "
                             "did not finish", "remove the folder and run datagen again")
    differs = manifest_mismatch(found, ds)
    if differs:
        raise PreflightError(f"the dataset at {where} was generated with {', '.join(differs)}",
                             "run datagen with this config into another dataset.name, or fix the config")
    return found


def dataset_rule(ds: Any, hosts: int, memory: int, accelerators: int, batch_size: int) -> dict[str, Any]:
    """Whether the dataset reaches the MLPerf minimum (Rules.md 3.1.2) for the hosts the
    run is on, and by how much it falls short."""
    need = min_dataset(hosts, memory, accelerators, batch_size, ds.samples_per_file, ds.record_size)
    doc = need.as_dict()
    short = max(0, need.num_files - ds.num_files)
    doc.update(num_files=ds.num_files, meets=short == 0, short_files=short,
               short_bytes=short * ds.samples_per_file * ds.record_size)
    return doc


def index_sums(num_files: int) -> tuple[int, int]:
    """Sum and sum of squares of 0..num_files-1 (what one epoch's reads must add up to)."""
    n = num_files
    return n * (n - 1) // 2, (n - 1) * n * (2 * n - 1) // 6


MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (odd: i -> i * _GOLDEN is a bijection)
HASH_SLICE = 1 << 16  # indices hashed at once for the expected sum (512 KiB of uint64)


def _mix64(z: int) -> int:
    """splitmix64's finaliser on one 64-bit integer (a bijection of 0..2^64-1)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def index_hash_key(seed: int, epoch: int) -> int:
    """The key of an epoch's file-index hash: from the run's seed and the epoch."""
    return _mix64((_mix64(seed & MASK64) + epoch * _GOLDEN) & MASK64)


def index_hash(index: int, key: int) -> int:
    """A 64-bit hash of one file index (splitmix64 of key + (index + 1) * golden ratio)."""
    return _mix64((key + (index + 1) * _GOLDEN) & MASK64)


def index_hashes(indices: np.ndarray, key: int) -> np.ndarray:
    """index_hash of every index, vectorised (uint64 arithmetic wraps around mod 2^64)."""
    z = np.atleast_1d(np.asarray(indices)).astype(np.uint64) + np.uint64(1)
    z = z * np.uint64(_GOLDEN) + np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def file_checks(indices: Iterable[int], key: int) -> tuple[int, int, int, int]:
    """(count, sum, sum of squares, sum of index_hash mod 2^64) of a multiset of file indices."""
    values = [int(i) for i in indices]
    return (len(values), sum(values), sum(i * i for i in values),
            sum(index_hash(i, key) for i in values) & MASK64)


def expected_file_checks(num_files: int, key: int) -> tuple[int, int, int, int]:
    """file_checks of 0..num_files-1, what one epoch's reads over all ranks must give;
    hashed a slice at a time, so memory does not grow with the dataset."""
    total = 0
    for first in range(0, num_files, HASH_SLICE):
        part = index_hashes(np.arange(first, min(num_files, first + HASH_SLICE), dtype=np.uint64), key)
        total = (total + int(part.sum(dtype=np.uint64))) & MASK64
    return (num_files, *index_sums(num_files), total)


def read_buffers(ds: Any, threads: int, shares: Iterable[EpochShare], alignment: int) -> list[Any]:
    """One aligned buffer per reader thread, large enough for the rank's largest file.

    Allocated and touched before the first epoch, so page faults are not timed as I/O.
    Shares are looked at a slice at a time.
    """
    shares = list(shares)
    largest = max((int(record_sizes(ds, files).max()) for share in shares
                   for files in share.slices()), default=0)
    capacity = round_up(size_bound(ds, 0, largest) if largest else 1, max(alignment, 4096))
    # A reader thread beyond the rank's files per epoch never starts: no buffer for it.
    count = max(1, min(threads, max((len(share) for share in shares), default=1)))
    buffers = [aligned_buffer(capacity) for _ in range(count)]
    for buf in buffers:
        np.frombuffer(buf, dtype=np.uint8)[::4096] = 0  # fault every page in now
    return buffers


class _EpochLoader:
    """One rank's data loader for one epoch: reader threads ahead of an emulated compute."""

    def __init__(self, ctx: RunContext, rec: PhaseRecorder, iteration: int, files: EpochShare,
                 buffers: list[Any], eff: Effective, shuffle_seed: int) -> None:
        self.ctx = ctx
        self.rec = rec
        self.epoch = iteration  # the phase's iteration: runs x epochs, counted through
        self.eff = eff
        self.shuffle_seed = shuffle_seed
        self.files = files  # made a slice at a time: memory does not grow with the share
        self.buffers = buffers  # one per reader thread, reused over epochs
        # A file of this dataset fits the buffers (sized for the largest) give or take the
        # estimate's slack: one far larger is not the dataset's, and is not read to the end.
        self.max_file_bytes = PLAUSIBLE_GROWTH * max(len(b) for b in buffers)
        ds = ctx.config.dataset
        tc = ctx.config.train
        self.ds = ds
        self.tc = tc
        self.n = len(self.files)
        self.total_samples = self.n * ds.samples_per_file
        # One lock, two conditions: readers wait for the prefetch window (`cond`), the main
        # thread for samples (`ready`); each side wakes only the other's waiters, and only
        # when that changes what they wait for (a wake-up costs a core on a loaded node).
        lock = threading.Lock()
        self.cond = threading.Condition(lock)
        self.ready = threading.Condition(lock)
        self.next_file = 0
        self.done: set[int] = set()  # positions read beyond the prefix (at most the readers')
        self.prefix = 0  # files 0..prefix-1 (in epoch order) are read and decoded
        self.partial: dict[int, int] = {}  # samples ready of files being read (Parquet: row groups)
        self.current_batch = 0
        self.stopping = False
        self.errors: list[BaseException] = []
        self.hash_key = index_hash_key(ctx.config.seed, iteration)
        self.key_of = file_keys(ds)

    def first_batch(self, position: int) -> int:
        """The first batch that needs the file at `position` of the epoch order."""
        return position * self.ds.samples_per_file // self.eff.batch_size

    def read_loop(self, slot: int, stats: dict[str, float], log: Any) -> None:
        """A reader thread: take the next file in order when the prefetch window allows it."""
        try:
            while True:
                with self.cond:
                    while (not self.stopping and self.next_file < self.n
                           and self.first_batch(self.next_file) > self.current_batch + self.tc.prefetch):
                        self.cond.wait()
                    if self.stopping or self.next_file >= self.n:
                        return
                    position = self.next_file
                    self.next_file += 1
                self.load(position, slot, stats, log)
                with self.cond:
                    self.partial.pop(position, None)
                    self.done.add(position)
                    while self.prefix in self.done:
                        self.done.remove(self.prefix)
                        self.prefix += 1
                    self.ready.notify()
        except BaseException as exc:  # handed to the main thread
            with self.cond:
                self.errors.append(exc)
                self.stopping = True
                self.cond.notify_all()
                self.ready.notify()

    def load(self, position: int, slot: int, stats: dict[str, float], log: Any) -> None:
        """Read (and decode, as configured) the file at `position` of the epoch order into
        the buffer of `slot`; count its index in `stats`."""
        backend = self.ctx.backend
        verify = self.ctx.config.verify
        index = self.files[position]
        key = self.key_of(index)
        if self.ds.format == "parquet":  # the columns read, fetched row group by row group
            self._read_parquet(backend, key, index, position, stats, log, verify)
        else:
            buf, nbytes = self._read_file(backend, key, self.buffers[slot], stats, log)
            self.buffers[slot] = buf
            if self.tc.decode or verify:  # verifying means parsing
                t = time.perf_counter()
                order = None
                if self.tc.shuffle == "sample" and self.ds.samples_per_file > 1:
                    order = np.random.default_rng([self.shuffle_seed, self.epoch, index]).permutation(
                        self.ds.samples_per_file)
                decode(self.ds, index, buf, nbytes, backend.path_of(key), verify=verify, sample_order=order)
                stats["decode_s"] += time.perf_counter() - t
        stats["files"] += 1
        stats["index_sum"] += index
        stats["index_sumsq"] += index * index
        stats["index_hash"] = (int(stats["index_hash"]) + index_hash(index, self.hash_key)) & MASK64

    def _rows_ready(self, position: int, rows: int) -> None:
        """A row group of the file at `position` is read: its rows can go into batches."""
        with self.cond:
            self.partial[position] = self.partial.get(position, 0) + rows
            if position == self.prefix:  # only the file the batches have reached wakes them
                self.ready.notify()

    def samples_ready(self) -> int:
        """Samples ready in epoch order: the files read whole, then the next one's row groups."""
        return self.prefix * self.ds.samples_per_file + self.partial.get(self.prefix, 0)

    def _read_parquet(self, backend: Backend, key: str, index: int, position: int, stats: dict[str, float],
                      log: Any, verify: bool) -> None:
        """Read the Parquet file's columns marked read through pyarrow over the backend:
        only the footer and those column chunks are fetched (their bytes are the I/O); each
        row group feeds batches as soon as it is read."""
        from mpibench.mlperf_formats import BackendFile, read_parquet

        t = time.perf_counter()
        handle = backend.open(key, READ_FOREIGN)  # the dataset: not this run's files
        stats["open_s"] += time.perf_counter() - t
        try:
            source = BackendFile(backend, handle, backend.size_of(key))
            t0 = time.perf_counter_ns()
            read_parquet(self.ds, index, source, backend.path_of(key), verify=verify,
                         on_rows=lambda rows: self._rows_ready(position, rows))
            t1 = time.perf_counter_ns()
            log.record(source.fetched, t0, t1)
            stats["transfer_s"] += source.io_s
            stats["decode_s"] += max(0.0, (t1 - t0) / 1e9 - source.io_s)
        finally:
            t = time.perf_counter()
            backend.close(handle)
            stats["close_s"] += time.perf_counter() - t

    def _read_file(self, backend: Backend, key: str, buf: Any, stats: dict[str, float],
                   log: Any) -> tuple[Any, int]:
        """Read a whole file into `buf` (grown when the file is larger); return (buf, bytes)."""
        t = time.perf_counter()
        handle = backend.open(key, READ_FOREIGN)  # the dataset: not this run's files
        stats["open_s"] += time.perf_counter() - t
        try:
            t0 = time.perf_counter_ns()
            nbytes = backend.read_at(handle, memoryview(buf), 0)
            while nbytes == len(buf):  # the estimate was short: double and read on
                if 2 * len(buf) > self.max_file_bytes:
                    raise BenchIOError(f"read {backend.path_of(key)} refused: it holds more than "
                                       f"{format_size(self.max_file_bytes)}, far more than a file of this dataset",
                                       "it was not written by this dataset's datagen: remove the dataset and "
                                       "generate it again", path=backend.path_of(key))
                bigger = aligned_buffer(2 * len(buf))
                bigger[:nbytes] = buf[:nbytes]
                buf = bigger
                more = backend.read_at(handle, memoryview(buf)[nbytes:], nbytes)
                if more == 0:
                    break
                nbytes += more
            t1 = time.perf_counter_ns()
            log.record(nbytes, t0, t1)
            stats["transfer_s"] += (t1 - t0) / 1e9
        finally:
            t = time.perf_counter()
            backend.close(handle)
            stats["close_s"] += time.perf_counter() - t
        return buf, nbytes

    def run(self) -> None:
        """Read and compute every batch of this rank's share; fill rec.extra."""
        ctx, rec = self.ctx, self.rec
        bs = self.eff.batch_size
        compute = self.eff.computation_time
        batches = math.ceil(self.total_samples / bs) if self.total_samples else 0
        threads_n = max(1, min(read_threads(ctx.config), self.n))
        stats = [dict.fromkeys(("open_s", "transfer_s", "close_s", "decode_s", "files",
                                "index_sum", "index_sumsq", "index_hash"), 0) for _ in range(threads_n)]
        logs = [rec.new_log() for _ in range(threads_n)]
        # One reader and no compute to overlap: the rank's own thread reads each batch's
        # files when it needs them. A reader thread would only hand every file over (two
        # thread wake-ups per batch, each a wait for a CPU on a busy node).
        inline = threads_n == 1 and compute <= 0
        threads = [] if inline else [
            threading.Thread(target=self.read_loop, args=(i, stats[i], logs[i]), daemon=True,
                             name=f"train-reader-{i}") for i in range(threads_n)]
        for thread in threads:
            thread.start()
        measured_s = wait_after_first = 0.0  # the emulated compute's real (slept) time
        done_batches = 0
        first_step_end = start = time.perf_counter()
        try:
            for batch in range(batches):
                needed = min((batch + 1) * bs, self.total_samples)  # samples, in epoch order
                t = time.perf_counter()
                if inline:  # nothing to hand over, nobody to wake
                    files_needed = -(-needed // self.ds.samples_per_file)
                    for position in range(self.prefix, files_needed):
                        self.load(position, 0, stats[0], logs[0])
                        self.partial.pop(position, None)
                        ctx.check_stop()
                    self.prefix = self.next_file = max(self.prefix, files_needed)
                else:
                    self.wait_for(batch, needed)
                waited = time.perf_counter() - t
                measured_s += self._compute()
                done_batches += 1
                if batch == 0:
                    first_step_end = time.perf_counter()
                else:
                    wait_after_first += waited
        finally:
            with self.cond:
                self.stopping = True
                self.cond.notify_all()
            for thread in threads:
                thread.join()
            # Recorded even when the epoch stopped early: a partial result shows how far it got.
            end = time.perf_counter()
            if done_batches >= 2:
                # The accelerator's time is the configured compute time per step, not what
                # the sleep took: time lost to oversleeping counts against AU, not for it.
                wall = end - first_step_end
                au = 100.0 * compute * (done_batches - 1) / wall if wall > 0 else None
            else:  # at most one batch: nothing is left once the first step is excluded
                wall, au = end - start, None
            for s in stats:
                rec.open_s += s["open_s"]
                rec.transfer_s += s["transfer_s"]
                rec.close_s += s["close_s"]
            rec.files = int(sum(s["files"] for s in stats))
            rec.extra.update(
                epoch=self.epoch,
                samples=min(done_batches * bs, self.total_samples),
                batches=done_batches,
                compute_s=compute * done_batches,
                compute_measured_s=measured_s,
                au_pct=au,
                au_wall_s=wall,
                first_step_s=first_step_end - start if done_batches else 0.0,
                data_wait_s=wait_after_first,
                decode_s=sum(s["decode_s"] for s in stats),
                file_index_sum=int(sum(s["index_sum"] for s in stats)),
                file_index_sumsq=int(sum(s["index_sumsq"] for s in stats)),
                # 16 hex digits: a JSON number above 2^53 loses digits in many readers
                file_index_hash=f"{sum(s['index_hash'] for s in stats) & MASK64:016x}",
            )
        if self.errors:
            raise self.errors[0]

    def wait_for(self, batch: int, needed: int) -> None:
        """Let the readers run up to `prefetch` batches past `batch`; wait until the first
        `needed` samples in epoch order are ready (or a reader failed, or the run is stopped)."""
        with self.cond:
            self.current_batch = batch
            if self.next_file < self.n and self.first_batch(self.next_file) <= batch + self.tc.prefetch:
                self.cond.notify_all()  # the window takes in the next file
        while True:
            with self.cond:
                if self.errors:
                    raise self.errors[0]
                if self.samples_ready() >= needed:
                    return
                self.ready.wait(COMPUTE_SLICE_S)  # woken by the readers; the timeout tests for a stop
            self.ctx.check_stop()

    def _compute(self) -> float:
        """Emulate the accelerator's step: sleep computation_time, testing for a stop notice;
        return the time it really took (at least computation_time: sleeps overshoot)."""
        seconds = self.eff.computation_time
        if seconds <= 0:
            return 0.0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            time.sleep(min(left, COMPUTE_SLICE_S))
            self.ctx.check_stop()
        return time.perf_counter() - start


def every_file_once(num_files: int, key: int, ranks: list[dict[str, Any]]) -> bool:
    """Whether the ranks' reports of one epoch add up to reading each of the num_files
    files once: count, sum, sum of squares and the sum of 64-bit keyed hashes of the file
    indices. Not a proof: a different multiset of indices passes with probability about
    2^-64 (the hash sum of a wrong set is then a random 64-bit value)."""
    try:
        found = (sum(r["files"] for r in ranks), sum(r["file_index_sum"] for r in ranks),
                 sum(r["file_index_sumsq"] for r in ranks),
                 sum(int(r["file_index_hash"], 16) for r in ranks) & MASK64)
    except (KeyError, TypeError, ValueError):  # a rank that reported nothing (a failed epoch)
        return False
    return found == expected_file_checks(num_files, key)


class TrainWorkload(Workload):
    """Epochs of reading the dataset with emulated compute; AU%, samples/s, MiB/s."""

    name = "train"
    describe_totals = True
    buffers_sized_by_input = True  # the largest file of the dataset sizes the buffers

    def requests_in_flight(self, config: Config, io_depth: int) -> int:
        return read_threads(config)  # each reader thread reads one file at a time

    def buffer_bytes(self, config: Config, size: int, ranks_per_node: int, io_depth: int) -> tuple[int, str, str]:
        # Per rank: one buffer of the largest file per reader thread that has a file to
        # read (read_buffers) and, decoding, the arrays parsed from it.
        ds, tc = config.dataset, config.train
        threads = max(1, min(read_threads(config), -(-ds.num_files // size)))
        largest = ds.record_size
        for first in range(0, ds.num_files if ds.record_size_stdev else 0, 1 << 20):  # a slice at a time
            indices = np.arange(first, min(ds.num_files, first + (1 << 20)), dtype=np.int64)
            largest = max(largest, int(record_sizes(ds, indices).max()))
        per_file = round_up(size_bound(ds, 0, largest), 4096)
        decoded = per_file if (tc.decode or config.verify) and ds.format != "raw" else 0
        return (threads * (buffer_footprint(per_file, config.huge_pages) + decoded),
                f"train.read_threads {threads} x file size {format_size(per_file)}"
                + (" x 2 (decoded)" if decoded else ""),
                "lower train.read_threads or dataset.record_size, or run fewer ranks per node")

    def access_hints(self, config: Config) -> AccessHints:
        """The dataset's files, each written front to back by one rank."""
        return AccessHints(unit="dataset file")

    def check(self, config: Config, size: int, alignment: int) -> None:
        check_dataset_name(config.dataset.name)

    def prepare(self, config: Config, size: int, backend: Backend, info: PreflightInfo) -> None:
        found = checked_manifest(backend, config.dataset)
        info.checks.append(
            f"dataset {backend.path_of(config.dataset.name)}: {found['num_files']} {found['format']} files, "
            f"{found['total_samples']} samples, {format_size(found['total_bytes'])} "
            f"({found['total_bytes']} bytes), generated by run {found.get('run_id')}")

    def describe_plan(self, config: Config, size: int, rank: int, ranks_per_node: int,
                      num_nodes: int) -> dict[str, Any]:
        ds, tc = config.dataset, config.train
        if rank < 0:
            return {"totals": {"files_per_epoch": ds.num_files,
                               "samples_per_epoch": ds.num_files * ds.samples_per_file,
                               "epochs": tc.epochs}}
        files = EpochShare(ds.num_files, size, rank, 0, tc.shuffle != "off", tc.seed)
        samples = len(files) * ds.samples_per_file
        return {"rank": rank, "files_per_epoch": len(files), "samples_per_epoch": samples,
                "batches_per_epoch": math.ceil(samples / effective(tc).batch_size),
                "first_files_epoch0": [file_key(ds, int(i)) for i in files.slice(0, 3)]}

    def run(self, ctx: RunContext) -> None:
        config = ctx.config
        ds, tc = config.dataset, config.train
        comm = ctx.comm
        backend = ctx.backend
        manifest = broadcast_outcome(comm, lambda: checked_manifest(backend, ds))
        total_bytes = int(manifest["total_bytes"])
        # The memory of every node, read there (one rank a node speaks for it).
        node_memory = comm.allgather((ctx.layout.node_index, memory_total_bytes() or 0))
        memory = sum(dict(node_memory).values())
        eff = effective(tc)
        rule = dataset_rule(ds, ctx.layout.num_nodes, memory, comm.size, eff.batch_size)
        if comm.is_root:
            if not rule["meets"]:
                ctx.info.warnings.append(
                    f"the dataset ({ds.num_files} files) is below the MLPerf minimum for {ctx.layout.num_nodes} "
                    f"host(s) with {format_size(memory)} of memory and {comm.size} accelerator(s): "
                    f"{rule['min_num_files']} files ({format_size(rule['min_total_bytes'])}, set by the "
                    f"{'memory' if rule['bound_by'] == 'memory' else '500-step'} rule), {rule['short_files']} "
                    f"files ({format_size(rule['short_bytes'])}) short; set dataset.num_files={rule['min_num_files']}")
            if not backend.direct and memory and total_bytes < 2 * memory:
                ctx.info.warnings.append(
                    f"the dataset ({format_size(total_bytes)}) is smaller than twice the nodes' memory "
                    f"({format_size(memory)} in {ctx.layout.num_nodes} node(s)): buffered reads may be "
                    "served from the page cache" + (" (train.cache=warm)" if tc.cache == "warm" else
                                                    "; every epoch evicts its files first (train.cache=cold)"))

        def share(run: int, epoch: int) -> EpochShare:
            # A new shuffle seed per run: each run reads the files in another order.
            return EpochShare(ds.num_files, comm.size, comm.rank, epoch, tc.shuffle != "off", tc.seed + run)

        if ds.format in ("jpeg", "tfrecord", "parquet"):
            from mpibench.mlperf_formats import load_libraries

            load_libraries(ds.format)  # an import inside the first epoch would be timed
        buffers = ctx.setup(lambda: read_buffers(
            ds, read_threads(config), (share(r, e) for r in range(tc.runs) for e in range(tc.epochs)),
            backend.alignment))
        for run in range(tc.runs):
            for epoch in range(tc.epochs):
                iteration = run * tc.epochs + epoch
                files = share(run, epoch)
                cache = self._cache(ctx, files)
                phase = ctx.phase("train", iteration,
                                  lambda rec, i=iteration, f=files, r=run: _EpochLoader(
                                      ctx, rec, i, f, buffers, eff, tc.seed + r).run(),
                                  expected_bytes=total_bytes, cache=cache, epoch=epoch, run=run,
                                  shuffle_seed=tc.seed + run,
                                  dataset_bytes=total_bytes, batch_size=eff.batch_size,
                                  computation_time=eff.computation_time, read_threads=read_threads(config),
                                  prefetch=tc.prefetch, shuffle=tc.shuffle, decode=tc.decode,
                                  verified=config.verify, dataset_rule=rule)
                if phase is not None:
                    annotate_cache(phase)

    def _cache(self, ctx: RunContext, files: EpochShare) -> dict[str, Any]:
        """Evict this epoch's files (train.cache=cold on local_fs) and say how the cache stands."""
        backend = ctx.backend
        own = backend.cache_state()
        if own is not None:
            return own
        if ctx.config.train.cache == "warm":
            return {"state": "warm", "method": "none: reads may be served from the page cache"}
        evicted = True
        for part in files.slices():
            for index in part.tolist():  # every file, even after one could not be evicted
                evicted = backend.evict(file_key(ctx.config.dataset, index)) and evicted
        everywhere = bool(ctx.comm.allreduce_min(1 if evicted else 0))
        return {"state": "cold", "evicted": everywhere,
                "method": "posix_fadvise(POSIX_FADV_DONTNEED) by the reading rank before the epoch"}

    def summarize(self, ctx: RunContext) -> dict[str, Any]:
        ds, tc = ctx.config.dataset, ctx.config.train
        epochs = []
        for phase in (p for p in ctx.phases if p["name"] == "train"):
            ranks = phase["ranks"]
            seconds = phase["seconds"]
            samples = sum(r.get("samples", 0) for r in ranks)
            au = [r["au_pct"] for r in ranks if r.get("au_pct") is not None]
            files = sum(r["files"] for r in ranks)
            covered = every_file_once(ds.num_files, index_hash_key(ctx.config.seed, phase["iteration"]), ranks)
            epochs.append({
                "epoch": phase["iteration"],
                "run": phase.get("run", 0),
                "epoch_in_run": phase.get("epoch", phase["iteration"]),
                "samples": samples,
                "files": files,
                "bytes": phase["bytes"],
                "seconds": seconds,
                "samples_per_s": samples / seconds if seconds > 0 else 0.0,
                "bandwidth_MiBps": phase["bandwidth_MiBps"],
                "bandwidth_GBps": phase["bandwidth_GBps"],
                "au_pct_mean": statistics.fmean(au) if au else None,
                "au_pct_min": min(au) if au else None,
                "au_pct_max": max(au) if au else None,
                "every_file_once": covered,
                # a Parquet epoch reads the footers and the columns marked read: no match to expect
                "bytes_match_dataset": (None if ds.format == "parquet"
                                        else phase["bytes"] == phase.get("dataset_bytes")),
                "cache": (phase.get("cache") or {}).get("state"),
                "complete": phase.get("complete", True),
            })
        seconds = sum(e["seconds"] for e in epochs)
        samples = sum(e["samples"] for e in epochs)
        nbytes = sum(e["bytes"] for e in epochs)
        train_ranks = [r for p in ctx.phases if p["name"] == "train" for r in p["ranks"]]
        au_all = [r["au_pct"] for r in train_ranks if r.get("au_pct") is not None]
        batches = sum(r.get("batches", 0) for r in train_ranks)
        nominal = sum(r.get("compute_s", 0.0) for r in train_ranks)
        measured = sum(r.get("compute_measured_s", 0.0) for r in train_ranks)
        eff = effective(tc)
        runs = []
        for run in sorted({e["run"] for e in epochs}):
            mine = [e for e in epochs if e["run"] == run]
            secs = sum(e["seconds"] for e in mine)
            au_run = [r["au_pct"] for p in ctx.phases if p["name"] == "train" and p.get("run", 0) == run
                      for r in p["ranks"] if r.get("au_pct") is not None]
            runs.append({"run": run, "epochs": len(mine), "samples": sum(e["samples"] for e in mine),
                         "bytes": sum(e["bytes"] for e in mine), "seconds": secs,
                         "samples_per_s": sum(e["samples"] for e in mine) / secs if secs > 0 else 0.0,
                         "bandwidth_MiBps": sum(e["bytes"] for e in mine) / 2**20 / secs if secs > 0 else 0.0,
                         "au_pct_mean": statistics.fmean(au_run) if au_run else None,
                         "au_pct_min": min(au_run) if au_run else None,
                         "complete": all(e["complete"] for e in mine)})
        rule = next((p.get("dataset_rule") for p in ctx.phases if p["name"] == "train"), None)
        return {"train": {
            "dataset": ctx.backend.path_of(ds.name),
            "model": tc.model,
            "accelerator": tc.accelerator,
            "timing": eff.as_dict(),
            "runs": runs,
            "protocol": run_verdicts(runs, eff.min_au_pct),
            "dataset_rule": rule,
            "format": ds.format,
            "num_files": ds.num_files,
            "samples_per_file": ds.samples_per_file,
            "batch_size": eff.batch_size,
            "computation_time": eff.computation_time,
            # what the emulated compute's sleeps really took, per batch and above the configured time
            "compute_measured_s_per_batch": measured / batches if batches else None,
            "compute_overshoot_pct": 100.0 * (measured - nominal) / nominal if nominal > 0 else None,
            "read_threads": read_threads(ctx.config),
            "prefetch": tc.prefetch,
            "shuffle": tc.shuffle,
            "ranks": ctx.comm.size,
            "epochs": epochs,
            "samples": samples,
            "bytes": nbytes,
            "seconds": seconds,
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "bandwidth_MiBps": nbytes / 2**20 / seconds if seconds > 0 else 0.0,
            "au_pct_mean": statistics.fmean(au_all) if au_all else None,
            "au_pct_min": min(au_all) if au_all else None,
            "every_file_once": all(e["every_file_once"] for e in epochs),
            "bytes_match_dataset": (None if ds.format == "parquet"
                                    else all(e["bytes_match_dataset"] for e in epochs)),
            "warnings": list(ctx.info.warnings),
        }}

    def report_lines(self, document: dict[str, Any]) -> list[str]:
        t = document.get("train") or {}
        if not t.get("epochs"):
            return []

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f}%"

        lines = ["", f"train: {t['num_files']} {t['format']} files x {t['samples_per_file']} samples, "
                     f"{t['ranks']} rank(s), batch {t['batch_size']}, compute {t['computation_time']} s/batch, "
                     f"{t['read_threads']} reader thread(s), prefetch {t['prefetch']}, shuffle {t['shuffle']}"]
        timing = t.get("timing") or {}
        if timing:
            au = timing.get("min_au_pct")
            sources = {timing["computation_time_source"], timing["batch_size_source"]} | (
                {timing["min_au_source"]} if au is not None else set())
            if len(sources) == 1:  # all from one place: say it once
                lines.append(f"compute, batch{' and minimum AU ' + format(au, 'g') + '%' if au is not None else ''} "
                             f"from {sources.pop()}")
            else:
                lines.append(f"compute from {timing['computation_time_source']}; batch from "
                             f"{timing['batch_size_source']}"
                             + (f"; minimum AU {au:g}% from {timing['min_au_source']}" if au is not None else ""))
        lines.append(f"{'epoch':>7}{'samples':>10}{'seconds':>10}{'samples/s':>11}{'MiB/s':>10}"
                     f"{'AU mean':>9}{'AU min':>9}  {'cache':<7}{'each file once':<16}bytes = dataset")
        for e in t["epochs"]:
            lines.append(f"{e['epoch']:>7}{e['samples']:>10}{e['seconds']:>10.3f}{e['samples_per_s']:>11.1f}"
                         f"{e['bandwidth_MiBps']:>10.1f}{pct(e['au_pct_mean']):>9}{pct(e['au_pct_min']):>9}  "
                         f"{e['cache'] or '-':<7}{'yes' if e['every_file_once'] else 'NO':<16}"
                         f"{'n/a' if e['bytes_match_dataset'] is None else 'yes' if e['bytes_match_dataset'] else 'NO'}")
        lines.append(f"overall: {t['samples_per_s']:.1f} samples/s, {t['bandwidth_MiBps']:.1f} MiB/s, "
                     f"AU mean {pct(t['au_pct_mean'])}, min {pct(t['au_pct_min'])} "
                     "(AU: configured compute time / wall time per rank, first step excluded)")
        lines.extend(protocol_lines(t))
        over = t.get("compute_overshoot_pct")
        if over is not None and over > OVERSHOOT_NOTE_PCT:
            lines.append(f"note: the emulated compute slept {t['compute_measured_s_per_batch']:.5f} s/batch, "
                         f"{over:.1f}% over the configured {t['computation_time']} s; AU counts the "
                         "configured time, so the oversleep lowers AU")
        lines.extend(f"warning: {w}" for w in t.get("warnings", []))
        return lines


def protocol_lines(t: dict[str, Any]) -> list[str]:
    """The runs, their AU verdicts and agreement, and the dataset-size rule, as report lines."""
    lines: list[str] = []
    proto = t.get("protocol") or {}
    runs = t.get("runs") or []
    if len(runs) > 1 or proto.get("verdict"):
        lines.append(f"{'run':>7}{'samples/s':>11}{'MiB/s':>10}{'AU mean':>9}{'AU min':>9}  verdict")
        for r in runs:
            au = "n/a" if r["au_pct_mean"] is None else f"{r['au_pct_mean']:.1f}%"
            low = "n/a" if r["au_pct_min"] is None else f"{r['au_pct_min']:.1f}%"
            lines.append(f"{r['run']:>7}{r['samples_per_s']:>11.1f}{r['bandwidth_MiBps']:>10.1f}{au:>9}{low:>9}  "
                         + ("warm-up" if r.get("warmup") else (r.get("verdict") or "-")))
        agree = proto.get("runs_agree")
        au = proto.get("au_pct_mean")
        lines.append(f"measured runs: {proto['measured_runs']}, mean {proto['samples_per_s_mean']:.1f} samples/s, "
                     f"AU mean {'n/a' if au is None else f'{au:.1f}%'}"
                     + ("" if agree is None else
                        f", samples/s within {proto['samples_per_s_spread_pct']:.1f}% of the mean "
                        f"({'agree' if agree else 'DO NOT agree'} within {proto['agreement_pct']:g}%)"))
        if proto.get("verdict"):
            lines.append(f"{proto['verdict']}: AU {'reaches' if proto['verdict'] == 'PASS' else 'misses'} the "
                         f"minimum {proto['min_au_pct']:g}% in {'every' if proto['verdict'] == 'PASS' else 'some'} "
                         "measured run")
    rule = t.get("dataset_rule")
    if rule and rule["meets"]:  # a dataset short of it gets a warning saying by how much
        lines.append(f"dataset size: meets the MLPerf minimum for {rule['hosts']} host(s), "
                     f"{rule['accelerators']} accelerator(s): {rule['num_files']} >= {rule['min_num_files']} files")
    return lines


WORKLOAD = TrainWorkload()
