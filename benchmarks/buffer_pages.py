#!/usr/bin/env python3
"""What the pages of an I/O buffer do to O_DIRECT bandwidth: 4 KiB pages vs 2 MiB huge pages.

    python benchmarks/buffer_pages.py --dir /scratch/me            # 1 MiB transfers, 5 repetitions
    python benchmarks/buffer_pages.py --dir /scratch/me --fio      # and fio: scramble_buffers on/off

A plain Python loop writes (then reads back) one file with `os.pwrite` / `os.preadv` and
O_DIRECT from one buffer, once in private 4 KiB pages (as malloc'd memory) and once in
transparent huge pages, interleaved; it prints MiB/s and the block device's requests per
transfer (its /sys stat counters, whole device). A transfer spans one segment per
physically contiguous run of pages, and a queue takes at most `max_segments` of them per
request: with scattered 4 KiB pages a large transfer can become several requests. With
--fio, fio psync runs the same transfers from reserved huge pages (`--mem=shmhuge`, needs
`sysctl vm.nr_hugepages`) and from malloc'd memory, with its default scramble_buffers=1 and
with 0. docs/runs/2026-12-05-peers-journal.md has a run of it.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024**2
HUGE_PAGE = 2 * MiB


def device_stat(path: str) -> Path:
    dev = os.stat(path).st_dev
    return Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")


def requests(stat: Path) -> tuple[int, int]:
    fields = stat.read_text().split()
    return int(fields[0]), int(fields[4])  # reads, writes completed


def buffer(size: int, huge: bool) -> mmap.mmap:
    length = -(-size // HUGE_PAGE) * HUGE_PAGE if huge else size
    buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        buf.madvise(mmap.MADV_HUGEPAGE)
    buf[:size] = os.urandom(size)
    return buf


def python_loop(folder: str, transfer: int, total: int, huge: bool) -> dict[str, float]:
    stat = device_stat(folder)
    buf = memoryview(buffer(transfer, huge))[:transfer]
    path = os.path.join(folder, "loop")
    count = total // transfer
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    before = requests(stat)
    start = time.perf_counter()
    for i in range(count):
        os.pwrite(fd, buf, i * transfer)
    os.fsync(fd)
    os.close(fd)
    write_s = time.perf_counter() - start
    middle = requests(stat)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    start = time.perf_counter()
    for i in range(count):
        os.preadv(fd, [buf], i * transfer)
    os.close(fd)
    read_s = time.perf_counter() - start
    after = requests(stat)
    os.unlink(path)
    return {"write": total / MiB / write_s, "read": total / MiB / read_s,
            "write_requests_per_transfer": (middle[1] - before[1]) / count,
            "read_requests_per_transfer": (after[0] - middle[0]) / count}


def fio(folder: str, transfer: int, total: int, mem: str, scramble: int) -> dict[str, float]:
    stat = device_stat(folder)
    common = ["fio", "--name=pages", f"--directory={folder}", "--ioengine=psync", "--direct=1",
              f"--bs={transfer}", f"--size={total}", "--fallocate=none", f"--mem={mem}",
              "--output-format=json"]
    before = requests(stat)
    wrote = json.loads(subprocess.run([*common, "--rw=write", "--end_fsync=1", f"--scramble_buffers={scramble}"],
                                      check=True, capture_output=True, text=True).stdout)
    middle = requests(stat)
    read = json.loads(subprocess.run([*common, "--rw=read"], check=True, capture_output=True, text=True).stdout)
    after = requests(stat)
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    count = total // transfer
    return {"write": wrote["jobs"][0]["write"]["bw_bytes"] / MiB, "read": read["jobs"][0]["read"]["bw_bytes"] / MiB,
            "write_requests_per_transfer": (middle[1] - before[1]) / count,
            "read_requests_per_transfer": (after[0] - middle[0]) / count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="a folder on the filesystem to test (not tmpfs)")
    parser.add_argument("--transfer", type=int, default=MiB, help="bytes per transfer (default 1 MiB)")
    parser.add_argument("--total", type=int, default=512 * MiB, help="bytes written and read per run")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--fio", action="store_true", help="also fio psync, huge pages and malloc, scramble on/off")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="buffer-pages-", dir=args.dir)
    tools = {"python 4KiB pages": lambda: python_loop(folder, args.transfer, args.total, False),
             "python huge pages": lambda: python_loop(folder, args.transfer, args.total, True)}
    if args.fio:
        for mem in ("shmhuge", "malloc"):
            for scramble in (1, 0):
                tools[f"fio {mem} scramble={scramble}"] = (
                    lambda mem=mem, scramble=scramble: fio(folder, args.transfer, args.total, mem, scramble))
    raw: dict[str, list[dict[str, float]]] = {name: [] for name in tools}
    try:
        for rep in range(args.reps):
            for name, tool in tools.items():
                subprocess.run(["sync"], check=False)
                time.sleep(1)
                raw[name].append(tool())
                print(f"rep {rep + 1}/{args.reps} {name:<26} " + ", ".join(
                    f"{k} {v:.2f}" for k, v in raw[name][-1].items()), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{'tool':<26} {'write MiB/s':>12} {'req/xfer':>9} {'read MiB/s':>11} {'req/xfer':>9}  (medians)")
    for name, runs in raw.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:<26} {med['write']:>12.0f} {med['write_requests_per_transfer']:>9.2f} "
              f"{med['read']:>11.0f} {med['read_requests_per_transfer']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
