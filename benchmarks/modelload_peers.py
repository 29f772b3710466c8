#!/usr/bin/env python3
"""mpibench modelload side by side with plain loaders, on the same safetensors files.

    python benchmarks/modelload_peers.py --workdir /tmp/me            # 5 repetitions, 1 and 2 ranks
    python benchmarks/modelload_peers.py --workdir /tmp/me --scale 0.01 --reps 3 --ranks 1

Pairs, each cold (every shard evicted from the page cache first: posix_fadvise DONTNEED)
and warm (loaded again at once), at 1 and 2 ranks (every rank loads the whole model, as
data-parallel replicas do):

  mmap    mpibench modelload.reader=mmap (MAP_PRIVATE, every tensor copied out of the
          mapping)  vs  a plain loop of safetensors.safe_open(path, framework="numpy")
          calling get_tensor on every tensor (what a numpy user writes; ml_dtypes gives
          numpy the bfloat16)
  read    mpibench modelload.reader=read  vs  a plain loop preading every tensor into one
          buffer of the same size (modelload.buffer_size)
  direct  mpibench on direct_fs (O_DIRECT reads of every shard, buffer_size I/Os)  vs
          fio --ioengine=psync --direct=1 --rw=read --bs=buffer_size over the same files,
          one job per rank (fio's defaults otherwise)

--fuse (root, bindfs installed) measures instead mpibench's warm / cold ratio through
bindfs mounts of the model's folder, without and with -o direct_io, for the mmap and read
readers (modelload.backing_root set, so that a cold load is cold underneath as well).

--loop MIB (root, losetup and mkfs.ext4) is the device-truth demo instead: an ext4 file
system of MIB MiB on a loop device of its own (an image file in --workdir, removed after),
the model written there, and a 2-rank mpibench run (--config, e.g. the quick config) per
reader: mmap and read on local_fs, direct on direct_fs. Its table gives each load's bytes
the loop device read against the model's bytes and the bytes the load needed from storage
(the union of the node's pages; each rank's own for O_DIRECT), and whether a warm load was
served from memory; --results DIR keeps the result files (for `mpibench report`).

The peers' ranks are started by mpiexec and meet at an MPI barrier before they start, as
mpibench's do; every tool's GB/s is bytes / (last rank's end - first rank's start), its
own bytes (mpibench counts headers and alignment too: under 0.1 % here). Within a
repetition every pair runs once, in an order that rotates; the table gives per case the
medians and the ratio mpibench / peer of medians. The machine's load (uptime) is printed
before and after: record it with any figure.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec") if os.path.exists(os.path.join(BIN, "mpiexec")) else "mpiexec"
MPIBENCH = os.path.join(BIN, "mpibench")


# -- the plain peers (run as ranks under mpiexec: python modelload_peers.py --peer KIND DIR) -------
def peer_main(kind: str, folder: str, buffer_size: int) -> None:
    """One rank of a plain loader: barrier, load every tensor, report (start, end, bytes)."""
    from mpi4py import MPI

    if kind == "safe_open":  # imported before the clock starts, as a loader has them
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
        import safetensors  # noqa: F401
    comm = MPI.COMM_WORLD
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8"))
    shards = sorted(set(index["weight_map"].values()))
    # The pread loop's buffer: private and faulted in before the clock, as mpibench's staging buffer.
    buf = mmap.mmap(-1, buffer_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf[::4096] = b"\0" * len(range(0, buffer_size, 4096))
    comm.Barrier()
    start = MPI.Wtime()
    moved = safe_open_loop(folder, shards) if kind == "safe_open" else pread_loop(folder, shards, buf)
    end = MPI.Wtime()
    rows = comm.gather((start, end, moved))
    if comm.Get_rank() == 0:
        print(json.dumps({"start": min(r[0] for r in rows), "end": max(r[1] for r in rows),
                          "bytes": sum(r[2] for r in rows)}))


def safe_open_loop(folder: str, shards: list[str]) -> int:
    """What a numpy user writes: safe_open and get_tensor of every tensor."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    from safetensors import safe_open

    moved = 0
    for name in shards:
        with safe_open(os.path.join(folder, name), framework="numpy") as handle:
            for key in handle.keys():
                moved += handle.get_tensor(key).nbytes
    return moved


