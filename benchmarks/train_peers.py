#!/usr/bin/env python3
"""Samples/s of mpibench train against a plain reader loop on the same MLPerf-shaped datasets.

    python benchmarks/train_peers.py                   # 4 formats, 2 ranks, 5 repetitions
    python benchmarks/train_peers.py --formats npz,parquet --reps 3 --workdir /scratch/$USER
    python benchmarks/train_peers.py --formats npz,jpeg --dlio /tmp/dlio-venv/bin/python

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

  dlio        (--dlio PYTHON, npz and jpeg) DLIO 2.0.0 from PyPI, its PyTorch path:
              mpiexec -n R dlio_benchmark on its own dataset of the same shape (file count,
              samples per file, record size and stdev, batch; generated once by DLIO),
              reader.read_threads=4 as mpibench's, computation_time=0, files evicted
              first; its figure is train_throughput_samples_per_second of its summary.json
              (its steps x batch over each rank's epoch time, summed over ranks). DLIO has
              no Parquet reader and reads TFRecord through TensorFlow only.

DLIO's scratch install, outside the repository (its PyPI metadata pulls TensorFlow, DALI
and torchvision, which its PyTorch path does not need):

    python3 -m venv /tmp/dlio-venv
    /tmp/dlio-venv/bin/pip install torch==2.13.0   # the CPU wheel
    /tmp/dlio-venv/bin/pip install --no-deps dlio-benchmark==2.0.0
    /tmp/dlio-venv/bin/pip install Pillow PyYAML h5py mpi4py mpich numpy omegaconf pandas \
        psutil pydftracer==1.0.2 hydra-core
    # dlio_benchmark/profiler/profiler_factory.py imports TensorFlow at module level for
    # its TensorBoard profiler: move that import into the TENSORBOARD branch.

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


#: DLIO's workload keys for the shapes it reads (dataset and reader as in DATASETS)
DLIO_SHAPES = {
    "npz": {"format": "npz", "num_files_train": 64, "num_samples_per_file": 1, "record_length": 1 << 20,
            "record_length_stdev": 256 << 10, "batch_size": 7},
    "jpeg": {"format": "jpeg", "num_files_train": 192, "num_samples_per_file": 1, "record_length": 322957,
             "record_length_stdev": 0, "batch_size": 24},
}


def dlio_args(fmt: str, root: str, generate: bool, out: str) -> list[str]:
    """dlio_benchmark's overrides for one shape (on its unet3d_h100 workload, PyTorch)."""
    shape = DLIO_SHAPES[fmt]
    w = "++workload."
    return ["workload=unet3d_h100", f"{w}framework=pytorch", f"{w}reader.data_loader=pytorch",
            f"{w}workflow.generate_data={generate}", f"{w}workflow.train={not generate}",
            f"{w}workflow.checkpoint=False", f"{w}dataset.data_folder={os.path.join(root, 'dlio-' + fmt)}",
            f"{w}dataset.format={shape['format']}", f"{w}dataset.num_files_train={shape['num_files_train']}",
            f"{w}dataset.num_samples_per_file={shape['num_samples_per_file']}",
            f"{w}dataset.record_length={shape['record_length']}",
            f"{w}dataset.record_length_stdev={shape['record_length_stdev']}", f"{w}dataset.record_length_resize=0",
            f"{w}reader.batch_size={shape['batch_size']}", f"{w}reader.read_threads=4",
            f"{w}train.epochs=1", f"{w}train.computation_time=0", f"{w}output.folder={out}",
            f"hydra.run.dir={out}"]


def dlio_bin(python: str) -> str:
    return os.path.join(os.path.dirname(python), "dlio_benchmark")


def run_dlio(fmt: str, root: str, ranks: int, python: str, out: str, generate: bool = False) -> float:
    """One DLIO run (or its data generation); return its train samples/s."""
    folder = os.path.join(root, "dlio-" + fmt)
    if not generate:  # cold, as the others
        for d, _, names in os.walk(folder):
            for name in names:
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [os.path.join(os.path.dirname(python), "mpiexec"), "-n", str(ranks), dlio_bin(python),
           *dlio_args(fmt, root, generate, out)]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise SystemExit(f"DLIO failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    if generate:
        return 0.0
    with open(os.path.join(out, "summary.json")) as handle:
        return float(json.load(handle)["metric"]["train_throughput_mean_samples_per_second"])


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
    parser.add_argument("--dlio", metavar="PYTHON",
                        help="the python of a venv with dlio-benchmark 2.0.0 (see above): run DLIO too")
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        plain_loop(args.loop, args.root, args.out)
        return 0
    formats = args.formats.split(",")
    work = tempfile.mkdtemp(prefix="mpibench-train-peers-", dir=args.workdir)
    tools = ["mpibench", "mpibench-1", "plain"] + (["dlio"] if args.dlio else [])
    if args.dlio and not os.path.exists(dlio_bin(args.dlio)):
        parser.error(f"--dlio {args.dlio}: no dlio_benchmark next to it; install DLIO as the help says")
    values: dict[str, dict[str, list[float]]] = {f: {t: [] for t in tools} for f in formats}
    load = {"before": uptime()}
    print("load before:", load["before"], flush=True)
    try:
        for fmt in formats:
            gen = config_args(fmt, work)
            subprocess.run(mpiexec(args.ranks, os.path.join(BIN, "mpibench"), "run", *gen, "workload=datagen",
                                   "-q", "-o", os.path.join(work, f"gen-{fmt}.json")),
                           check=True, stdin=subprocess.DEVNULL)
            if args.dlio and fmt in DLIO_SHAPES:
                run_dlio(fmt, work, args.ranks, args.dlio, os.path.join(work, f"dlio-gen-{fmt}"), generate=True)
        for rep in range(args.reps):
            for fmt in formats:
                mine = [t for t in tools if t != "dlio" or fmt in DLIO_SHAPES]
                order = mine[rep % len(mine):] + mine[: rep % len(mine)]
                for tool in order:
                    out = os.path.join(work, f"{fmt}-{tool}.json")
                    if tool == "dlio":
                        value = run_dlio(fmt, work, args.ranks, args.dlio, os.path.join(work, "dlio-out"))
                    elif tool == "plain":
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
          + (f"{'dlio':>12}{'x dlio':>8}" if args.dlio else "")
          + "   (median samples/s; ratio = mpibench / plain; x dlio = mpibench / dlio)")
    for fmt in formats:
        med = {t: statistics.median(v) for t, v in values[fmt].items() if v}
        line = (f"{fmt:<10}{med['mpibench']:>12.1f}{med['mpibench-1']:>12.1f}{med['plain']:>12.1f}"
                f"{med['mpibench'] / med['plain']:>8.2f}{med['mpibench-1'] / med['plain']:>9.2f}")
        if "dlio" in med:
            line += f"{med['dlio']:>12.1f}" + (f"{med['mpibench'] / med['dlio']:>8.1f}" if med["dlio"] else "     inf")
        print(line)
    with open(args.output, "w") as handle:
        json.dump({"ranks": args.ranks, "reps": args.reps, "load": load, "samples_per_s": values,
                   "datasets": DATASETS, "dlio_shapes": DLIO_SHAPES if args.dlio else None, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, handle, indent=1)
    print(f"values written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
