"""Per-rank measurement of a phase: bytes, operations, split timers, latency histogram,
time series and the kernel's own I/O counters.

Recording an operation appends one clock reading to an array (tens of nanoseconds); the
arrays are folded into the histogram and the time series with numpy every 64 Ki
operations, so memory stays bounded however long a phase runs.
"""

from __future__ import annotations

import math
import resource
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FLUSH_EVERY = 16384


class LatencyHistogram:
    """Log-bucketed latency histogram in nanoseconds with bounded relative error.

    Bucket i holds values in [G**i, G**(i+1)) with G = 1.02; a percentile is reported as
    the bucket's geometric midpoint, so it is within 1% of the true sample value.
    Histograms of different ranks merge exactly by adding their counts.
    """

    GROWTH = 1.02
    MAX_NS = 10**13  # about 2.8 hours; longer operations land in the last bucket
    NBUCKETS = int(math.ceil(math.log(MAX_NS) / math.log(GROWTH))) + 1
    RELATIVE_ERROR = math.sqrt(GROWTH) - 1

    def __init__(self) -> None:
        self.counts = np.zeros(self.NBUCKETS, dtype=np.int64)
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def add_many(self, values_ns: np.ndarray) -> None:
        """Add latencies (nanoseconds) to the histogram."""
        if values_ns.size == 0:
            return
        values = np.maximum(values_ns.astype(np.int64, copy=False), 1)
        index = np.floor(np.log(values) / math.log(self.GROWTH)).astype(np.int64)
        np.clip(index, 0, self.NBUCKETS - 1, out=index)
        self.counts += np.bincount(index, minlength=self.NBUCKETS)
        low, high = int(values.min()), int(values.max())
        self.min_ns = low if self.count == 0 else min(self.min_ns, low)
        self.max_ns = max(self.max_ns, high)
        self.count += int(values.size)
        self.total_ns += int(values.sum())

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's samples to this one (exact)."""
        if other.count == 0:
            return
        self.min_ns = other.min_ns if self.count == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.counts += other.counts
        self.count += other.count
        self.total_ns += other.total_ns

    def percentile(self, pct: float) -> float:
        """The pct-th percentile in nanoseconds (0 when empty)."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(pct / 100.0 * self.count))
        bucket = int(np.searchsorted(np.cumsum(self.counts), rank))
        value = self.GROWTH ** (bucket + 0.5)
        return float(min(max(value, self.min_ns), self.max_ns))

    def summary(self) -> dict[str, float]:
        """Mean, percentiles and extremes in seconds."""
        if self.count == 0:
            return {"count": 0}
        return {
            "count": self.count,
            "mean_s": self.total_ns / self.count / 1e9,
            "min_s": self.min_ns / 1e9,
            "p50_s": self.percentile(50) / 1e9,
            "p90_s": self.percentile(90) / 1e9,
            "p99_s": self.percentile(99) / 1e9,
            "p999_s": self.percentile(99.9) / 1e9,
            "max_s": self.max_ns / 1e9,
        }

    def to_sparse(self) -> dict[str, Any]:
        """The non-empty buckets, for the results file."""
        nz = np.flatnonzero(self.counts)
        return {
            "growth": self.GROWTH,
            "buckets": nz.tolist(),
            "counts": self.counts[nz].tolist(),
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "total_ns": self.total_ns,
        }

    @classmethod
    def from_sparse(cls, data: dict[str, Any]) -> LatencyHistogram:
        """Rebuild a histogram written by :meth:`to_sparse`."""
        hist = cls()
        hist.counts[np.asarray(data["buckets"], dtype=np.int64)] = np.asarray(data["counts"], dtype=np.int64)
        hist.count = int(hist.counts.sum())
        hist.min_ns = int(data["min_ns"])
        hist.max_ns = int(data["max_ns"])
        hist.total_ns = int(data["total_ns"])
        return hist


def read_proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters (empty where the kernel does not expose them)."""
    try:
        with open("/proc/self/io", encoding="ascii") as handle:
            pairs = (line.split(":") for line in handle)
            return {k.strip(): int(v) for k, v in pairs}
    except OSError:
        return {}


