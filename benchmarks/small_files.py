#!/usr/bin/env python3
"""Files/s of mpibench train on small files against a plain reader loop, cached and evicted.

    python benchmarks/small_files.py                       # 10,000 npz files of ~4 KB, 5 repetitions
    python benchmarks/small_files.py --files 3000 --reps 7 --workdir /scratch/$USER
    python benchmarks/small_files.py --threads 1,4         # mpibench at these read_threads too
    python benchmarks/small_files.py --keep /tmp/small     # generate once into /tmp/small, reuse it

A dataset of small npz files (one sample each) is generated once with mpibench datagen on
local_fs. Then every repetition runs each case in a rotating order, one rank:

  cache   warm: the files are in the page cache (train.cache=warm; one untimed read first)
          cold: every file is evicted before the epoch (train.cache=cold; the loops
                posix_fadvise(DONTNEED) each file first, as mpibench does)
  decode  on:  mpibench train.decode=true   vs  a loop of `np.load(path)` reading "x" and "y"
          off: mpibench train.decode=false  vs  a loop of os.open / os.readv into one
               preallocated buffer / os.close (the least a Python reader can do per file)

  mpibench      `mpibench run configs/quickstart.yaml workload=train ... train.computation_time=0`
                with its defaults otherwise (train.read_threads as the user gets it)
  mpibench-tN   the same with train.read_threads=N for each N of --threads
  plain         the loop above, in the same process-less way: timed from the first open
                to the last close, inside the process

No compute is emulated: files/s is the loader's rate (mpibench: files / (phase end -
phase start), from its result). The table gives the median files/s per tool and the median
of the paired ratios mpibench / plain (pairs from the same repetition). The machine's load
(uptime) is printed before and after and written with every value to the JSON (--output).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
NAME = "small"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def config_args(root: str, files: int, record: int) -> list[str]:
    return [os.path.join(REPO, "configs", "quickstart.yaml"), "workload=train", f"storage.root={root}",
            "storage.type=local_fs", f"dataset.name={NAME}", "dataset.format=npz",
            f"dataset.num_files={files}", "dataset.samples_per_file=1", f"dataset.record_size={record}",
            "dataset.record_size_stdev=0", "train.computation_time=0", "train.epochs=1"]


def run_mpibench(base: list[str], cache: str, decode: bool, extra: list[str], out: str) -> float:
    cmd = [os.path.join(BIN, "mpibench"), "run", *base, f"train.cache={cache}",
           f"train.decode={'true' if decode else 'false'}", *extra, "-q", "--force", "-o", out]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with open(out) as handle:
        epoch = json.load(handle)["train"]["epochs"][0]
    return epoch["files"] / epoch["seconds"]


def dataset_files(root: str) -> list[str]:
    folder = os.path.join(root, NAME)
    return sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.startswith("img_"))


def plain_loop(paths: list[str], cache: str, decode: bool) -> float:
    """Files/s of the plain loop over `paths` (evicted first when cache is cold)."""
    import numpy as np

    if cache == "cold":
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    if decode:
        start = time.perf_counter()
        for path in paths:
            with np.load(path) as npz:
                npz["x"]
                npz["y"]
        seconds = time.perf_counter() - start
    else:
        largest = max(os.path.getsize(p) for p in paths)
        buf = bytearray(largest + 4096)
        view = memoryview(buf)
        start = time.perf_counter()
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            os.readv(fd, [view])
            os.close(fd)
        seconds = time.perf_counter() - start
    return len(paths) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--record", type=int, default=3584, help="record bytes (npz adds ~500 bytes of framing)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", default="4", help="also run mpibench at these train.read_threads")
    parser.add_argument("--cases", default="warm-on,warm-off,cold-on,cold-off")
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--output", default="small_files.json")
    parser.add_argument("--keep", help="generate the dataset into this folder once and reuse it (not removed)")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="mpibench-small-files-", dir=args.workdir)
    threads = [int(t) for t in args.threads.split(",") if t]
    tools = ["mpibench", *[f"mpibench-t{t}" for t in threads], "plain"]
    cases = args.cases.split(",")
    values: dict[str, dict[str, list[float]]] = {c: {t: [] for t in tools} for c in cases}
    load = {"before": uptime()}
    print("load before:", load["before"], flush=True)
    base = config_args(work, args.files, args.record)
    try:
        if not (args.keep and os.path.exists(os.path.join(work, "gen.json"))):
            subprocess.run([os.path.join(BIN, "mpibench"), "run", *base, "workload=datagen", "-q",
                            "-o", os.path.join(work, "gen.json")], check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
        paths = dataset_files(work)
        sizes = [os.path.getsize(p) for p in paths]
        print(f"{len(paths)} files, {statistics.mean(sizes):.0f} bytes each on average", flush=True)
        for rep in range(args.reps):
            for case in cases:
                cache, decode = case.split("-")[0], case.endswith("-on")
                if cache == "warm":  # the files in the page cache before any tool's turn
                    plain_loop(paths, "warm", False)
                order = tools[rep % len(tools):] + tools[: rep % len(tools)]
                for tool in order:
                    out = os.path.join(work, f"{case}-{tool}.json")
                    if tool == "plain":
                        value = plain_loop(paths, cache, decode)
                    else:
                        extra = [f"train.read_threads={tool[len('mpibench-t'):]}"] if tool != "mpibench" else []
                        value = run_mpibench(base, cache, decode, extra, out)
                    values[case][tool].append(value)
                    print(f"rep {rep} {case:<9}{tool:<14}{value:>10.0f} files/s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load["after"] = uptime()
    print("load after:", load["after"])
    header = "".join(f"{t:>14}" for t in tools)
    ratios = "".join(f"{'ratio ' + t[len('mpibench'):]:>12}" for t in tools[:-1])
    print(f"\n{'case':<10}{header}{ratios}   (median files/s; ratio: median of paired mpibench / plain)")
    summary = {}
    for case in cases:
        med = {t: statistics.median(values[case][t]) for t in tools}
        paired = {t: statistics.median(a / b for a, b in zip(values[case][t], values[case]["plain"]))
                  for t in tools[:-1]}
        summary[case] = {"median_files_per_s": med, "median_paired_ratio": paired}
        print(f"{case:<10}" + "".join(f"{med[t]:>14.0f}" for t in tools)
              + "".join(f"{paired[t]:>12.2f}" for t in tools[:-1]))
    with open(args.output, "w") as handle:
        json.dump({"files": args.files, "mean_file_bytes": statistics.mean(sizes), "reps": args.reps,
                   "load": load, "files_per_s": values, "summary": summary,
                   "when": time.strftime("%Y-%m-%d %H:%M:%S")}, handle, indent=1)
    print(f"values written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
