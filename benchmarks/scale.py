#!/usr/bin/env python3
"""Memory and plan scale of mpibench: what one rank costs as ranks and files grow.

    python benchmarks/scale.py            # both checks below, a minute or two
    python benchmarks/scale.py plan       # one rank's plan at 100,000 ranks and 10,000,000 files
    python benchmarks/scale.py memory     # a rank's peak RSS in train, 10k vs 1M files

plan    Times (best of several) and measures (tracemalloc peak) what one rank computes of
        its plan at 100,000 ranks and 10,000,000 files: its share of every epoch of a
        shuffled train run, its files' sizes, the buffer it needs, `mpibench plan`'s view
        of it; and a bandwidth and a datagen rank's plan. Target: under 100 ms and 50 MB.

memory  Runs rank 0's whole train epoch loop (reader threads, operation logs, the
        per-file bookkeeping) of a 2-rank job over a dataset of 10,000 and of 1,000,000
        files, each in a fresh process, against a storage stand-in that answers every read
        at once (so no dataset has to exist), and compares the processes' peak RSS
        (ru_maxrss). Target: within 10% of each other. Also prints the buffers a
        bandwidth rank allocates against transfer_size x io_depth.

Prints a table; --json FILE writes the raw values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from typing import Any

RANKS, FILES = 100_000, 10_000_000
MEMORY_FILES = (10_000, 1_000_000)


def plan_one_rank(rank: int, ranks: int, files: int, epochs: int) -> dict[str, Any]:
    """Everything a rank computes of its own plan, as the workloads compute it."""
    from mpibench.config import build_config
    from mpibench.formats import record_sizes, size_bound
    from mpibench.plan import bandwidth_file, epoch_files, part_range, transfer_offsets
    from mpibench.workloads.train import WORKLOAD as TRAIN

    config = build_config({"workload": "train", "storage": {"type": "direct_fs", "root": "/x"},
                           "dataset": {"num_files": files, "record_size": 150_000, "record_size_stdev": 30_000,
                                       "samples_per_file": 1},
                           "train": {"epochs": epochs, "shuffle": "file"}})
    ds, tc = config.dataset, config.train
    shares = [epoch_files(files, ranks, rank, epoch, True, tc.seed) for epoch in range(epochs)]
    largest = max(int(record_sizes(ds, share).max()) for share in shares)
    buffer_bytes = size_bound(ds, 0, largest)
    described = TRAIN.describe_plan(config, ranks, rank, 8, ranks // 8)
    bw = bandwidth_file("per_rank", rank, 256 * 2**20)
    offsets = transfer_offsets(bw.length, 2**20, "random", rank)
    datagen_first, datagen_count = part_range(files, ranks, rank)
    return {"files_per_epoch": len(shares[0]), "buffer_bytes": buffer_bytes, "described": described,
            "bandwidth_transfers": len(offsets), "datagen_files": datagen_count, "datagen_first": datagen_first}


def check_plan(repeats: int = 7) -> dict[str, Any]:
    """Time and memory of one rank's plan at RANKS ranks and FILES files."""
    plan_one_rank(1, 8, 1000, 1)  # imports and first-call costs out of the way
    rank = RANKS // 2 + 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        plan_one_rank(rank, RANKS, FILES, 3)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    result = plan_one_rank(rank, RANKS, FILES, 3)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"ranks": RANKS, "files": FILES, "epochs": 3, "rank": rank, "best_ms": min(times) * 1e3,
            "median_ms": sorted(times)[len(times) // 2] * 1e3, "tracemalloc_peak_MB": peak / 1e6,
            "files_per_epoch": result["files_per_epoch"]}