def pread_loop(folder: str, shards: list[str], buf: mmap.mmap) -> int:
    """The header, then every tensor's bytes pread into one reused buffer."""
    buffer_size = len(buf)
    view = memoryview(buf)
    moved = 0
    for name in shards:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            (length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
            header = json.loads(os.pread(fd, length, 8))
            base = 8 + length
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                for at in range(base + begin, base + end, buffer_size):
                    n = min(buffer_size, base + end - at)
                    moved += os.preadv(fd, [view[:n]], at)
        finally:
            os.close(fd)
    return moved


# -- the harness -----------------------------------------------------------------------------------
def evict(folder: str) -> None:
    """Drop every shard of the model from the page cache."""
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return done.stdout


def mpibench_load(args: argparse.Namespace, ranks: int, root: str, case: str, out: str) -> dict[str, float]:
    """GB/s of mpibench's cold and warm load (one iteration: cold, then warm)."""
    storage = ["storage.type=direct_fs"] if case == "direct" else ["storage.type=local_fs", f"modelload.reader={case}"]
    path = os.path.join(out, f"ml-{time.monotonic_ns()}.json")
    run([MPIEXEC, "-n", str(ranks), MPIBENCH, "run", args.config, "-q", "-o", path, f"storage.root={root}",
         *storage, "modelload.iterations=1", f"modelload.scale={args.scale}", f"modelload.buffer_size={args.buffer}",
         "modelload.layout=replicated"])
    with open(path, encoding="utf-8") as handle:
        loads = json.load(handle)["modelload"]["loads"]
    os.unlink(path)
    return {r["load"]: r["bandwidth_GBps"] for r in loads}


def peer_load(args: argparse.Namespace, ranks: int, folder: str, case: str) -> dict[str, float]:
    """GB/s of the plain peer, cold (after eviction) then warm."""
    found = {}
    for load in ("cold", "warm"):
        if load == "cold":
            evict(folder)
        if case == "direct":
            files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))
            text = run(["fio", "--name=load", "--rw=read", "--ioengine=psync", "--direct=1", f"--bs={args.buffer}",
                        f"--numjobs={ranks}", "--group_reporting", "--output-format=json",
                        "--filename=" + ":".join(f.replace(":", "\\:") for f in files)])
            job = json.loads(text)["jobs"][0]["read"]
            found[load] = job["io_bytes"] / (job["runtime"] / 1e3) / 1e9
        else:
            text = run([MPIEXEC, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--peer",
                        "safe_open" if case == "mmap" else "pread", folder, "--buffer", str(args.buffer)])
            row = json.loads(text.strip().splitlines()[-1])
            found[load] = row["bytes"] / (row["end"] - row["start"]) / 1e9
    return found


def fuse_ratios(args: argparse.Namespace, root: str, ranks_list: list[int]) -> None:
    """mpibench's cold and warm GB/s through bindfs (cached and direct_io), args.reps iterations."""
    backing = os.path.join(root, "llama3-8b")
    print("\n| mount | reader | ranks | cold GB/s | warm GB/s | warm / cold |")
    print("|---|---|---|---|---|---|")
    for option in ([], ["-o", "direct_io"]):
        mount = tempfile.mkdtemp(prefix="fuse-", dir=args.workdir)
        os.mkdir(os.path.join(mount, "llama3-8b"))
        run(["bindfs", *option, backing, os.path.join(mount, "llama3-8b")])
        try:
            for reader in ("mmap", "read"):
                for ranks in ranks_list:
                    path = os.path.join(args.workdir, f"ml-fuse-{time.monotonic_ns()}.json")
                    run([MPIEXEC, "-n", str(ranks), MPIBENCH, "run", args.config, "-q", "-o", path,
                         f"storage.root={mount}", f"modelload.reader={reader}", f"modelload.iterations={args.reps}",
                         f"modelload.scale={args.scale}", f"modelload.buffer_size={args.buffer}",
                         f"modelload.backing_root={root}"])
                    with open(path, encoding="utf-8") as handle:
                        m = json.load(handle)["modelload"]
                    os.unlink(path)
                    cold, warm = m["cold"]["bandwidth_GBps"]["median"], m["warm"]["bandwidth_GBps"]["median"]
                    name = "bindfs -o direct_io" if option else "bindfs"
                    print(f"| {name} | {reader} | {ranks} | {cold:.3f} | {warm:.3f} | {warm / cold:.2f} |", flush=True)
        finally:
            subprocess.run(["fusermount", "-u", os.path.join(mount, "llama3-8b")], check=False)
            shutil.rmtree(mount, ignore_errors=True)