def process_cpu() -> tuple[float, float]:
    """CPU seconds this process has used so far, (user, system), summed over its threads
    (the I/O threads and the storage library's own included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)  # precise to the microsecond, unlike os.times()
    return usage.ru_utime, usage.ru_stime


class OpLog:
    """Operations of one thread: appended cheaply, folded into aggregates in bulk.

    `entries` is a flat array of perf_counter_ns readings. A negative value ``-t`` marks
    that a run of back-to-back operations starts at ``t``; a positive value ``t`` is the
    end of one operation, which started at the previous entry (a mark or the end of the
    operation before it). So a loop issuing operations back to back reads the clock once
    per operation: an operation's latency is the time from the previous completion (or
    mark) to its own completion, which includes the loop's own work between the two
    (tens to hundreds of nanoseconds), never less than the operation took. A loop marks
    again after any other work (a flush, a stop check), so that work is never counted.

    Operations of a log made with `op_bytes` all moved that many bytes (the caller checks
    every return value); otherwise `record` keeps each operation's byte count. `flush`
    folds the entries into the histogram and the time series and empties the arrays in
    place, so a hot loop may hold on to `entries` and append to it directly.
    """

    __slots__ = ("entries", "sizes", "op_bytes", "hist", "series", "t0_ns", "interval_ns",
                 "_bytes", "_ops", "_last")

    def __init__(self, t0_ns: int, interval_ns: int, op_bytes: int = 0) -> None:
        self.entries = array("q")
        self.sizes = array("q")  # bytes per operation, when op_bytes is 0
        self.op_bytes = op_bytes
        self.hist = LatencyHistogram()
        self.series = np.zeros(0, dtype=np.int64)
        self.t0_ns = t0_ns
        self.interval_ns = interval_ns
        self._bytes = 0
        self._ops = 0
        self._last = t0_ns  # the time of the last entry folded (a run may go on after a flush)

    def record(self, nbytes: int, start_ns: int, end_ns: int) -> None:
        """Log one operation that moved `nbytes` between two perf_counter_ns readings."""
        self.entries.extend((-start_ns, end_ns))
        if not self.op_bytes:
            self.sizes.append(nbytes)
        if len(self.entries) >= 2 * FLUSH_EVERY:
            self.flush()

    def _pending(self) -> tuple[np.ndarray, np.ndarray]:
        # A copy, not a view: another thread (the progress bar) may read while the owner
        # appends, and an array exporting its buffer could not grow.
        raw = np.frombuffer(self.entries.tobytes(), dtype=np.int64)
        sizes = np.frombuffer(self.sizes.tobytes(), dtype=np.int64)
        return raw, sizes

    @property
    def bytes(self) -> int:
        """Bytes moved so far (flushed and pending)."""
        raw, sizes = self._pending()
        pending = int(sizes.sum()) if not self.op_bytes else int(np.count_nonzero(raw > 0)) * self.op_bytes
        return self._bytes + pending

    @property
    def ops(self) -> int:
        """Operations completed so far."""
        raw, _ = self._pending()
        return self._ops + int(np.count_nonzero(raw > 0))

    def flush(self) -> None:
        """Fold the logged operations into the histogram and the time series."""
        if not self.entries:
            return
        raw, sizes = self._pending()
        del self.entries[: len(raw)]
        del self.sizes[: len(sizes)]
        at = np.flatnonzero(raw > 0)  # the ends; each started at the entry before it
        last, self._last = self._last, int(abs(raw[-1]))
        if not len(at):
            return
        ends = raw[at]
        starts = np.abs(raw[at - 1])  # at[0] - 1 may be -1: the entry before this batch
        if at[0] == 0:
            starts[0] = last
        self.hist.add_many(ends - starts)
        slots = np.maximum((ends - self.t0_ns) // self.interval_ns, 0)
        if self.op_bytes:
            binned = np.bincount(slots) * self.op_bytes
            moved = len(ends) * self.op_bytes
        else:
            sizes = sizes[: len(ends)]
            binned = np.bincount(slots, weights=sizes).astype(np.int64)
            moved = int(sizes.sum())
        if binned.size > self.series.size:
            binned[: self.series.size] += self.series
            self.series = binned
        else:
            self.series[: binned.size] += binned
        self._bytes += moved
        self._ops += len(ends)


@dataclass
class PhaseRecorder:
    """Everything one rank measures during one phase."""

    name: str
    iteration: int
    interval_s: float
    start: float = 0.0  # comm.wtime() after the barrier
    end: float = 0.0
    open_s: float = 0.0
    transfer_s: float = 0.0
    sync_s: float = 0.0
    close_s: float = 0.0
    files: int = 0
    stonewalled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    io_before: dict[str, int] = field(default_factory=dict)
    io_after: dict[str, int] = field(default_factory=dict)
    cpu_before: tuple[float, float] = (0.0, 0.0)  # this process's (user, system) CPU seconds, all threads
    cpu_after: tuple[float, float] = (0.0, 0.0)
    t0_ns: int = 0
    logs: list[OpLog] = field(default_factory=list)

    def begin(self, wtime: float) -> None:
        """Mark the phase start on this rank (call right after the barrier)."""
        self.io_before = read_proc_io()
        self.cpu_before = process_cpu()
        self.t0_ns = time.perf_counter_ns()
        self.start = wtime

    def finish(self, wtime: float) -> None:
        """Mark the phase end on this rank and fold all operation logs."""
        self.end = wtime
        self.cpu_after = process_cpu()
        self.io_after = read_proc_io()
        for log in self.logs:
            log.flush()

    def new_log(self, op_bytes: int = 0) -> OpLog:
        """An operation log for one I/O thread of this phase (see OpLog for `op_bytes`)."""
        log = OpLog(self.t0_ns or time.perf_counter_ns(), int(self.interval_s * 1e9), op_bytes)
        self.logs.append(log)
        return log

    @property
    def bytes(self) -> int:
        """Bytes moved, summed from the return values of the operations, less those of
        writes whose object was never completed (`uncommitted_bytes`)."""
        return sum(log.bytes for log in self.logs) - int(self.extra.get("uncommitted_bytes", 0))

    def uncommitted(self, nbytes: int) -> None:
        """Writes of `nbytes` were acknowledged but their object never completed (an S3
        upload whose completion failed): they do not count as moved."""
        if nbytes > 0:
            self.extra["uncommitted_bytes"] = int(self.extra.get("uncommitted_bytes", 0)) + nbytes

    @property
    def ops(self) -> int:
        """Operations completed."""
        return sum(log.ops for log in self.logs)

    def histogram(self) -> LatencyHistogram:
        """The merged latency histogram of all threads."""
        hist = LatencyHistogram()
        for log in self.logs:
            hist.merge(log.hist)
        return hist

    def series(self) -> list[int]:
        """Bytes completed per interval since the phase start."""
        total = np.zeros(0, dtype=np.int64)
        for log in self.logs:
            if log.series.size > total.size:
                log_series = log.series.copy()
                log_series[: total.size] += total
                total = log_series
            else:
                total[: log.series.size] += log.series
        return total.tolist()

    def io_delta(self) -> dict[str, int]:
        """Kernel counters moved during the phase (read_bytes/write_bytes reached storage)."""
        return {k: self.io_after[k] - self.io_before.get(k, 0) for k in self.io_after}

    def rank_record(self, rank: int, host: str) -> dict[str, Any]:
        """The per-rank values kept in the results file."""
        elapsed = self.end - self.start
        hist = self.histogram()
        return {
            "rank": rank,
            "host": host,
            "bytes": self.bytes,
            "ops": self.ops,
            "files": self.files,
            "start": self.start,
            "end": self.end,
            "open_s": self.open_s,
            "transfer_s": self.transfer_s,
            "sync_s": self.sync_s,
            "close_s": self.close_s,
            "bandwidth_MiBps": self.bytes / 2**20 / elapsed if elapsed > 0 else 0.0,
            "latency_mean_s": hist.total_ns / hist.count / 1e9 if hist.count else 0.0,
            "latency_max_s": hist.max_ns / 1e9,
            "stonewalled": self.stonewalled,
            "proc_io": self.io_delta(),
            "cpu_user_s": max(0.0, self.cpu_after[0] - self.cpu_before[0]),
            "cpu_system_s": max(0.0, self.cpu_after[1] - self.cpu_before[1]),
            "series_bytes": self.series(),
            **self.extra,
        }
