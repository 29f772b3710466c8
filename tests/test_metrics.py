"""Latency histograms and the bandwidth reduction."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpibench.buffers import (
    HUGE_PAGE,
    BufferPool,
    DataPattern,
    aligned_buffer,
    buffer_footprint,
    huge_page_bytes,
    transparent_huge_pages,
    use_huge_pages,
)
from mpibench.metrics import LatencyHistogram, OpLog, PhaseRecorder
from mpibench.results import phase_bandwidth, rank_spread, summarize_phase, summarize_repetitions


@settings(max_examples=40)
@given(st.lists(st.integers(1, 10**11), min_size=1, max_size=400),
       st.lists(st.integers(1, 10**11), min_size=1, max_size=400))
def test_histogram_merge_equals_union(a, b):
    ha, hb, hu = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    ha.add_many(np.array(a))
    hb.add_many(np.array(b))
    hu.add_many(np.array(a + b))
    ha.merge(hb)
    assert np.array_equal(ha.counts, hu.counts)
    assert (ha.count, ha.min_ns, ha.max_ns, ha.total_ns) == (hu.count, hu.min_ns, hu.max_ns, hu.total_ns)


@settings(max_examples=40)
@given(st.lists(st.integers(1_000, 10**10), min_size=1, max_size=500), st.sampled_from([50, 90, 99, 99.9]))
def test_percentiles_within_relative_error(values, pct):
    hist = LatencyHistogram()
    hist.add_many(np.array(values))
    ordered = sorted(values)
    true = ordered[max(1, int(np.ceil(pct / 100 * len(values)))) - 1]
    assert abs(hist.percentile(pct) - true) <= true * (LatencyHistogram.RELATIVE_ERROR + 1e-9)


def test_sparse_round_trip():
    hist = LatencyHistogram()
    hist.add_many(np.array([1000, 2000, 3000, 10**9]))
    back = LatencyHistogram.from_sparse(hist.to_sparse())
    assert np.array_equal(back.counts, hist.counts)
    assert back.summary() == hist.summary()


def test_oplog_series_and_flush():
    log = OpLog(t0_ns=0, interval_ns=100)
    for i in range(1000):
        log.record(10, i * 10, i * 10 + 5)
    log.flush()
    assert log.bytes == 10_000 and log.ops == 1000
    assert log.series.sum() == 10_000
    assert len(log.series) == 100


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5000), st.integers(1, 2**20)), min_size=1, max_size=300),
       st.lists(st.integers(1, 300), min_size=1, max_size=6), st.sampled_from([0, 4096]))
def test_oplog_folds_marks_and_ends_as_logged(steps, cuts, op_bytes):
    """Entries as the loops write them (a mark -t, then ends; a mark again after other
    work), flushed at arbitrary points, fold into exactly the latencies, byte counts and
    per-interval bytes computed one operation at a time."""
    t0, interval = 1_000_000, 7_000
    log = OpLog(t0_ns=t0, interval_ns=interval, op_bytes=op_bytes)
    clock = previous = t0 + 3
    latencies, series, moved = [], {}, 0
    log.entries.append(-clock)
    cut_at = set(np.cumsum(cuts).tolist())
    for i, (mark, gap, nbytes) in enumerate(steps):
        clock += gap
        if mark:
            log.entries.append(-clock)
        else:
            log.entries.append(clock)
            nbytes = op_bytes or nbytes
            if not op_bytes:
                log.sizes.append(nbytes)
            latencies.append(clock - previous)
            slot = max((clock - t0) // interval, 0)
            series[slot] = series.get(slot, 0) + nbytes
            moved += nbytes
        previous = clock
        if i + 1 in cut_at:
            log.flush()
    log.flush()
    reference = LatencyHistogram()
    if latencies:
        reference.add_many(np.array(latencies))
    assert np.array_equal(log.hist.counts, reference.counts)
    assert (log.hist.min_ns, log.hist.max_ns, log.hist.total_ns) == \
        (reference.min_ns, reference.max_ns, reference.total_ns)
    assert (log.ops, log.bytes) == (len(latencies), moved)
    assert {i: int(v) for i, v in enumerate(log.series) if v} == series


def test_bandwidth_is_total_over_span():
    ranks = [
        {"rank": 0, "bytes": 100 * 2**20, "start": 10.0, "end": 11.0, "bandwidth_MiBps": 100.0},
        {"rank": 1, "bytes": 100 * 2**20, "start": 10.5, "end": 12.0, "bandwidth_MiBps": 66.7},
    ]
    total, start, end, bw = phase_bandwidth(ranks)
    assert (total, start, end) == (200 * 2**20, 10.0, 12.0)
    assert bw == pytest.approx(100.0)
    spread = rank_spread(ranks)
    assert spread["slowest_rank"] == 1 and spread["last_rank"] == 1
    assert spread["last_behind_first_s"] == pytest.approx(1.0)


def test_client_cpu_counts_every_thread_of_the_rank():
    """A phase's CPU is the process's, I/O threads included; waiting costs none."""
    rec = PhaseRecorder("read", 0, 1.0)
    rec.begin(100.0)

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    worker = threading.Thread(target=spin, args=(0.3,))
    worker.start()
    worker.join()
    time.sleep(0.3)
    rec.finish(100.0 + 0.6)
    record = rec.rank_record(0, "h")
    cpu = record["cpu_user_s"] + record["cpu_system_s"]
    assert 0.3 <= cpu < 0.45  # the other thread's 0.3 s, not the 0.3 s asleep
    quiet = {**record, "rank": 1, "cpu_user_s": 0.0, "cpu_system_s": 0.05, "start": 100.0, "end": 101.0}
    phase = summarize_phase("read", 0, [record, quiet], LatencyHistogram())
    assert phase["seconds"] == pytest.approx(1.0)
    assert phase["client_cpu"]["user_s"] == pytest.approx(record["cpu_user_s"])
    assert phase["client_cpu"]["cores"] == pytest.approx(cpu + 0.05)
    assert phase["client_cpu"]["busiest_rank"] == 0
    assert phase["client_cpu"]["busiest_rank_cores"] == pytest.approx(cpu / 0.6)
    old = [{k: v for k, v in r.items() if not k.startswith("cpu_")} for r in (record, quiet)]
    assert "client_cpu" not in summarize_phase("read", 0, old, LatencyHistogram())  # files from before


def test_repetition_summary():
    phases = [{"name": "write", "bandwidth_MiBps": v, "bytes": 1} for v in (100.0, 200.0, 300.0)]
    row = summarize_repetitions(phases)[0]
    assert (row["median_MiBps"], row["min_MiBps"], row["max_MiBps"], row["iterations"]) == (200, 100, 300, 3)


def test_data_pattern_is_unique_per_block_and_verifiable():
    pattern = DataPattern(seed=1, file_id=3, transfer_size=2**20)
    buf = pattern.new_buffer()
    pattern.stamp(buf, 0)
    first = bytes(buf[: 2**20])
    pattern.stamp(buf, 2**20)
    second = bytes(buf[: 2**20])
    assert first != second
    blocks = {first[i:i + 4096] for i in range(0, 2**20, 4096)} | {second[i:i + 4096] for i in range(0, 2**20, 4096)}
    assert len(blocks) == 512  # no two 4 KiB blocks alike: deduplication gains nothing
    scratch = aligned_buffer(2**20)
    assert pattern.first_mismatch(memoryview(buf), 2**20, 2**20, scratch) == -1
    buf[12345] ^= 0xFF
    assert pattern.first_mismatch(memoryview(buf), 2**20, 2**20, scratch) == 2**20 + 12345
    other = DataPattern(seed=1, file_id=4, transfer_size=2**20)
    assert bytes(other.base[:4096]) != bytes(pattern.base[:4096])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([8, 512, 4096, 8192, 3 * 4096, 32768, 65536, 4096 * 9, 2**20, 3 * 4096 + 8]),
       st.integers(0, 2**30))
def test_stamper_writes_what_verify_expects(transfer_size, block):
    """The hot-path stamps (the inline word of a one-stamp transfer; one pack, a packed
    loop or numpy by stamp count) write exactly the bytes that verification regenerates
    for that offset."""
    pattern = DataPattern(seed=5, file_id=9, transfer_size=transfer_size)
    offset = block * transfer_size
    scratch = aligned_buffer(transfer_size)
    buf = pattern.new_buffer()
    pattern.stamper(buf)(offset)
    assert bytes(buf[:transfer_size]) == bytes(pattern.expected(offset, scratch))
    assert pattern.first_mismatch(memoryview(buf), offset, transfer_size, scratch) == -1
    single = pattern.single_stamp(inline := pattern.new_buffer())
    assert (single is not None) == (8 <= transfer_size <= 4096 and transfer_size % 8 == 0)
    if single is not None:
        words, key = single
        words[0] = key | offset
        assert bytes(inline[:transfer_size]) == bytes(buf[:transfer_size])


def _mapping_of(buf) -> tuple[str, int]:
    """The /proc/self/smaps entry of the mapping holding `buf`: its permissions and AnonHugePages bytes."""
    import ctypes

    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        head = line.split()
        if "-" in head[0] and len(head) >= 2 and len(head[1]) == 4:
            start, end = (int(x, 16) for x in head[0].split("-"))
            if start <= address < end:
                for entry in lines[i + 1:]:
                    if entry.startswith("AnonHugePages:"):
                        return head[1], int(entry.split()[1]) * 1024
    raise AssertionError("buffer mapping not found")


def test_buffers_are_private_memory_in_4k_pages_by_default():
    """An application's own memory is private: the I/O buffers are too (not shared memory)."""
    buf = aligned_buffer(3 * 2**20)
    perms, huge = _mapping_of(buf)
    assert perms.startswith("rw") and perms[3] == "p"
    assert len(buf) == 3 * 2**20 and huge == 0
    assert buffer_footprint(3 * 2**20, False) == 3 * 2**20 and buffer_footprint(1, False) == 4096


