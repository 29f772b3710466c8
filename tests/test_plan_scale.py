"""Memory of one rank's plan and bookkeeping as ranks, files and operations grow.

These check memory (tracemalloc) and sizes, never time: timings are measured by
benchmarks/scale.py and reported in docs/performance.md.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from mpibench.config import build_config
from mpibench.formats import record_sizes
from mpibench.metrics import FLUSH_EVERY, OpLog
from mpibench.plan import epoch_files, part_range, transfer_offsets
from mpibench.workloads.train import WORKLOAD as TRAIN


def traced_peak(func, *args):
    """(result, peak bytes allocated while func ran)."""
    tracemalloc.start()
    try:
        result = func(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def one_rank_plan(rank: int, ranks: int, files: int, epochs: int) -> int:
    config = build_config({"workload": "train", "storage": {"type": "direct_fs", "root": "/x"},
                           "dataset": {"num_files": files, "record_size": 150_000, "record_size_stdev": 30_000},
                           "train": {"epochs": epochs, "shuffle": "file"}})
    shares = [epoch_files(files, ranks, rank, e, True, config.train.seed) for e in range(epochs)]
    for share in shares:
        record_sizes(config.dataset, share)
    TRAIN.describe_plan(config, ranks, rank, 8, ranks // 8)
    return len(shares[0])


def test_one_rank_plan_at_100k_ranks_and_10m_files_is_small():
    count, peak = traced_peak(one_rank_plan, 54_321, 100_000, 10_000_000, 3)
    assert count == 100
    assert peak < 50 * 10**6
    assert peak < 1 * 10**6  # nothing of the size of the dataset (80 MB for 10M int64) is made


def test_a_share_costs_memory_of_the_share_not_of_the_dataset():
    # 100 ranks: the share of 1M files is 10k indices (80 kB); the dataset's would be 8 MB.
    share, peak = traced_peak(epoch_files, 1_000_000, 100, 37, 2, True, 5)
    assert len(share) == part_range(1_000_000, 100, 37)[1]
    assert peak < 2 * 10**6
    small_share, small_peak = traced_peak(epoch_files, 10_000, 100, 37, 2, True, 5)
    assert len(small_share) == 100
    assert peak < 100 * small_peak + 10**6


def test_operation_log_stays_bounded_however_many_operations():
    log = OpLog(t0_ns=0, interval_ns=10**9, op_bytes=4096)
    largest = 0
    t = 1
    for i in range(10 * FLUSH_EVERY):
        if i % 1000 == 0:
            log.entries.append(-t)  # a run of back-to-back operations starts
        t += 7
        log.entries.append(t)
        if len(log.entries) >= FLUSH_EVERY:
            log.flush()
        largest = max(largest, len(log.entries))
    log.flush()
    assert largest <= FLUSH_EVERY
    assert log.ops == 10 * FLUSH_EVERY and log.bytes == 10 * FLUSH_EVERY * 4096
    assert log.hist.count == 10 * FLUSH_EVERY and log.hist.min_ns == log.hist.max_ns == 7


def test_bandwidth_offsets_are_one_array_per_rank():
    offsets, peak = traced_peak(transfer_offsets, 64 * 2**30, 2**20, "random", 3)
    assert len(offsets) == 65536 and offsets.dtype == np.int64
    assert peak < 8 * 65536 * 4  # the offsets and a few temporaries of their size