def device_truth(args: argparse.Namespace) -> None:
    """Cold and warm loads on ext4 on a loop device of its own, against its device counters."""
    image = os.path.join(args.workdir, f"modelload-loop-{os.getpid()}.img")
    mount = tempfile.mkdtemp(prefix="modelload-loop-", dir=args.workdir)
    with open(image, "wb") as handle:
        handle.truncate(args.loop * 2**20)
    device = run(["losetup", "--find", "--show", image]).strip()
    mounted = False
    try:
        run(["mkfs.ext4", "-q", device])
        run(["mount", device, mount])
        mounted = True
        print(f"ext4 on {device} ({args.loop} MiB image {image}) at {mount}", flush=True)
        common = [args.config, "-q", f"storage.root={mount}", f"modelload.buffer_size={args.buffer}"]
        run([MPIEXEC, "-n", "2", MPIBENCH, "run", *common, "workload=datagen", "storage.type=direct_fs",
             "-o", os.path.join(mount, "datagen.json")])
        print("\n| reader | storage | load | iteration | device read bytes | model bytes | device / model "
              "| needed bytes | device / needed | served from memory |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for reader, storage in (("mmap", "local_fs"), ("read", "local_fs"), ("direct", "direct_fs")):
            path = os.path.join(args.results or mount, f"modelload-loop-{reader}.json")
            run([MPIEXEC, "-n", "2", MPIBENCH, "run", *common, f"storage.type={storage}",
                 f"modelload.reader={reader}", "-o", path])
            with open(path, encoding="utf-8") as handle:
                m = json.load(handle)["modelload"]
            for r in m["loads"]:
                dev = r["device_read_bytes"]
                served = r["served_from_memory"] if r["load"] == "warm" else "-"
                print(f"| {reader} | {storage} | {r['load']} | {r['iteration']} | {dev} | {m['file_bytes']} | "
                      f"{dev / m['file_bytes']:.4f} | {r['storage_bytes_needed']} | "
                      f"{dev / r['storage_bytes_needed']:.4f} | {served} |", flush=True)
    finally:
        if mounted:
            subprocess.run(["umount", mount], check=False)
        subprocess.run(["losetup", "-d", device], check=False)
        os.unlink(image)
        shutil.rmtree(mount, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the model is written (removed after)")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "llama3-8b-load.yaml"))
    parser.add_argument("--scale", type=float, default=0.05, help="modelload.scale of the model (0.05: 0.75 GiB)")
    parser.add_argument("--buffer", type=int, default=64 * 2**20, help="bytes per read (modelload.buffer_size)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--cases", default="mmap,read,direct")
    parser.add_argument("--output", help="JSON file for every raw value")
    parser.add_argument("--fuse", action="store_true", help="warm / cold through bindfs mounts instead (root)")
    parser.add_argument("--loop", type=int, metavar="MIB",
                        help="the device-truth demo on ext4 on a loop device of MIB MiB instead (root)")
    parser.add_argument("--results", help="--loop: a folder to keep the result files in")
    parser.add_argument("--peer", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        peer_main(args.peer[0], args.peer[1], args.buffer)
        return
    load_before = open("/proc/loadavg").read().split()[:3]
    print(f"uptime load before: {' '.join(load_before)}", flush=True)
    if args.loop:
        device_truth(args)
        print(f"uptime load after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
        return
    root = tempfile.mkdtemp(prefix="modelload-peers-", dir=args.workdir)
    try:
        run([MPIEXEC, "-n", "2", MPIBENCH, "run", args.config, "-q", "workload=datagen", f"storage.root={root}",
             f"modelload.scale={args.scale}", "storage.type=direct_fs", f"modelload.buffer_size={args.buffer}",
             "-o", os.path.join(root, "datagen.json")])
        folder = os.path.join(root, "llama3-8b")
        cases = args.cases.split(",")
        ranks_list = [int(r) for r in args.ranks.split(",")]
        if args.fuse:
            fuse_ratios(args, root, ranks_list)
            print(f"uptime load after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
            return
        raw: dict[str, list[float]] = {}
        for rep in range(args.reps):
            order = cases[rep % len(cases):] + cases[:rep % len(cases)]
            for ranks in ranks_list:
                for case in order:
                    pair = [("mpibench", lambda c=case, r=ranks: mpibench_load(args, r, root, c, root)),
                            ("peer", lambda c=case, r=ranks: peer_load(args, r, folder, c))]
                    if rep % 2:
                        pair.reverse()
                    for tool, measure in pair:
                        for load, gbps in measure().items():
                            raw.setdefault(f"{case}|{ranks}|{load}|{tool}", []).append(gbps)
            print(f"repetition {rep + 1}/{args.reps} done", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = open("/proc/loadavg").read().split()[:3]
    peers = {"mmap": "safetensors safe_open", "read": "pread loop", "direct": "fio psync direct=1"}
    print(f"\nuptime load after: {' '.join(load_after)}")
    print("\n| case | ranks | load | mpibench GB/s | peer | peer GB/s | mpibench / peer |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        for ranks in ranks_list:
            for load in ("cold", "warm"):
                ours = statistics.median(raw[f"{case}|{ranks}|{load}|mpibench"])
                theirs = statistics.median(raw[f"{case}|{ranks}|{load}|peer"])
                print(f"| {case} | {ranks} | {load} | {ours:.3f} | {peers[case]} | {theirs:.3f} | {ours / theirs:.2f} |")
    for case in cases:
        for ranks in ranks_list:
            cold = statistics.median(raw[f"{case}|{ranks}|cold|mpibench"])
            warm = statistics.median(raw[f"{case}|{ranks}|warm|mpibench"])
            print(f"mpibench {case} at {ranks} rank(s): warm / cold = {warm / cold:.2f}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "load_before": load_before, "load_after": load_after, "raw": raw},
                      handle, indent=1)


if __name__ == "__main__":
    main()