@settings(max_examples=60)
@given(st.integers(1, 2**36), st.booleans())
def test_buffer_footprint_rounds_to_the_pages_used(size, huge):
    footprint = buffer_footprint(size, huge)
    page = HUGE_PAGE if huge and size > 4096 else 4096
    assert footprint % page == 0 and size <= footprint < size + page


def test_huge_page_buffers_are_granted_and_counted():
    """huge_pages: a buffer larger than a page is whole 2 MiB pages, 2 MiB-aligned, backed by
    transparent huge pages as the kernel confirms, and counted as granted; one page stays one page."""
    if transparent_huge_pages() not in ("always", "madvise"):
        pytest.skip("transparent huge pages are off on this host")
    import ctypes

    before = dict(huge_page_bytes)
    use_huge_pages(True)
    try:
        buf = aligned_buffer(2**20 + 1)
        small = aligned_buffer(4096)
    finally:
        use_huge_pages(False)
    assert len(buf) == HUGE_PAGE and len(small) == 4096
    assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % HUGE_PAGE == 0
    assert huge_page_bytes["requested"] - before["requested"] == HUGE_PAGE
    granted = huge_page_bytes["granted"] - before["granted"]
    perms, huge = _mapping_of(buf)
    assert perms[3] == "p" and huge == granted  # what was counted is what the kernel shows
    if granted == 0:
        pytest.skip("the kernel had no free 2 MiB page (fragmented memory): counted as not granted")
    buf[: 2**20] = b"\x5a" * 2**20  # usable as any buffer
    assert _mapping_of(buf)[1] == HUGE_PAGE and _mapping_of(small)[1] == 0


