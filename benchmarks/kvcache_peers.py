#!/usr/bin/env python3
"""mpibench kvcache side by side with the MLPerf KV-cache reference's I/O, reproduced as a
plain loop, interleaved and repeated on the same directory.

    python benchmarks/kvcache_peers.py                       # 5 repetitions, 1 and 2 processes
    python benchmarks/kvcache_peers.py --reps 3 --duration 5 --workdir /scratch/me
    python benchmarks/kvcache_peers.py --reference /tmp/kvref/kv-cache.py   # + the reference tool

The plain loop is the reference's storage path (kv_cache_benchmark/kv-cache.py in
mlcommons/storage): per KV object `np.save` into a buffered file, flush and fsync at
prefill; `posix_fadvise(POSIX_FADV_DONTNEED)` then `np.load` at decode. It serves the very
requests mpibench serves: the same traffic model (mpibench.kvtraffic) with the same model,
users per process, seed, object layout and memory budget 0, the users split between the
same number of threads, for the same warm-up and measured seconds. Only the I/O differs:
mpibench writes and reads each object from reused page-aligned buffers through its
local_fs backend (fsync per object, the same DONTNEED before each read), the loop with
numpy's files.

Per run: tokens/s and read bandwidth (bytes / (last end - first start) over the
processes), p95 of the per-object read latency (the loop: the np.load span; mpibench: its
pooled histogram, open to close), client CPU per GB moved (getrusage of every process
over the measured window: all its threads), and the bytes the block device moved in that
window (/sys/block stat, the whole device: other processes on the machine count too).
A third tool, mpibench on direct_fs, gives the device bytes against mpibench's reported
bytes without a page cache in between. Client CPU is given in all and split into user
space and kernel (getrusage's user and system time).

With `--reference PATH` (kv_cache_benchmark/kv-cache.py of mlcommons/storage, fetched
into a folder outside this repository; `--reference-python` names a Python with numpy)
the reference tool itself runs as a further column, one process per client as its
wrapper runs it: the same model (tiny is its tiny-1b), users per process, seed (plus the
process index), directory, 0 GB GPU and CPU tiers so that everything goes to storage,
generation `none`, for the measured seconds (it has no warm-up). It keeps its own
traffic model (think times, one object per request's whole context, prefix and
multi-turn reads), so its figures are those a user of it gets on these settings: its
tokens / duration, the bytes it counts, the largest per-process NVMe read p95 (as it
reports a pooled p95); its client CPU is getrusage of its processes over their whole
life, start-up included, its device bytes the block counters over the same span.

Every repetition runs every tool and process count once, the order of the tools rotating;
the table gives the median and min-max of the repetitions and the ratio mpibench / loop of
medians. `uptime` load is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from mpibench.environment import block_delta, block_stat_path, read_block_stat
from mpibench.kvtraffic import MODELS, Layout, TrafficModel


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> tuple[float, float]:
    """(user, system) CPU seconds of this process (all its threads) or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime


def per_GB(user_s: float, system_s: float, moved: int) -> dict[str, float | None]:
    """Client CPU per GB moved, in all and split into user space and kernel."""
    if not moved:
        return {"cpu_s_per_GB": None, "user_s_per_GB": None, "system_s_per_GB": None}
    gb = moved / 1e9
    return {"cpu_s_per_GB": (user_s + system_s) / gb, "user_s_per_GB": user_s / gb, "system_s_per_GB": system_s / gb}


