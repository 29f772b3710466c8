#!/usr/bin/env python3
"""The per-call cost of the metadata workload's file operations in CPython: by full path (as
mdtest names files) and relative to an open directory descriptor (fstatat, openat, unlinkat,
as mpibench does now), interleaved.

    python benchmarks/metadata_calls.py --dirs /dev/shm,/tmp --files 5000 --reps 7

For each folder: FILES empty files in one directory; per repetition each way creates them
(open O_CREAT|O_EXCL + close), stats them (lstat), reads them (open + close) and removes
them, the order of the two ways alternating. Prints the median microseconds per call of each
way and the median of the repetitions' paired ratios descriptor / path, with the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
OPS = ("create", "stat", "read", "remove")


def by_path(folder: str) -> dict[str, Callable[[str], object]]:
    def create(name: str) -> None:
        os.close(os.open(f"{folder}/{name}", CREATE, 0o644))

    def read(name: str) -> None:
        os.close(os.open(f"{folder}/{name}", READ))

    return {"create": create, "stat": lambda n: os.stat(f"{folder}/{n}", follow_symlinks=False), "read": read,
            "remove": lambda n: os.unlink(f"{folder}/{n}")}


def by_descriptor(fd: int) -> dict[str, Callable[[str], object]]:
    def create(name: str) -> None:
        os.close(os.open(name, CREATE, 0o644, dir_fd=fd))

    def read(name: str) -> None:
        os.close(os.open(name, READ, dir_fd=fd))

    return {"create": create, "stat": lambda n: os.stat(n, dir_fd=fd, follow_symlinks=False), "read": read,
            "remove": lambda n: os.unlink(n, dir_fd=fd)}


def measure(base: str, files: int, reps: int) -> dict[str, dict[str, list[float]]]:
    """{way: {op: [µs per call, one per repetition]}}."""
    work = tempfile.mkdtemp(prefix="mdcalls-", dir=base)
    folder = os.path.join(work, "mdtest_tree.0.0")
    os.mkdir(folder)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    names = [f"file.mdtest.0.{i}" for i in range(files)]
    ways = {"path": by_path(folder), "descriptor": by_descriptor(fd)}
    out: dict[str, dict[str, list[float]]] = {w: {op: [] for op in OPS} for w in ways}
    clock = time.perf_counter_ns
    try:
        for rep in range(reps):
            for way in (("path", "descriptor") if rep % 2 == 0 else ("descriptor", "path")):
                calls = ways[way]
                os.sync()
                for op in OPS:
                    call = calls[op]
                    start = clock()
                    for name in names:
                        call(name)
                    out[way][op].append((clock() - start) / files / 1e3)
    finally:
        os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dirs", default="/dev/shm,/tmp", help="folders on the file systems to measure")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    print("| folder | op | path µs/call | descriptor µs/call | descriptor / path (paired) |\n|---|---|---:|---:|---:|")
    for base in args.dirs.split(","):
        found = measure(base, args.files, args.reps)
        for op in OPS:
            a, b = found["path"][op], found["descriptor"][op]
            paired = statistics.median(y / x for x, y in zip(a, b, strict=True))
            print(f"| {base} | {op} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | {paired:.2f} |")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
