#!/usr/bin/env python3
"""Nanoseconds per operation of mpibench's transfer loop, of a bare Python loop and of fio.

    python benchmarks/loop_overhead.py                 # 4 KiB on /dev/shm, 15 repetitions
    python benchmarks/loop_overhead.py --dir /dev/shm --size 4096 --reps 30

On tmpfs (which accepts O_DIRECT on Linux) an operation is a memory copy and a system
call, so what differs between the three is the CPU each spends per operation:

  bare     for offset in offsets: os.preadv(fd, [view], offset)   (or os.pwrite)
  mpibench mpibench.engine.transfer_region at io_depth 1, the loop every workload uses:
           data stamps (writes), one clock reading and one append per operation, checks
  fio      fio --ioengine=psync --direct=1 at queue depth 1, same file size and transfer

Each repetition runs the three in turn on the same file; the table gives the minimum and
median nanoseconds per operation and mpibench's cost over the bare loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from mpibench import engine
from mpibench.backends.posix import DirectFsBackend
from mpibench.buffers import DataPattern
from mpibench.config import StorageConfig
from mpibench.metrics import PhaseRecorder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/dev/shm", help="where the test file lives (default /dev/shm)")
    parser.add_argument("--size", type=int, default=4096, help="transfer size in bytes (default 4096)")
    parser.add_argument("--ops", type=int, default=32768, help="operations per measurement")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mpibench-loop-", dir=args.dir)
    try:
        return measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: str, args: argparse.Namespace) -> int:
    size, count = args.size, args.ops
    backend = DirectFsBackend(StorageConfig(type="direct_fs", root=work), alignment=4096)
    ctx = SimpleNamespace(io_depth=1, backend=backend, fault=None, check_stop=lambda now=None: None)
    pattern = DataPattern(1, 0, size)
    offsets = np.arange(count, dtype=np.int64) * size
    plain = offsets.tolist()
    path = os.path.join(work, "loop.dat")
    fio = shutil.which("fio")

    def mpibench_loop(op: str) -> float:
        handle = backend.open("loop.dat", "w" if op == "write" else "r")
        rec = PhaseRecorder(op, 0, 1.0)
        rec.begin(0.0)
        start = time.perf_counter_ns()
        engine.transfer_region(ctx, rec, handle, op, path, 0, offsets, size, pattern)
        elapsed = time.perf_counter_ns() - start
        backend.close(handle)
        return elapsed / count

    def bare_loop(op: str) -> float:
        handle = backend.open("loop.dat", "w" if op == "write" else "r")
        buf = pattern.new_buffer()
        view = memoryview(buf)[:size]
        fd = handle.fd
        start = time.perf_counter_ns()
        if op == "write":
            pwrite = os.pwrite
            for offset in plain:
                pwrite(fd, view, offset)
        else:
            preadv, views = os.preadv, [view]
            for offset in plain:
                preadv(fd, views, offset)
        elapsed = time.perf_counter_ns() - start
        backend.close(handle)
        return elapsed / count

    def fio_loop(op: str) -> float:
        out = subprocess.run([fio, "--name=loop", f"--filename={path}", f"--rw={op}", f"--bs={size}",
                              f"--size={size * count}", "--direct=1", "--ioengine=psync", "--iodepth=1",
                              "--output-format=json"], capture_output=True, text=True, check=True)
        job = json.loads(out.stdout)["jobs"][0][op]
        return job["runtime"] * 1e6 / job["total_ios"] if job["total_ios"] else float("nan")

    tools = {"bare": bare_loop, "mpibench": mpibench_loop}
    if fio:
        tools["fio"] = fio_loop
    else:
        print("skipping fio: not found (apt-get install fio)")
    results: dict[tuple[str, str], list[float]] = {}
    bare_loop("write")  # the file exists before the first read
    for _ in range(args.reps):
        for op in ("write", "read"):
            for name, func in tools.items():
                results.setdefault((op, name), []).append(func(op))
    print(f"{size}-byte transfers on {args.dir} ({count} operations, {args.reps} repetitions), ns per operation")
    print(f"{'op':<6}{'tool':<10}{'min':>8}{'median':>8}{'mpibench - bare (median)':>28}")
    for op in ("write", "read"):
        bare = statistics.median(results[(op, "bare")])
        for name in tools:
            values = results[(op, name)]
            extra = f"{statistics.median(values) - bare:+.0f}" if name == "mpibench" else ""
            print(f"{op:<6}{name:<10}{min(values):>8.0f}{statistics.median(values):>8.0f}{extra:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