def loop_process(rank: int, args: argparse.Namespace, root: str, barrier: Any, results: Any) -> None:
    """One client of the plain loop: warm-up, then the measured window, as mpibench does."""
    layout = Layout(MODELS[args.model], "tokens", args.block_tokens, 1)
    model = TrafficModel(args.seed, rank, args.users, layout, max_context=args.max_context)
    folder = os.path.join(root, f"r{rank}")
    os.makedirs(folder, exist_ok=True)
    arrays: dict[int, np.ndarray] = {}
    workers = min(args.concurrency, args.users)
    stat = block_stat_path(root)

    def path(entry_id: int, block: int) -> str:
        return os.path.join(folder, f"e{entry_id}.{block}.npy")

    def run(seconds: float, stats: dict[str, Any] | None) -> None:
        deadline = time.perf_counter() + seconds

        def worker(slot: int) -> None:
            counts = {"read_bytes": 0, "write_bytes": 0, "requests": 0, "tokens": 0, "lat": []}
            mine = list(range(slot, args.users, workers))
            try:
                while time.perf_counter() < deadline:
                    for user in mine:
                        if time.perf_counter() >= deadline:
                            return
                        request = model.next_request(user)
                        for earlier in request.history:
                            read_entry(earlier, counts, deadline)
                        for block, size in enumerate(request.entry.sizes):
                            data = arrays.get(size)
                            if data is None:
                                data = arrays.setdefault(size, np.random.default_rng(size).integers(
                                    0, 255, size, dtype=np.uint8))
                            with open(path(request.entry.entry_id, block), "wb") as handle:
                                np.save(handle, data)
                                handle.flush()
                                os.fsync(handle.fileno())
                            counts["write_bytes"] += size
                        model.remember(request)
                        for _ in range(request.decode_reads):
                            read_entry(request.entry, counts, deadline)
                        counts["requests"] += 1
                        counts["tokens"] += request.output_tokens
            except TimeoutError:
                return
            finally:
                if stats is not None:
                    with lock:
                        for key, value in counts.items():
                            stats[key] = stats.get(key, [] if key == "lat" else 0) + value

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def read_entry(entry: Any, counts: dict[str, Any], deadline: float) -> None:
        for block in range(len(entry.sizes)):
            name = path(entry.entry_id, block)
            fd = os.open(name, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            start = time.perf_counter()
            if start >= deadline:
                raise TimeoutError
            data = np.load(name)
            counts["lat"].append(time.perf_counter() - start)
            counts["read_bytes"] += data.nbytes

    lock = threading.Lock()
    run(args.warmup, None)
    barrier.wait()
    before = read_block_stat(stat) if rank == 0 else {}
    stats: dict[str, Any] = {}
    cpu0, start = cpu_seconds(), time.time()
    run(args.duration, stats)
    end, cpu1 = time.time(), cpu_seconds()
    barrier.wait()
    device = block_delta(before, read_block_stat(stat)) if rank == 0 else {}
    stats.update(start=start, end=end, user_s=cpu1[0] - cpu0[0], system_s=cpu1[1] - cpu0[1], device=device)
    results.put(stats)
    shutil.rmtree(folder, ignore_errors=True)


def run_loop(args: argparse.Namespace, procs: int, root: str) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    children = [ctx.Process(target=loop_process, args=(r, args, root, barrier, results)) for r in range(procs)]
    for child in children:
        child.start()
    got = [results.get() for _ in children]
    for child in children:
        child.join()
    seconds = max(g["end"] for g in got) - min(g["start"] for g in got)
    lat = np.concatenate([np.asarray(g.get("lat", []), dtype=float) for g in got])
    moved = sum(g.get("read_bytes", 0) + g.get("write_bytes", 0) for g in got)
    device = next(g["device"] for g in got if g["device"])
    return {"tokens_per_s": sum(g.get("tokens", 0) for g in got) / seconds,
            "read_MiBps": sum(g.get("read_bytes", 0) for g in got) / seconds / 2**20,
            "read_p95_ms": float(np.percentile(lat, 95)) * 1e3 if lat.size else None,
            **per_GB(sum(g["user_s"] for g in got), sum(g["system_s"] for g in got), moved),
            "bytes": moved, "device_bytes": device["read_bytes"] + device["write_bytes"]}


def run_mpibench(args: argparse.Namespace, procs: int, root: str, kind: str) -> dict[str, Any]:
    out = os.path.join(root, "result.json")
    cmd = ["mpiexec", "-n", str(procs), sys.executable, "-m", "mpibench", "run", args.config, "-o", out,
           "--force", f"storage.type={kind}", f"storage.root={os.path.join(root, 'mpibench')}",
           "storage.create_parents=true", f"seed={args.seed}", f"kvcache.model={args.model}",
           f"kvcache.users={args.users}", f"kvcache.duration={args.duration}", f"kvcache.warmup={args.warmup}",
           f"kvcache.concurrency={args.concurrency}", f"kvcache.max_context={args.max_context}",
           f"kvcache.block_tokens={args.block_tokens}", "kvcache.memory_budget=0", "kvcache.grouping=tokens",
           "kvcache.verify=false", "kvcache.fsync=true"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out, encoding="utf-8") as handle:
        doc = json.load(handle)
    os.unlink(out)
    step = doc["kvcache"]["steps"][0]
    cpu = next(p["client_cpu"] for p in doc["phases"] if p.get("name") == "kvcache")
    moved = step["read_bytes"] + step["write_bytes"]
    device = step["device_bytes"] or {"read": 0, "write": 0}
    return {"tokens_per_s": step["tokens_per_s"], "read_MiBps": step["read_bytes"] / step["seconds"] / 2**20,
            "read_p95_ms": step["read_latency"]["p95_s"] * 1e3 if step["read_latency"]["count"] else None,
            **per_GB(cpu["user_s"], cpu["system_s"], moved), "bytes": moved,
            "device_bytes": device["read"] + device["write"]}


#: mpibench's model names that the reference spells otherwise.
REFERENCE_MODELS = {"tiny": "tiny-1b"}


def run_reference(args: argparse.Namespace, procs: int, root: str) -> dict[str, Any]:
    """The MLPerf reference tool itself (kv-cache.py), one process per client as its wrapper
    runs it: the same model, users per process, seed and directory, memory tiers of 0 GB
    (everything to storage), no generation time, for the measured seconds. Its own figures
    (tokens / duration, bytes it counts, the largest per-process NVMe read p95, as it
    reports a pooled figure); its CPU is getrusage of the waited-for processes over their
    whole life (start-up and its end-of-run statistics included), the device bytes the
    block counters' delta over the same span."""
    stat = block_stat_path(root)
    before, cpu0 = read_block_stat(stat), cpu_seconds(resource.RUSAGE_CHILDREN)
    children = []
    for rank in range(procs):
        cmd = [args.reference_python, args.reference, "--model", REFERENCE_MODELS.get(args.model, args.model),
               "--num-users", str(args.users), "--duration", str(max(1, round(args.duration))),
               "--gpu-mem-gb", "0", "--cpu-mem-gb", "0", "--cache-dir", os.path.join(root, f"r{rank}"),
               "--generation-mode", "none", "--seed", str(args.seed + rank),
               "--output", os.path.join(root, f"r{rank}.json")]
        log = open(os.path.join(root, f"r{rank}.log"), "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        children.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root), log))
    for child, log in children:
        if child.wait() != 0:
            log.close()
            with open(log.name, encoding="utf-8") as handle:
                raise SystemExit(f"the reference tool failed:\n{handle.read()[-2000:]}")
        log.close()
    cpu1, after = cpu_seconds(resource.RUSAGE_CHILDREN), read_block_stat(stat)
    device = block_delta(before, after)
    docs = []
    for rank in range(procs):
        with open(os.path.join(root, f"r{rank}.json"), encoding="utf-8") as handle:
            docs.append(json.load(handle)["summary"])
    seconds = max(1, round(args.duration))
    read = sum(d["cache_stats"]["total_read_bytes"] for d in docs)
    moved = read + sum(d["cache_stats"]["total_write_bytes"] for d in docs)
    p95 = [d["cache_stats"]["nvme_read_p95_ms"] for d in docs if "nvme_read_p95_ms" in d["cache_stats"]]
    return {"tokens_per_s": sum(d["total_tokens"] for d in docs) / seconds, "read_MiBps": read / seconds / 2**20,
            "read_p95_ms": max(p95) if p95 else None,
            **per_GB(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], moved), "bytes": moved,
            "device_bytes": device["read_bytes"] + device["write_bytes"]}


FIGURES = ("tokens_per_s", "read_MiBps", "read_p95_ms", "cpu_s_per_GB", "user_s_per_GB", "system_s_per_GB",
           "bytes", "device_bytes")
TOOLS = ("loop", "mpibench", "mpibench-direct", "reference")


def table(runs: dict[tuple[str, int], list[dict[str, Any]]], procs_list: list[int]) -> list[str]:
    lines = ["| processes | tool | tokens/s | read MiB/s | read p95 ms | client CPU s per GB moved | "
             "of it user | of it system | bytes moved (reported) | device bytes (block counters) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(values: list[float | None], fmt: str) -> str:
        vals = [v for v in values if v is not None]
        if not vals:
            return "-"
        return f"{statistics.median(vals):{fmt}} ({min(vals):{fmt}}-{max(vals):{fmt}})"

    for procs in procs_list:
        for tool in TOOLS:
            rows = runs.get((tool, procs), [])
            if not rows:
                continue
            fmts = (".1f", ".1f", ".1f", ".2f", ".2f", ".2f", ".3e", ".3e")
            lines.append(f"| {procs} | {tool} | " + " | ".join(
                cell([r[f] for r in rows], fmt) for f, fmt in zip(FIGURES, fmts, strict=True)) + " |")
        loop = runs.get(("loop", procs), [])
        mpib = runs.get(("mpibench", procs), [])
        if loop and mpib:
            ratio = []
            for f in FIGURES[:6]:
                a = [r[f] for r in mpib if r[f] is not None]
                b = [r[f] for r in loop if r[f] is not None]
                ratio.append(f"{statistics.median(a) / statistics.median(b):.2f}"
                             if a and b and statistics.median(b) else "-")
            lines.append(f"| {procs} | mpibench / loop | " + " | ".join(ratio) + " | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--procs", default="1,2", help="process (rank) counts")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--users", type=int, default=4, help="users per process")
    parser.add_argument("--concurrency", type=int, default=2, help="threads per process")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-direct", action="store_true", help="leave out mpibench on direct_fs")
    parser.add_argument("--reference", default=None, metavar="PATH",
                        help="the reference tool's kv-cache.py (kv_cache_benchmark/ in mlcommons/storage), "
                             "run as a further column; never part of this repository")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="the Python that runs --reference (it needs numpy)")
    parser.add_argument("--workdir", default=os.environ.get("MPIBENCH_TEST_DIR") or tempfile.gettempdir())
    parser.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                         "configs", "kvcache-tiny-quick.yaml"))
    parser.add_argument("--output", default=None, help="write every raw value as JSON here")
    args = parser.parse_args(argv)
    procs_list = [int(p) for p in args.procs.split(",")]
    tools = ["loop", "mpibench"] + ([] if args.no_direct else ["mpibench-direct"]) + (
        ["reference"] if args.reference else [])
    if args.reference and not os.path.isfile(args.reference):
        parser.error(f"--reference {args.reference}: no such file; fetch kv_cache_benchmark/kv-cache.py "
                     "of mlcommons/storage into a folder outside this repository")
    root = tempfile.mkdtemp(prefix="kvcache-peers-", dir=args.workdir)
    load = [os.getloadavg()]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for rep in range(args.reps):
            order = tools[rep % len(tools):] + tools[: rep % len(tools)]
            for procs in procs_list:
                for tool in order:
                    where = tempfile.mkdtemp(dir=root)
                    if tool == "loop":
                        got = run_loop(args, procs, where)
                    elif tool == "reference":
                        got = run_reference(args, procs, where)
                    else:
                        got = run_mpibench(args, procs, where, "direct_fs" if tool == "mpibench-direct" else "local_fs")
                    shutil.rmtree(where, ignore_errors=True)
                    runs.setdefault((tool, procs), []).append(got)
                    print(f"rep {rep} procs {procs} {tool}: " + ", ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in got.items()), flush=True)
            load.append(os.getloadavg())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("\n".join(table(runs, procs_list)))
    print(f"\nload average (1, 5, 15 min) before and after each repetition: {load}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "load": load,
                       "runs": {f"{t}/{p}": v for (t, p), v in runs.items()}}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
