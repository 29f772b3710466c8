#!/usr/bin/env python3
"""Nanoseconds per operation of mpibench's transfer loop, of a bare Python loop and of fio.

    python benchmarks/loop_overhead.py                 # 4 KiB on /dev/shm, 15 repetitions
    python benchmarks/loop_overhead.py --dir /dev/shm --size 4096 --reps 30
    python benchmarks/loop_overhead.py --depth 16      # random 4 KiB at depth 16

On tmpfs (which accepts O_DIRECT on Linux) an operation is a memory copy and a system
call, so what differs between the three is the CPU each spends per operation:

  bare     for offset in offsets: os.preadv(fd, [view], offset)   (or os.pwrite)
  mpibench mpibench.engine.transfer_region at io_depth 1, the loop every workload uses:
           data stamps (writes), one clock reading and one append per operation, checks
  fio      fio --ioengine=psync --direct=1 at queue depth 1, same file size and transfer

With --depth N > 1 the transfers are in random order and N are kept in flight:

  bare-threads      N threads doing bare os.preadv / os.pwrite, taking offsets from one list
  mpibench          transfer_region with io_engine io_uring (its default where available)
  mpibench-threads  transfer_region with io_engine threads
  fio               fio --ioengine=io_uring --iodepth=N --rw=randread / randwrite

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
import threading
import time
from types import SimpleNamespace

import numpy as np

from mpibench import engine, uring
from mpibench.backends.posix import DirectFsBackend
from mpibench.buffers import BufferPool, DataPattern
from mpibench.config import StorageConfig
from mpibench.metrics import PhaseRecorder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/dev/shm", help="where the test file lives (default /dev/shm)")
    parser.add_argument("--size", type=int, default=4096, help="transfer size in bytes (default 4096)")
    parser.add_argument("--ops", type=int, default=32768, help="operations per measurement")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--depth", type=int, default=1, help="operations in flight (default 1)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mpibench-loop-", dir=args.dir)
    try:
        return measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: str, args: argparse.Namespace) -> int:
    size, count = args.size, args.ops
    backend = DirectFsBackend(StorageConfig(type="direct_fs", root=work), alignment=4096)
    depth = args.depth
    ctx = SimpleNamespace(io_depth=depth, write_io_depth=depth, io_engine="threads", backend=backend, fault=None,
                          check_stop=lambda now=None: None, buffers=BufferPool())
    pattern = DataPattern(1, 0, size)
    offsets = np.arange(count, dtype=np.int64) * size
    if depth > 1:
        offsets = np.random.default_rng(1).permutation(offsets)
    plain = offsets.tolist()
    path = os.path.join(work, "loop.dat")
    fio = shutil.which("fio")

    def mpibench_loop(op: str, engine_name: str = "io_uring") -> float:
        ctx.io_engine = engine_name
        handle = backend.open("loop.dat", "w" if op == "write" else "r")
        rec = PhaseRecorder(op, 0, 1.0)
        rec.begin(0.0)
        start = time.perf_counter_ns()
        engine.transfer_region(ctx, rec, handle, op, path, 0, offsets, size, pattern)
        elapsed = time.perf_counter_ns() - start
        backend.close(handle)
        return elapsed / count

    def bare_threads(op: str) -> float:
        handle = backend.open("loop.dat", "w" if op == "write" else "r")
        shared = iter(plain)
        fd = handle.fd

        def worker() -> None:
            view = memoryview(pattern.new_buffer())[:size]
            if op == "write":
                for offset in shared:
                    os.pwrite(fd, view, offset)
            else:
                views = [view]
                for offset in shared:
                    os.preadv(fd, views, offset)

        threads = [threading.Thread(target=worker) for _ in range(depth)]
        start = time.perf_counter_ns()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
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
        mode = ["--ioengine=io_uring", f"--iodepth={depth}", f"--rw=rand{op}"] if depth > 1 else \
            ["--ioengine=psync", "--iodepth=1", f"--rw={op}"]
        out = subprocess.run([fio, "--name=loop", f"--filename={path}", *mode, f"--bs={size}",
                              f"--size={size * count}", "--direct=1", "--output-format=json"],
                             capture_output=True, text=True, check=True)
        job = json.loads(out.stdout)["jobs"][0][op]
        return job["runtime"] * 1e6 / job["total_ios"] if job["total_ios"] else float("nan")

    tools = {"bare": bare_loop, "mpibench": mpibench_loop}
    if depth > 1:
        tools = {"bare-threads": bare_threads, "mpibench": mpibench_loop,
                 "mpibench-threads": lambda op: mpibench_loop(op, "threads")}
        if uring.unavailable():
            print(f"skipping mpibench's io_uring engine: {uring.unavailable()}")
            del tools["mpibench"]
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
    order = "random order, depth " + str(depth) if depth > 1 else "queue depth 1"
    print(f"{size}-byte transfers on {args.dir} ({count} operations, {order}, {args.reps} repetitions), "
          "ns per operation")
    reference = "bare-threads" if depth > 1 else "bare"
    print(f"{'op':<6}{'tool':<18}{'min':>8}{'median':>8}{'- ' + reference + ' (median)':>28}")
    for op in ("write", "read"):
        bare = statistics.median(results[(op, reference)])
        for name in tools:
            values = results[(op, name)]
            extra = f"{statistics.median(values) - bare:+.0f}" if name.startswith("mpibench") else ""
            print(f"{op:<6}{name:<18}{min(values):>8.0f}{statistics.median(values):>8.0f}{extra:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