# -- a rank's train run against a storage stand-in ----------------------------------------------------
def train_rss(files: int, ranks: int, rank: int) -> dict[str, Any]:
    """Rank `rank` of `ranks` runs train's epoch over `files` files of a stand-in storage."""
    from mpibench.backends.base import Backend
    from mpibench.config import build_config
    from mpibench.context import PreflightInfo
    from mpibench.formats import encode_manifest, manifest_key, manifest_of
    from mpibench.metrics import PhaseRecorder
    from mpibench.plan import part_range
    from mpibench.workloads.train import WORKLOAD as TRAIN

    config = build_config({"workload": "train", "storage": {"type": "direct_fs", "root": "/standin"},
                           "dataset": {"name": "ds", "format": "raw", "num_files": files, "samples_per_file": 1,
                                       "record_size": 4096},
                           "train": {"epochs": 1, "batch_size": 64, "read_threads": 2, "decode": False,
                                     "computation_time": 0.0, "shuffle": "file"}})
    ds = config.dataset
    total = files * 4096  # record_size_stdev 0: every file is one 4 KiB record
    manifest_buf, manifest_len, _ = encode_manifest(manifest_of(ds, complete=True, total_bytes=total), 1)
    manifest = bytes(manifest_buf[:manifest_len])

    class StandIn(Backend):
        """Every file exists and reads return its size at once (nothing is stored)."""

        name = "stand-in"
        direct = True

        def open(self, key: str, mode: str) -> Any:
            return key

        def write_at(self, handle: Any, buf: memoryview, offset: int) -> int:
            return len(buf)

        def read_at(self, handle: Any, buf: memoryview, offset: int) -> int:
            if handle == manifest_key(ds):
                n = max(0, min(len(buf), manifest_len - offset))
                buf[:n] = manifest[offset:offset + n]
                return n
            return max(0, min(len(buf), 4096 - offset))

        def close(self, handle: Any) -> None:
            pass

        def remove(self, key: str) -> None:
            pass

        def size_of(self, key: str) -> int:
            return manifest_len if key == manifest_key(ds) else 4096

    class OneRankOf:
        """Rank `rank` of a `ranks`-rank job whose other ranks agree with it."""

        def __init__(self) -> None:
            self.rank, self.size, self.is_root = rank, ranks, rank == 0

        def bcast(self, obj: Any, root: int = 0) -> Any:
            return obj

        def allreduce_min(self, value: float) -> float:
            return value

    class Layout:
        num_nodes = 1

    class Context:
        def __init__(self) -> None:
            self.config, self.comm, self.backend = config, OneRankOf(), StandIn(config.storage)
            self.layout, self.info, self.phases = Layout(), PreflightInfo("x", "mpibench-x"), []
            self.records: list[PhaseRecorder] = []

        def check_stop(self, now_ns: int | None = None) -> None:
            pass

        def phase(self, name: str, iteration: int, body: Any, **meta: Any) -> None:
            rec = PhaseRecorder(name, iteration, 0.5)
            rec.begin(time.time())
            body(rec)
            rec.finish(time.time())
            self.records.append(rec)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = Context()
    start = time.perf_counter()
    TRAIN.run(ctx)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    rec = ctx.records[0]
    assert rec.files == part_range(files, ranks, rank)[1], rec.files
    return {"files": files, "ranks": ranks, "rank": rank, "files_read": rec.files, "ops": rec.ops,
            "seconds": round(seconds, 2), "rss_before_MiB": before / 1024,
            "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def check_memory(rank_counts: tuple[int, ...] = (2, 16)) -> dict[str, Any]:
    """Peak RSS of rank 0 in train over 10k and 1M files, each in a fresh process."""
    results = []
    for ranks in rank_counts:
        runs = []
        for files in MEMORY_FILES:
            out = subprocess.run([sys.executable, __file__, "_train_rss", str(files), str(ranks), "0"],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout))
        small, large = runs
        results.append({"ranks": ranks, "runs": runs, "ratio": large["peak_rss_MiB"] / small["peak_rss_MiB"],
                        "share_array_MiB": large["files_read"] * 8 / 2**20})
    return {"by_ranks": results, "buffers": bandwidth_buffers()}


def bandwidth_buffers() -> list[dict[str, Any]]:
    """Bytes of I/O buffers one bandwidth rank maps at most, against transfer_size x io_depth.

    A rank holds the seeded base of the file it writes and of the file it reads (one
    transfer each, made before the phases) and, during a phase, one working buffer per
    I/O thread; nothing else grows with the sizes.
    """
    from mpibench.buffers import DataPattern

    rows = []
    for transfer, depth in ((4096, 16), (2**20, 1), (2**20, 8), (16 * 2**20, 2)):
        bases = sum(len(DataPattern(1, owner, transfer).base) for owner in (0, 1))
        per_thread = len(DataPattern(1, 0, transfer).new_buffer())
        total = bases + depth * per_thread
        rows.append({"transfer_size": transfer, "io_depth": depth, "buffer_bytes": total,
                     "transfer_x_depth": transfer * depth, "beyond": total - transfer * depth})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_train_rss"]:
        print(json.dumps(train_rss(int(argv[1]), int(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=("all", "plan", "memory"))
    parser.add_argument("--json", default=None, help="write the raw values to this file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"python": sys.version.split()[0], "cores": os.cpu_count()}
    if args.what in ("all", "plan"):
        plan = results["plan"] = check_plan()
        print(f"plan of one rank (rank {plan['rank']} of {plan['ranks']:,}, {plan['files']:,} files, "
              f"{plan['epochs']} shuffled epochs, {plan['files_per_epoch']} files per epoch): "
              f"best {plan['best_ms']:.1f} ms, median {plan['median_ms']:.1f} ms, "
              f"tracemalloc peak {plan['tracemalloc_peak_MB']:.2f} MB "
              f"(target < 100 ms and < 50 MB: {'met' if plan['best_ms'] < 100 and plan['tracemalloc_peak_MB'] < 50 else 'MISSED'})")
    if args.what in ("all", "memory"):
        memory = results["memory"] = check_memory()
        for entry in memory["by_ranks"]:
            for run in entry["runs"]:
                print(f"train, rank 0 of {entry['ranks']}, {run['files']:>9,} files ({run['files_read']:,} read by "
                      f"the rank in {run['seconds']} s): peak RSS {run['peak_rss_MiB']:.1f} MiB "
                      f"(after imports {run['rss_before_MiB']:.1f} MiB)")
            print(f"  peak RSS 1M / 10k files at {entry['ranks']} ranks: {entry['ratio']:.3f} "
                  f"(target within 10%: {'met' if abs(entry['ratio'] - 1) <= 0.10 else 'MISSED'}; held as an "
                  f"array, the rank's share of 1M files would be {entry['share_array_MiB']:.1f} MiB of file indices)")
        for row in memory["buffers"]:
            print(f"bandwidth buffers, transfer {row['transfer_size']} x io_depth {row['io_depth']}: "
                  f"{row['buffer_bytes']} bytes = transfer x depth + {row['beyond']} (two patterns' bases)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
