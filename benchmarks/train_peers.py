#!/usr/bin/env python3
"""Samples/s of mpibench train against a plain reader loop on the same MLPerf-shaped datasets.

    python benchmarks/train_peers.py                   # 4 formats, 2 ranks, 5 repetitions
    python benchmarks/train_peers.py --formats npz,parquet --reps 3 --workdir /scratch/$USER

For each format a small dataset is generated once with mpibench datagen (npz like unet3d,
JPEG like retinanet, TFRecord like resnet50, Parquet like dlrm), then every repetition
runs, in a rotating order:

  mpibench    mpiexec -n R mpibench run ... train.computation_time=0 (its defaults: 4 reader
              threads, prefetch 2), local_fs with train.cache=cold (files evicted first)
  mpibench-1  the same with train.read_threads=1 (the plain loop's one reader a rank)
  plain       mpiexec -n R python this-script --loop: each rank evicts its files and reads
              them in a loop, one at a time: np.load (npz), Pillow decode (JPEG), the
              tfrecord package's tfrecord_iterator plus a CRC32C check of each record
              (TFRecord), pyarrow ParquetFile(pre_buffer=True).read_row_group of the
              columns marked read (Parquet)

No compute is emulated: samples/s is the loader's rate. samples/s = all samples / (latest
rank end - earliest rank start), as mpibench reports it. The table gives the median
samples/s of each tool and mpibench's ratio to the plain loop; every value goes to the
JSON file (--output). The machine's load (uptime) is printed before and after.
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

DATASETS = {
    "npz": ["dataset.format=npz", "dataset.num_files=64", "dataset.samples_per_file=1",
            "dataset.record_size=1MiB", "dataset.record_size_stdev=256KiB", "train.batch_size=7"],
    "jpeg": ["dataset.format=jpeg", "dataset.num_files=192", "dataset.samples_per_file=1",
             "dataset.record_size=322957", "train.batch_size=24"],
    "tfrecord": ["dataset.format=tfrecord", "dataset.num_files=16", "dataset.samples_per_file=100",
                 "dataset.record_size=114660", "train.batch_size=50"],
    "parquet": ["dataset.format=parquet", "dataset.columns=dlrm", "dataset.row_group_size=6144",
                "dataset.num_files=8", "dataset.samples_per_file=12288", "dataset.record_size=761",
                "train.batch_size=2048"],
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def mpiexec(ranks: int, *args: str) -> list[str]:
    return [os.path.join(BIN, "mpiexec"), "-n", str(ranks), *args]


def config_args(fmt: str, root: str) -> list[str]:
    return [os.path.join(REPO, "configs", "quickstart.yaml"), "workload=train", f"storage.root={root}",
            "storage.type=local_fs", f"dataset.name={fmt}", "train.computation_time=0", "train.epochs=1",
            "train.cache=cold", *DATASETS[fmt]]


def run_mpibench(fmt: str, root: str, ranks: int, extra: list[str], out: str) -> float:
    cmd = mpiexec(ranks, os.path.join(BIN, "mpibench"), "run", *config_args(fmt, root), *extra,
                  "-q", "--force", "-o", out)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    with open(out) as handle:
        return float(json.load(handle)["train"]["samples_per_s"])


def run_plain(fmt: str, root: str, ranks: int, out: str) -> float:
    cmd = mpiexec(ranks, sys.executable, os.path.abspath(__file__), "--loop", fmt, "--root", root, "--out", out)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    with open(out) as handle:
        return float(json.load(handle)["samples_per_s"])


def plain_loop(fmt: str, root: str, out: str) -> None:
    """One rank of the plain loop: its share of the files, read and decoded one at a time."""
    import numpy as np
    from mpi4py import MPI

    from mpibench.config import load_config

    comm = MPI.COMM_WORLD
    config = load_config(config_args(fmt, root)[0], config_args(fmt, root)[1:])
    ds = config.dataset
    folder = os.path.join(root, fmt)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if f.startswith("img_"))
    mine = files[comm.rank::comm.size]
    for path in mine:  # cold, as mpibench's train.cache=cold
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        from mpibench.mlperf import COLUMN_SETS

        columns = [c.name for c in COLUMN_SETS[ds.columns] if c.read]
    comm.Barrier()
    start = MPI.Wtime()
    samples = 0
    for path in mine:
        if fmt == "npz":
            with np.load(path) as npz:
                samples += len(npz["x"])
                npz["y"]
        elif fmt == "jpeg":
            from PIL import Image

            with Image.open(path) as image:
                np.asarray(image.convert("RGB"))
            samples += 1
        elif fmt == "tfrecord":
            import crc32c
            from tfrecord.reader import tfrecord_iterator

            for record in tfrecord_iterator(path):
                crc32c.crc32c(record)  # the framing's data CRC, which the iterator does not check
                samples += 1
        else:
            pf = pq.ParquetFile(path, pre_buffer=True)  # as mpibench reads it
            for group in range(pf.num_row_groups):
                samples += pf.read_row_group(group, columns=columns, use_threads=False).num_rows
    end = MPI.Wtime()
    starts = comm.gather(start)
    ends = comm.gather(end)
    total = comm.reduce(samples)
    if comm.rank == 0:
        with open(out, "w") as handle:
            json.dump({"samples": total, "seconds": max(ends) - min(starts),
                       "samples_per_s": total / (max(ends) - min(starts))}, handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="npz,jpeg,tfrecord,parquet")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    parser.add_argument("--output", default="train_peers.json")
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        plain_loop(args.loop, args.root, args.out)
        return 0
    formats = args.formats.split(",")
    work = tempfile.mkdtemp(prefix="mpibench-train-peers-", dir=args.workdir)
    tools = ["mpibench", "mpibench-1", "plain"]
    values: dict[str, dict[str, list[float]]] = {f: {t: [] for t in tools} for f in formats}
    load = {"before": uptime()}
    print("load before:", load["before"], flush=True)
    try:
        for fmt in formats:
            gen = config_args(fmt, work)
            subprocess.run(mpiexec(args.ranks, os.path.join(BIN, "mpibench"), "run", *gen, "workload=datagen",
                                   "-q", "-o", os.path.join(work, f"gen-{fmt}.json")),
                           check=True, stdin=subprocess.DEVNULL)
        for rep in range(args.reps):
            for fmt in formats:
                order = tools[rep % len(tools):] + tools[: rep % len(tools)]
                for tool in order:
                    out = os.path.join(work, f"{fmt}-{tool}.json")
                    if tool == "plain":
                        value = run_plain(fmt, work, args.ranks, out)
                    else:
                        extra = ["train.read_threads=1"] if tool == "mpibench-1" else []
                        value = run_mpibench(fmt, work, args.ranks, extra, out)
                    values[fmt][tool].append(value)
                    print(f"rep {rep} {fmt:<9}{tool:<12}{value:>12.1f} samples/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load["after"] = uptime()
    print("load after:", load["after"])
    print(f"\n{'format':<10}{'mpibench':>12}{'mpibench-1':>12}{'plain':>12}{'ratio':>8}{'ratio-1':>9}"
          "   (median samples/s; ratio = mpibench / plain)")
    for fmt in formats:
        med = {t: statistics.median(values[fmt][t]) for t in tools}
        print(f"{fmt:<10}{med['mpibench']:>12.1f}{med['mpibench-1']:>12.1f}{med['plain']:>12.1f}"
              f"{med['mpibench'] / med['plain']:>8.2f}{med['mpibench-1'] / med['plain']:>9.2f}")
    with open(args.output, "w") as handle:
        json.dump({"ranks": args.ranks, "reps": args.reps, "load": load, "samples_per_s": values,
                   "datasets": DATASETS, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, handle, indent=1)
    print(f"values written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