def test_buffer_pool_reuses_kept_buffers_and_refills_what_reads_overwrote():
    """Working buffers are allocated once (untimed) and reused: a write takes them holding its
    pattern's base, a read may overwrite them, the next write gets the base back; buffers of a
    size nobody kept are fresh, and always hold the base, however often memory is reused."""
    size = 64 * 2**10
    pool = BufferPool()
    first = DataPattern(seed=1, file_id=2, transfer_size=size)
    sibling, other = first.for_file(3), DataPattern(seed=1, file_id=9, transfer_size=size)
    kept = pool.take(True, size, 2, first, keep=True)
    assert all(bytes(b[:size]) == bytes(first.base[:size]) for b in kept)
    kept[0][:8] = b"stamped!"  # a transfer's stamp: the next one rewrites it, no copy needed
    again = pool.take(True, size, 2, sibling)
    assert again[0] is kept[0] and again[1] is kept[1] and bytes(again[0][:8]) == b"stamped!"
    read = pool.take(False, size, 3)
    assert read[0] is kept[0] and len(read) == 3
    for buf in read:
        buf[:size] = b"\xee" * size  # what a read leaves
    assert all(bytes(b[:size]) == bytes(first.base[:size]) for b in pool.take(True, size, 3, first))
    assert bytes(pool.take(True, size, 1, other)[0][:size]) == bytes(other.base[:size])
    tail = DataPattern(seed=1, file_id=2, transfer_size=8192)
    for _ in range(50):  # never kept: a fresh buffer each time, filled even where an id repeats
        fresh = pool.take(True, 8192, 1, tail)[0]
        assert bytes(fresh[:8192]) == bytes(tail.base[:8192])
        del fresh
