#!/usr/bin/env python3
"""mpibench side by side with its peers, interleaved and repeated, on the same directory.

    python benchmarks/peers.py --quick          # a few minutes: every case, smaller sizes
    python benchmarks/peers.py                  # the full run of docs/performance.md
    python benchmarks/peers.py --cases seq,rand --ranks 1 --reps 7 --workdir /scratch/me

Cases (docs/performance.md says what each compares and why it is fair):

  seq    equal settings: mpibench bandwidth on direct_fs vs fio --direct=1 (psync and
         io_uring engines) and IOR (--ior PATH; -a POSIX --posix.odirect -F -e) at queue
         depth 1: sequential write then read, one file per rank, 1 and 2 ranks, transfer
         sizes 4 KiB, 64 KiB, 1 MiB, 16 MiB, the same bytes per rank.
  defaults  what a user gets with no tuning, the same files and sizes: mpibench with
         configs/bandwidth.yaml's defaults (io.depth and io.engine auto: see the result's
         auto_choices), fio's defaults (psync, depth 1, fallocate native, buffers
         scrambled) and IOR's (depth 1: it has no other), each told only O_DIRECT, one file
         per rank, fsync at the end, the transfer size and the bytes; none bound to a CPU
         (as a user launches them: mpibench's auto sizes from the CPUs its ranks may use).
  rand   4 KiB random reads at depth 16: mpibench bandwidth.access=random io.depth=16
         (io_uring; its thread engine and bare Python threads for reference) vs
         fio --rw=randread --ioengine=io_uring --iodepth=16.
  train  mpibench train on a direct_fs dataset (decode off, no compute) vs a plain Python
         loop reading the same files with O_DIRECT, with as many threads.
  s3     mpibench on s3 (a local SeaweedFS) vs raw s3dlio used sequentially, s3dlio and
         boto3 with 8 threads: PUT then GET of the same number of objects of one size.
         s3dlio sends one GET per read, as mpibench has it do (S3DLIO_SKIP_HEAD=1);
         s3dlio-seq-head is the sequential loop with s3dlio's default, a HEAD before
         each object's first GET.
         Also prints each tool's client CPU per object and the CPUs it kept busy.
         --s3-unsigned adds mpibench (storage.sign_payload=false) and s3dlio with
         unsigned PUT bodies;
         --s3-server-cpus 0 keeps the server on CPU 0 and the clients off it;
         --s3-client-cpu-quota 0.2 gives the clients together 0.2 CPUs' worth of time (a
         cgroup CPU quota; root) and the server the rest, so that each client's own CPU
         per request, not a server on the same cores, sets its pace.

Every repetition runs every case and, within a case, every tool once (the order of the
tools rotates from one repetition to the next); the table gives, per case and tool, the
median and the min-max of the repetitions, and the ratio mpibench / peer of medians (in
brackets the median of each repetition's own ratio, which a machine's slow drift moves less);
a target is judged on the ratio of medians.
Only what the run creates under --workdir is written (a fresh folder, removed at the end
unless --keep); results go to --output (JSON with every raw value) and --markdown.

Rank r of every tool runs on the same CPU (the r-th this script may use, round robin):
mpibench's ranks through `taskset` in an MPMD launch, fio's jobs with
--cpus_allowed_policy=split, the Python loops with sched_setaffinity. Which CPU a
process waits on moves its small-transfer figures by 10-20 % on some machines (the one
taking the disk's interrupts wakes it sooner), so leaving the placement to the scheduler
(--bind none) makes two tools differ by where they happened to run. The s3 case is not
bound: the server shares the CPUs.

Nothing is installed: a peer whose tool is missing (fio, its io_uring engine, boto3,
the weed server) is skipped with a message saying what to install.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import mmap
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1024, 1024**2, 1024**3
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "SLURM_")
TARGETS = {"seq": 1.0, "defaults": 1.0, "rand": 0.90, "train": 0.90}
IOR_BUILD = ("build IOR outside the project (never commit its code): mkdir -p /tmp/peers && tar xzf "
             "<shared>/peers/ior-src.tar.gz -C /tmp/peers && cd /tmp/peers/ior && ./bootstrap && "
             "./configure --prefix=/tmp/peers/inst MPICC=$(dirname $(which python))/mpicc && make -j2 install; "
             "then --ior /tmp/peers/inst/bin/ior")
SETTLE_S = 2.0
CPUS: list[int] = []  # --bind cpus: rank r of every tool runs on CPUS[r % len(CPUS)]; empty: not bound
HUGE = {"on": False}  # --huge-pages: every tool's I/O buffers in 2 MiB huge pages
HUGE_PAGE = 2 * MiB
# seq cases: the block device's requests per transfer, by "case tool phase" (its /sys counters,
# the whole device's): how many requests a transfer became, which its buffer's pages decide.
REQUESTS: dict[str, list[float]] = {}
#: defaults: "<case>" -> the auto_choices of mpibench's first run of it
CHOICES: dict[str, dict[str, Any]] = {}
#: s3: "<case> <tool> <phase>" -> client CPU microseconds per object, one value per repetition
CLIENT_CPU: dict[str, list[float]] = {}


def rank_cpu(rank: int) -> int | None:
    """The CPU rank `rank` of every tool is bound to, or None when nothing is bound."""
    return CPUS[rank % len(CPUS)] if CPUS else None


def bind_self() -> None:
    """In a worker process: run on the CPU the parent chose for it (PEERS_CPU)."""
    cpu = os.environ.get("PEERS_CPU")
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})


def worker_env(rank: int) -> dict[str, str]:
    cpu = rank_cpu(rank)
    return clean_env({"PEERS_CPU": str(cpu)} if cpu is not None else {})


def io_buffer(size: int) -> mmap.mmap:
    """A worker's I/O buffer: private anonymous memory, as mpibench's and fio's; in 2 MiB
    transparent huge pages when the parent ran with --huge-pages (PEERS_HUGE)."""
    if os.environ.get("PEERS_HUGE") != "1":
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = mmap.mmap(-1, -(-size // HUGE_PAGE) * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


# -- sizes of the full run and of --quick ---------------------------------------------------------
FULL = {
    "reps": 5,
    "seq_bytes": {4 * KiB: 128 * MiB, 64 * KiB: 512 * MiB, 1 * MiB: 1 * GiB, 16 * MiB: 1 * GiB},
    "rand_bytes": 256 * MiB,
    "train_files": 1024, "train_file_bytes": 1 * MiB, "train_threads": 4,
    "s3_objects": {1 * MiB: 128},
}
QUICK = {
    "reps": 3,
    "seq_bytes": {4 * KiB: 16 * MiB, 64 * KiB: 64 * MiB, 1 * MiB: 128 * MiB, 16 * MiB: 256 * MiB},
    "rand_bytes": 32 * MiB,
    "train_files": 128, "train_file_bytes": 1 * MiB, "train_threads": 4,
    "s3_objects": {1 * MiB: 64},
}


def hugetlb_free_bytes() -> int:
    """Bytes of reserved huge pages free now (/proc/meminfo), which fio --mem=shmhuge takes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    return int(fields.get("HugePages_Free", "0").split()[0]) * int(fields.get("Hugepagesize", "0 kB").split()[0]) * KiB


def size_text(n: int) -> str:
    """4096 -> '4KiB' (exact binary units, as mpibench's configs take them)."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n % unit == 0:
            return f"{n // unit}{name}"
    return str(n)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without an enclosing MPI launch's variables (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    if HUGE["on"]:
        env["PEERS_HUGE"] = "1"
    env.update(extra or {})
    return env


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 900,
        cwd: str | None = None) -> str:
    """Run a command; return its stdout, or raise with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or clean_env(), timeout=timeout,
                          cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n"
                           f"{proc.stderr.strip()[-2000:]}\n{proc.stdout.strip()[-1000:]}")
    return proc.stdout


# -- the tools ------------------------------------------------------------------------------------
class Tools:
    """What is installed, and the one-line reason for each peer that is not."""

    def __init__(self, workdir: Path, ior: str | None = None) -> None:
        self.skipped: dict[str, str] = {}
        self.ior = ior if ior and os.access(ior, os.X_OK) else None
        if not self.ior:
            self.skipped["ior"] = (f"{ior} is not an executable: " if ior else "no --ior PATH: ") + IOR_BUILD
        bindir = Path(sys.executable).parent
        self.mpiexec = str(bindir / "mpiexec") if (bindir / "mpiexec").exists() else shutil.which("mpiexec")
        if not self.mpiexec:
            raise SystemExit("mpiexec not found: install the project with pip install -e '.[mpich,test]'")
        self.taskset = shutil.which("taskset") or ""
        self.fio = shutil.which("fio")
        self.fio_version = ""
        self.fio_engines: list[str] = []
        if not self.fio:
            self.skipped["fio"] = "fio not found (Debian/Ubuntu: apt-get install fio)"
        else:
            self.fio_version = run([self.fio, "--version"]).strip()
            for engine in ("psync", "io_uring"):
                probe = workdir / f"probe-{engine}"
                probe.mkdir()
                try:
                    run([self.fio, "--name=probe", f"--directory={probe}", "--size=1m", "--bs=4k",
                         "--direct=1", f"--ioengine={engine}", "--rw=write", "--output-format=json"],
                        timeout=60)
                    self.fio_engines.append(engine)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    self.skipped[f"fio-{engine}"] = f"fio's {engine} engine does not work here: {str(exc)[:200]}"
                finally:
                    shutil.rmtree(probe, ignore_errors=True)
        try:
            import boto3  # noqa: F401
            self.boto3 = True
        except ImportError:
            self.boto3 = False
            self.skipped["boto3"] = "boto3 not installed (pip install boto3, or pip install -e '.[bench]')"
        try:
            from mpibench.s3server import find_weed
            find_weed()
            self.weed = True
        except Exception as exc:  # noqa: BLE001 - any reason means no local S3 server
            self.weed = False
            self.skipped["s3"] = f"no local S3 server: {exc}"


def settle(seconds: float) -> None:
    """Let the device finish what the previous tool left it (its writes, and on a
    filesystem mounted with `discard` the discards of the files it deleted, which are
    sent at the next journal commit: otherwise inside the next tool's timed fsync)."""
    os.sync()
    time.sleep(seconds)


# -- one measurement each -------------------------------------------------------------------------
def mpibench_run(tools: Tools, ranks: int, workdir: Path, config: str, overrides: list[str],
                 env: dict[str, str] | None = None, bind: bool = True,
                 prefix: list[str] | None = None) -> dict[str, Any]:
    """`mpiexec -n RANKS mpibench run CONFIG OVERRIDES --quiet`; the results document.

    Bound (CPUS set and `bind`): an MPMD launch, `-n 1 taskset -c CPU mpibench ... : ...`,
    so that rank r runs on rank_cpu(r) as fio's job r and the Python loops' process r do.
    `prefix` (e.g. a taskset command) goes before the whole launch.
    """
    out = workdir / f"result-{time.monotonic_ns()}.json"
    if HUGE["on"] and Path(config).name != "s3.yaml":
        overrides = [*overrides, "huge_pages=true"]
    command = [sys.executable, "-m", "mpibench", "run", config, *overrides, "--quiet", "--output", str(out)]
    cmd = [tools.mpiexec, "-n", str(ranks), *command]
    if CPUS and bind:
        cmd = [tools.mpiexec]
        for rank in range(ranks):
            cmd += [":"] * (rank > 0) + ["-n", "1", tools.taskset, "-c", str(rank_cpu(rank)), *command]
    run([*(prefix or []), *cmd], env=clean_env(env), cwd=str(workdir))
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink()


def phase_bw(doc: dict[str, Any], name: str) -> float:
    """MiB/s of the first phase called `name` in a results document."""
    return next(p["bandwidth_MiBps"] for p in doc["phases"] if p["name"] == name)


def fio_run(tools: Tools, args: list[str]) -> dict[str, Any]:
    """One fio job group (JSON output); its aggregate MiB/s per direction."""
    doc = json.loads(run([tools.fio, "--output-format=json", "--group_reporting", *args]))
    job = doc["jobs"][0]
    return {"write": job["write"]["bw_bytes"] / MiB, "read": job["read"]["bw_bytes"] / MiB}


def fio_common(directory: Path, ranks: int, engine: str, transfer: int, nbytes: int) -> list[str]:
    bound = [f"--cpus_allowed={','.join(map(str, CPUS))}", "--cpus_allowed_policy=split"] if CPUS else []
    return [f"--directory={directory}", f"--numjobs={ranks}", f"--ioengine={engine}", "--direct=1",
            f"--bs={transfer}", f"--size={nbytes}", "--fallocate=none", *bound,
            *(["--mem=shmhuge"] if HUGE["on"] else [])]


def device_requests(path: Path) -> tuple[int, int]:
    """Reads and writes completed by the block device holding `path` ((0, 0) where unknown)."""
    from mpibench.environment import block_stat_path

    stat = block_stat_path(str(path))
    if stat is None:
        return 0, 0
    fields = Path(stat).read_text().split()
    return int(fields[0]), int(fields[4])


def note_requests(case: str, tool: str, phase: str, requests: int, transfers: int) -> None:
    if requests > 0:
        REQUESTS.setdefault(f"{case} {tool} {phase}", []).append(requests / transfers)


def seq_mpibench(tools: Tools, work: Path, ranks: int, transfer: int, nbytes: int) -> dict[str, float]:
    doc = mpibench_run(tools, ranks, work, str(REPO / "configs" / "bandwidth.yaml"), [
        "storage.type=direct_fs", f"storage.root={work / 'data'}", f"bandwidth.transfer_size={transfer}",
        f"bandwidth.block_size={nbytes}", "bandwidth.iterations=1", "bandwidth.reorder_reads=false",
        "io.depth=1", "bandwidth.fsync=true", "bandwidth.file_mode=per_rank"])
    case = f"seq {size_text(transfer)} {ranks}r"
    for phase in doc["phases"]:
        device = phase["hosts"][0].get("block_device") or {}
        count = device.get("writes" if phase["name"] == "write" else "reads", 0)
        note_requests(case, "mpibench", phase["name"], count, ranks * nbytes // transfer)
    return {"write": phase_bw(doc, "write"), "read": phase_bw(doc, "read")}


def seq_fio(tools: Tools, work: Path, engine: str, ranks: int, transfer: int, nbytes: int) -> dict[str, float]:
    directory = work / "data" / f"fio-{engine}"
    directory.mkdir(parents=True)
    try:
        common = fio_common(directory, ranks, engine, transfer, nbytes)
        # --scramble_buffers=0: fio's default rewrites every 512 bytes of its buffer before each
        # write, which cost it 21-27 % at 1 MiB here (docs/runs/2026-12-05-peers-journal.md); the peer runs at its fastest.
        before = device_requests(work)
        wrote = fio_run(tools, ["--name=seq", "--rw=write", "--iodepth=1", "--end_fsync=1",
                                "--scramble_buffers=0", *common])
        middle = device_requests(work)
        read = fio_run(tools, ["--name=seq", "--rw=read", "--iodepth=1", *common])
        after = device_requests(work)
        case, transfers = f"seq {size_text(transfer)} {ranks}r", ranks * nbytes // transfer
        note_requests(case, f"fio-{engine}", "write", middle[1] - before[1], transfers)
        note_requests(case, f"fio-{engine}", "read", after[0] - middle[0], transfers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"write": wrote["write"], "read": read["read"]}


def ior_run(tools: Tools, ranks: int, args: list[str], bind: bool = True) -> dict[str, float]:
    """`mpiexec -n RANKS ior ARGS` (bound as mpibench's ranks are, unless not `bind`); MiB/s
    per direction, IOR's own figure: bytes over the slowest rank's open to close."""
    command = [tools.ior, *args, "-O", "summaryFormat=JSON"]
    cmd = [tools.mpiexec, "-n", str(ranks), *command]
    if CPUS and bind:
        cmd = [tools.mpiexec]
        for rank in range(ranks):
            cmd += [":"] * (rank > 0) + ["-n", "1", tools.taskset, "-c", str(rank_cpu(rank)), *command]
    out = run(cmd)
    doc = json.loads(out[out.index("{"):])
    return {s["operation"]: s["bwMeanMIB"] for s in doc["summary"]}


def seq_ior(tools: Tools, work: Path, ranks: int, transfer: int, nbytes: int, case: str,
            bind: bool = True) -> dict[str, float]:
    """IOR file per process, O_DIRECT, fsync at the end of the write, read back (its defaults
    otherwise: POSIX, depth 1, no reordering, one repetition)."""
    directory = work / "data" / "ior"
    directory.mkdir(parents=True)
    try:
        before = device_requests(work)
        got = ior_run(tools, ranks, ["-a", "POSIX", "--posix.odirect", "-F", "-e", "-w", "-r",
                                     "-t", str(transfer), "-b", str(nbytes), "-o", str(directory / "testfile")],
                      bind=bind)
        after = device_requests(work)
        transfers = ranks * nbytes // transfer
        note_requests(case, "ior", "write+read", (after[0] - before[0]) + (after[1] - before[1]), 2 * transfers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"write": got["write"], "read": got["read"]}


def defaults_mpibench(tools: Tools, work: Path, ranks: int, transfer: int, nbytes: int) -> dict[str, float]:
    """mpibench with the shipped bandwidth config's defaults; told only the storage, the
    sizes and one iteration (io_depth, engine, preallocation: auto). Not bound, as a user
    launches it: `auto` sizes from the CPUs the ranks may use."""
    doc = mpibench_run(tools, ranks, work, str(REPO / "configs" / "bandwidth.yaml"), [
        "storage.type=direct_fs", f"storage.root={work / 'data'}", f"bandwidth.transfer_size={transfer}",
        f"bandwidth.block_size={nbytes}", "bandwidth.iterations=1"], bind=False)
    CHOICES.setdefault(f"defaults {size_text(transfer)} {ranks}r", doc.get("auto_choices", {}))
    return {"write": phase_bw(doc, "write"), "read": phase_bw(doc, "read")}


def defaults_fio(tools: Tools, work: Path, ranks: int, transfer: int, nbytes: int) -> dict[str, float]:
    """fio at its defaults (psync, iodepth 1, fallocate native, buffers scrambled), told only
    O_DIRECT, the sizes, the jobs and an fsync at the end of the write; not bound."""
    directory = work / "data" / "fio-defaults"
    directory.mkdir(parents=True)
    try:
        common = [f"--directory={directory}", f"--numjobs={ranks}", "--direct=1", f"--bs={transfer}",
                  f"--size={nbytes}"]
        wrote = fio_run(tools, ["--name=seq", "--rw=write", "--end_fsync=1", *common])
        read = fio_run(tools, ["--name=seq", "--rw=read", *common])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"write": wrote["write"], "read": read["read"]}


def rand_mpibench(tools: Tools, work: Path, ranks: int, nbytes: int, engine: str) -> dict[str, float]:
    doc = mpibench_run(tools, ranks, work, str(REPO / "configs" / "bandwidth.yaml"), [
        "storage.type=direct_fs", f"storage.root={work / 'data'}", "bandwidth.transfer_size=4KiB",
        f"bandwidth.block_size={nbytes}", "bandwidth.iterations=1", "bandwidth.reorder_reads=false",
        "io.depth=16", "bandwidth.access=random", "bandwidth.fsync=true",
        f"io.engine={engine}"])
    if engine != "auto" and doc["environment"]["io_engine"] != engine:
        raise SystemExit(f"mpibench ran io_engine {doc['environment']['io_engine']}, not {engine}")
    return {"randread": phase_bw(doc, "read")}


def rand_fio(tools: Tools, work: Path, ranks: int, nbytes: int) -> dict[str, float]:
    directory = work / "data" / "fio-rand"
    directory.mkdir(parents=True)
    try:
        # Lay the files out with plain 1 MiB writes, then read them back in random 4 KiB blocks.
        fio_run(tools, ["--name=rand", "--rw=write", "--iodepth=1", "--end_fsync=1",
                        *fio_common(directory, ranks, "psync", 1 * MiB, nbytes)])
        read = fio_run(tools, ["--name=rand", "--rw=randread", "--iodepth=16",
                               *fio_common(directory, ranks, "io_uring", 4 * KiB, nbytes)])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"randread": read["read"]}


def rand_python_threads(work: Path, ranks: int, nbytes: int) -> dict[str, float]:
    """The floor of CPython threads: 16 threads per rank doing bare os.preadv of random 4 KiB."""
    directory = work / "data" / "py-rand"
    directory.mkdir(parents=True)
    try:
        block = bytes(1 * MiB)
        for rank in range(ranks):
            fd = os.open(directory / f"rank-{rank}", os.O_WRONLY | os.O_CREAT, 0o644)
            for offset in range(0, nbytes, MiB):
                os.pwrite(fd, block, offset)
            os.fsync(fd)
            os.close(fd)
        start_at = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, __file__, "_worker", "pyrand", str(directory / f"rank-{rank}"),
                                   "16", str(start_at), str(rank)], stdout=subprocess.PIPE, text=True,
                                  env=worker_env(rank)) for rank in range(ranks)]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"python threads loop exited {proc.returncode}")
            results.append(json.loads(out))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"randread": sum(r["bytes"] for r in results) / MiB / span}


def worker_pyrand(path: str, threads: int, start_at: float, seed: int) -> None:
    """Random 4 KiB O_DIRECT reads of every block of `path` by `threads` threads, no bookkeeping."""
    import numpy as np

    bind_self()
    count = os.path.getsize(path) // (4 * KiB)
    offsets = (np.random.default_rng(seed).permutation(count) * (4 * KiB)).tolist()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    shared = iter(offsets)

    def read(slot: int) -> None:
        views = [memoryview(io_buffer(4 * KiB))]
        preadv = os.preadv
        for offset in shared:
            preadv(fd, views, offset)

    time.sleep(max(0.0, start_at - time.time()))
    start = time.time()
    workers = [threading.Thread(target=read, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    end = time.time()
    os.close(fd)
    print(json.dumps({"bytes": count * 4 * KiB, "start": start, "end": end}))


# -- train: mpibench train vs a plain O_DIRECT read loop ---------------------------------------------
def train_overrides(work: Path, sizes: dict[str, Any], threads: int) -> list[str]:
    return ["storage.type=direct_fs", f"storage.root={work / 'dataset'}", "dataset.name=peers",
            "dataset.format=raw", f"dataset.num_files={sizes['train_files']}", "dataset.samples_per_file=1",
            f"dataset.record_size={sizes['train_file_bytes']}", "dataset.record_size_stdev=0",
            "train.epochs=1", "train.batch_size=1", f"train.read_threads={threads}", "train.shuffle='off'",
            "train.computation_time=0", "train.decode=false", "train.prefetch=8"]


def train_prepare(tools: Tools, work: Path, sizes: dict[str, Any]) -> None:
    """Generate the dataset once (not timed): raw files of train_file_bytes."""
    (work / "dataset").mkdir(exist_ok=True)
    mpibench_run(tools, 2, work, str(REPO / "configs" / "unet3d-quick.yaml"),
                 ["workload=datagen", *train_overrides(work, sizes, 1)], bind=False)


def train_mpibench(tools: Tools, work: Path, ranks: int, sizes: dict[str, Any]) -> dict[str, float]:
    doc = mpibench_run(tools, ranks, work, str(REPO / "configs" / "unet3d-quick.yaml"),
                       ["workload=train", *train_overrides(work, sizes, sizes["train_threads"])])
    return {"read": phase_bw(doc, "train")}


def train_plain(work: Path, ranks: int, sizes: dict[str, Any]) -> dict[str, float]:
    """`ranks` processes, each reading its contiguous share of the files with `threads` threads."""
    folder = work / "dataset" / "peers"
    start_at = time.time() + 1.5  # every process starts reading at the same moment, as after a barrier
    procs = [subprocess.Popen([sys.executable, __file__, "_worker", "plainread", str(folder), str(rank),
                               str(ranks), str(sizes["train_threads"]), str(start_at)],
                              stdout=subprocess.PIPE, text=True, env=worker_env(rank))
             for rank in range(ranks)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"plain read loop exited {proc.returncode}")
        results.append(json.loads(out))
    total = sum(r["bytes"] for r in results)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"read": total / MiB / span}


def worker_plainread(folder: str, rank: int, ranks: int, threads: int, start_at: float) -> None:
    """A plain loop: open(O_DIRECT), preadv the whole file into an aligned buffer, close."""
    bind_self()
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    base, extra = divmod(len(names), ranks)
    first = rank * base + min(rank, extra)
    mine = [os.path.join(folder, n) for n in names[first:first + base + (rank < extra)]]
    size = max(os.path.getsize(p) for p in mine)
    buffers = [io_buffer(-(-size // 4096) * 4096 + 4096) for _ in range(threads)]
    shared = iter(mine)
    moved = [0] * threads

    def read_files(slot: int) -> None:
        buf = buffers[slot]
        whole = [memoryview(buf)]
        total = 0
        for path in shared:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                n = os.preadv(fd, whole, 0)  # the buffer is larger than any file: one call
                if n == len(buf):
                    raise SystemExit(f"{path} is larger than {len(buf)} bytes")
                total += n
            finally:
                os.close(fd)
        moved[slot] = total

    time.sleep(max(0.0, start_at - time.time()))
    start = time.time()
    workers = [threading.Thread(target=read_files, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    end = time.time()
    print(json.dumps({"bytes": sum(moved), "start": start, "end": end, "files": len(mine)}))


# -- s3: mpibench vs raw s3dlio and boto3 ------------------------------------------------------------
class ClientCpuQuota:
    """A CPU budget for the s3 clients (--s3-client-cpu-quota): a cgroup whose processes
    together get `cpus` CPUs' worth of time per 100 ms (CFS bandwidth control), so that a
    client's own CPU per request sets its pace, not a server sharing the machine's cores.

    Every client process (mpiexec and its ranks, the peers' Python) starts in it through
    `prefix`; the server and this script stay outside. cgroup v2 (cpu.max) or v1
    (cpu.cfs_quota_us); needs the right to create a cgroup (root, usually)."""

    PERIOD_US = 100_000

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus
        quota = round(cpus * self.PERIOD_US)
        name = f"mpibench-peers-{os.getpid()}"
        try:
            base, version = self._cpu_hierarchy()
            self.path = base / name
            self.path.mkdir()
            if version == 2:
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}\n")
            else:
                (self.path / "cpu.cfs_period_us").write_text(f"{self.PERIOD_US}\n")
                (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        except (OSError, LookupError) as exc:
            self.remove()
            raise SystemExit(f"--s3-client-cpu-quota {cpus:g}: cannot create a cgroup with a CPU quota "
                             f"({exc}); run as root on a machine with the cgroup cpu controller, or "
                             "leave the option out") from None
        # `sh -c SCRIPT PROCS command...`: $0 is the cgroup.procs file, "$@" the command.
        self.prefix = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    @staticmethod
    def _cpu_hierarchy() -> tuple[Path, int]:
        """Our cgroup in the hierarchy holding the cpu controller, and that hierarchy's version."""
        own: dict[str, str] = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path.lstrip("/")
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, mount, fstype, options = line.split()[:4]
            if fstype == "cgroup" and "cpu" in options.split(",") and "cpu" in own:
                return Path(mount) / own["cpu"], 1
            if fstype == "cgroup2" and "" in own:
                base = Path(mount) / own[""]
                if "cpu" in (Path(mount) / "cgroup.controllers").read_text().split():
                    enabled = base / "cgroup.subtree_control"
                    if "cpu" not in enabled.read_text().split():
                        enabled.write_text("+cpu\n")
                    return base, 2
        raise LookupError("no cgroup hierarchy with the cpu controller is mounted")

    def remove(self) -> None:
        """Remove the cgroup (its processes have all ended by then)."""
        path = getattr(self, "path", None)
        if path is not None and path.is_dir():
            try:
                path.rmdir()
            except OSError as exc:
                print(f"warning: could not remove the cgroup {path}: {exc}", flush=True)


class S3Session:
    """A local SeaweedFS for the s3 case, with a bucket; stopped at the end."""

    BUCKET = "peers"

    def __init__(self, work: Path, server_cpus: list[int] | None = None, taskset: str = "",
                 client_cpu_quota: float = 0.0) -> None:
        """With `server_cpus`, the server runs on those CPUs and the s3 clients on the others
        (through `taskset`): on a machine with cores to spare this keeps the two from taking
        each other's CPU, as with a server on its own machines. With `client_cpu_quota`, the
        clients share that many CPUs' worth of time (ClientCpuQuota) and the server has the rest."""
        from mpibench.s3server import LocalS3Server

        self.client_prefix: list[str] = []
        self.shared_buffer = False  # --s3-shared-buffer: the peers' threads all send one buffer
        mine = os.sched_getaffinity(0)
        if server_cpus:
            clients = sorted(mine - set(server_cpus))
            if not set(server_cpus) <= mine or not clients or not taskset:
                raise SystemExit(f"--s3-server-cpus {','.join(map(str, server_cpus))}: give some of the CPUs "
                                 f"{','.join(map(str, sorted(mine)))} and leave at least one for the clients "
                                 "(taskset from util-linux is needed)")
            self.client_prefix = [taskset, "-c", ",".join(map(str, clients))]
            os.sched_setaffinity(0, server_cpus)  # the server inherits it
        self.quota: ClientCpuQuota | None = None
        try:
            if client_cpu_quota:
                self.quota = ClientCpuQuota(client_cpu_quota)
                self.client_prefix = [*self.quota.prefix, *self.client_prefix]
            self.server = LocalS3Server(data_dir=work / "s3-server").start()
        except BaseException:
            if self.quota is not None:
                self.quota.remove()
            raise
        finally:
            os.sched_setaffinity(0, mine)
        self.server.create_bucket(self.BUCKET)
        self.env = self.server.env()

    def stop(self) -> None:
        self.server.stop()
        if self.quota is not None:
            self.quota.remove()


def s3_cpu(case: str, tool: str, cpu_us: dict[str, float]) -> None:
    for phase, value in cpu_us.items():
        CLIENT_CPU.setdefault(f"{case} {tool} {phase}", []).append(value)


def s3_client_cpus(cases: list[dict[str, Any]], raw: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, float]:
    """Per "<case> <tool> <phase>" of CLIENT_CPU: the median over the repetitions of the CPUs the
    client kept busy, its objects per second times its CPU seconds per object."""
    busy: dict[str, float] = {}
    for case in cases:
        if case["kind"] != "s3":
            continue
        for tool, phases in raw[case["name"]].items():
            for phase, rates in phases.items():
                key = f"{case['name']} {tool} {phase}"
                if key in CLIENT_CPU:
                    busy[key] = statistics.median(rate * MiB / case["object_bytes"] * us / 1e6
                                                  for rate, us in zip(rates, CLIENT_CPU[key], strict=True))
    return busy


def s3_mpibench(tools: Tools, work: Path, s3: S3Session, size: int, count: int, depth: int,
                case: str, tool: str, signed: bool = True) -> dict[str, float]:
    doc = mpibench_run(tools, 1, work, str(REPO / "configs" / "s3.yaml"), [
        f"storage.root=s3://{S3Session.BUCKET}/mpibench", f"bandwidth.transfer_size={size}",
        f"bandwidth.object_size={size}", f"bandwidth.block_size={size * count}", "bandwidth.iterations=1",
        "bandwidth.reorder_reads=false", f"io.depth={depth}",
        f"storage.sign_payload={str(signed).lower()}"], env=s3.env, bind=False, prefix=s3.client_prefix)
    phases = {"put": "write", "get": "read"}
    found = {ours: next(p for p in doc["phases"] if p["name"] == name) for ours, name in phases.items()}
    s3_cpu(case, tool, {ours: (p["client_cpu"]["user_s"] + p["client_cpu"]["system_s"]) / p["ops"] * 1e6
                        for ours, p in found.items()})
    return {ours: p["bandwidth_MiBps"] for ours, p in found.items()}


def s3_peer(s3: S3Session, client: str, threads: int, size: int, count: int, case: str, tool: str,
            signed: bool = True, head: bool = False) -> dict[str, float]:
    # As in mpibench's processes (mpibench/__init__.py): no OpenBLAS thread per core; and,
    # as mpibench sets it (backends/s3.py), s3dlio's get sends one GET, not a HEAD and a GET
    # (`head`: s3dlio's default, the size asked for before each object's first GET).
    env = {**s3.env, "S3DLIO_UNSIGNED_PAYLOAD": "0" if signed else "1", "OPENBLAS_NUM_THREADS": "1",
           "S3DLIO_SKIP_HEAD": "0" if head else "1"}
    out = json.loads(run([*s3.client_prefix, sys.executable, __file__, "_worker", client, S3Session.BUCKET,
                          str(threads), str(size), str(count), *(["shared"] if s3.shared_buffer else [])],
                         env=clean_env(env), timeout=900))
    s3_cpu(case, tool, out.pop("cpu_us"))
    return out


def worker_s3(client: str, bucket: str, threads: int, size: int, count: int, shared: bool = False) -> None:
    """PUT `count` objects of `size` random bytes, then GET them; MiB/s of each, then DELETE.

    Each thread sends from a buffer of its own, as each of mpibench's I/O threads does
    (and each fio job); with `shared`, all threads send one buffer, which stays in the
    CPU's caches and costs a fifth less client CPU per PUT at 8 threads (docs/runs/2026-12-05-peers-journal.md)."""
    import numpy as np

    prefix = f"peer-{client}-{os.getpid()}"
    keys = [f"{prefix}/obj-{i:06d}" for i in range(count)]
    sources = []
    for seed in range(1 if shared else threads):
        buf = mmap.mmap(-1, size)
        np.frombuffer(buf, dtype=np.uint8)[:] = np.random.default_rng(seed + 1).integers(0, 256, size, dtype=np.uint8)
        sources.append(buf)
    source = sources[0]
    mine = threading.local()
    taken = iter(range(len(sources)))  # the next thread's buffer (each is handed out once, under the GIL)

    def own(items: list[Any]) -> Any:
        """This thread's item of `items`: its own buffer or body (the one shared, with `shared`)."""
        if len(items) == 1:
            return items[0]
        if not hasattr(mine, "slot"):
            mine.slot = next(taken)
        return items[mine.slot]

    if client == "s3dlio":
        import s3dlio

        uris = [f"s3://{bucket}/{k}" for k in keys]
        s3dlio.stat  # noqa: B018 - imported; settings are read at the first call below

        def put(i: int) -> int:
            s3dlio.put_bytes(uris[i], own(sources))
            return size

        def get(i: int) -> int:
            return len(s3dlio.get(uris[i]))

        def delete(i: int) -> None:
            s3dlio.delete(uris[i])
    else:
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", config=Config(max_pool_connections=max(10, threads)))
        bodies = [bytes(buf) for buf in sources]
        body = bodies[0]

        def put(i: int) -> int:
            s3.put_object(Bucket=bucket, Key=keys[i], Body=own(bodies))
            return size

        def get(i: int) -> int:
            return len(s3.get_object(Bucket=bucket, Key=keys[i])["Body"].read())

        def delete(i: int) -> None:
            s3.delete_object(Bucket=bucket, Key=keys[i])

    # Untimed first: the client's set-up (credentials, connection, s3dlio's runtime) happens
    # at its first request; mpibench's happens in its preflight, before its timed phases.
    warm = f"{prefix}/warm-up"
    if client == "s3dlio":
        s3dlio.put_bytes(f"s3://{bucket}/{warm}", source)
        s3dlio.get(f"s3://{bucket}/{warm}")
        s3dlio.delete(f"s3://{bucket}/{warm}")
    else:
        s3.put_object(Bucket=bucket, Key=warm, Body=body)
        s3.get_object(Bucket=bucket, Key=warm)["Body"].read()
        s3.delete_object(Bucket=bucket, Key=warm)
    cpu_us: dict[str, float] = {}

    def timed(name: str, op: Any) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        if threads == 1:
            moved = sum(op(i) for i in range(count))
        else:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                moved = sum(pool.map(op, range(count)))
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        assert moved == size * count, (moved, size * count)
        cpu_us[name] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / count * 1e6
        return moved / MiB / seconds

    result: dict[str, Any] = {"put": timed("put", put), "get": timed("get", get), "cpu_us": cpu_us}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(delete, range(count)))
    print(json.dumps(result))


# -- the run --------------------------------------------------------------------------------------
def machine_info(workdir: Path, tools: Tools) -> dict[str, Any]:
    from mpibench.buffers import transparent_huge_pages
    from mpibench.environment import filesystem_of

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mpi = run([tools.mpiexec, "--version"]).splitlines()
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory_GiB": round(mem / GiB, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "filesystem": filesystem_of(str(workdir)), "fio": tools.fio_version,
            "mpiexec": next((line.strip() for line in mpi if "Version" in line), mpi[0] if mpi else ""),
            # which pages a buffer gets moves the large-transfer figures (docs/runs/2026-12-05-peers-journal.md, I/O buffers)
            "transparent_huge_pages": transparent_huge_pages() or "none",
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def build_cases(args: argparse.Namespace, sizes: dict[str, Any], tools: Tools) -> list[dict[str, Any]]:
    """Every (case, tools) of the run, in the order one repetition runs them."""
    cases: list[dict[str, Any]] = []
    fio_engines = [e for e in tools.fio_engines]
    if "seq" in args.cases:
        for ranks in args.ranks:
            for transfer, nbytes in sizes["seq_bytes"].items():
                if args.transfer_sizes and transfer not in args.transfer_sizes:
                    continue
                tools_of = {"mpibench": lambda w, r=ranks, t=transfer, n=nbytes: seq_mpibench(tools, w, r, t, n)}
                for engine in fio_engines:
                    tools_of[f"fio-{engine}"] = (lambda w, e=engine, r=ranks, t=transfer, n=nbytes:
                                                 seq_fio(tools, w, e, r, t, n))
                name = f"seq {size_text(transfer)} {ranks}r"
                if tools.ior:
                    tools_of["ior"] = lambda w, r=ranks, t=transfer, n=nbytes, c=name: seq_ior(tools, w, r, t, n, c)
                cases.append({"kind": "seq", "name": name,
                              "ranks": ranks, "transfer": transfer, "bytes_per_rank": nbytes,
                              "tools": tools_of, "peers": [f"fio-{e}" for e in fio_engines] + ["ior"] * bool(tools.ior)})
    if "defaults" in args.cases:
        for ranks in args.ranks:
            for transfer, nbytes in sizes["seq_bytes"].items():
                if args.transfer_sizes and transfer not in args.transfer_sizes:
                    continue
                name = f"defaults {size_text(transfer)} {ranks}r"
                tools_of = {"mpibench-defaults": lambda w, r=ranks, t=transfer, n=nbytes:
                            defaults_mpibench(tools, w, r, t, n)}
                peers = []
                if tools.fio:
                    tools_of["fio-defaults"] = lambda w, r=ranks, t=transfer, n=nbytes: defaults_fio(tools, w, r, t, n)
                    peers.append("fio-defaults")
                if tools.ior:
                    tools_of["ior"] = lambda w, r=ranks, t=transfer, n=nbytes, c=name: seq_ior(tools, w, r, t, n, c,
                                                                                                bind=False)
                    peers.append("ior")
                cases.append({"kind": "defaults", "name": name, "ranks": ranks, "transfer": transfer,
                              "bytes_per_rank": nbytes, "tools": tools_of, "peers": peers,
                              "ours": "mpibench-defaults"})
    if "rand" in args.cases:
        for ranks in args.ranks:
            # mpibench's default engine (io_uring where available) and, for reference, its threads
            tools_of = {"mpibench": lambda w, r=ranks: rand_mpibench(tools, w, r, sizes["rand_bytes"], "auto"),
                        "mpibench-threads": lambda w, r=ranks: rand_mpibench(tools, w, r, sizes["rand_bytes"],
                                                                             "threads")}
            if "io_uring" in fio_engines:
                tools_of["fio-io_uring"] = lambda w, r=ranks: rand_fio(tools, w, r, sizes["rand_bytes"])
            tools_of["python-threads"] = lambda w, r=ranks: rand_python_threads(w, r, sizes["rand_bytes"])
            cases.append({"kind": "rand", "name": f"rand 4KiB qd16 {ranks}r", "ranks": ranks,
                          "transfer": 4 * KiB, "bytes_per_rank": sizes["rand_bytes"], "tools": tools_of,
                          "peers": ["fio-io_uring"] if "io_uring" in fio_engines else []})
    if "train" in args.cases:
        for ranks in args.ranks:
            cases.append({"kind": "train", "name": f"train {size_text(sizes['train_file_bytes'])} files "
                                                   f"{sizes['train_threads']}thr {ranks}r",
                          "ranks": ranks, "files": sizes["train_files"],
                          "file_bytes": sizes["train_file_bytes"], "threads": sizes["train_threads"],
                          "tools": {"mpibench": lambda w, r=ranks: train_mpibench(tools, w, r, sizes),
                                    "plain-loop": lambda w, r=ranks: train_plain(w, r, sizes)},
                          "peers": ["plain-loop"]})
    if "s3" in args.cases and tools.weed:
        for size, count in sizes["s3_objects"].items():
            name = f"s3 {size_text(size)} objects x{count}"
            tools_of = {
                "mpibench-qd1": lambda w, s=size, c=count, n=name: s3_mpibench(tools, w, args.s3, s, c, 1, n,
                                                                                "mpibench-qd1"),
                "mpibench-qd8": lambda w, s=size, c=count, n=name: s3_mpibench(tools, w, args.s3, s, c, 8, n,
                                                                                "mpibench-qd8"),
                "s3dlio-seq": lambda w, s=size, c=count, n=name: s3_peer(args.s3, "s3dlio", 1, s, c, n, "s3dlio-seq"),
                "s3dlio-seq-head": lambda w, s=size, c=count, n=name: s3_peer(args.s3, "s3dlio", 1, s, c, n,
                                                                              "s3dlio-seq-head", head=True),
                "s3dlio-8thr": lambda w, s=size, c=count, n=name: s3_peer(args.s3, "s3dlio", 8, s, c, n,
                                                                          "s3dlio-8thr"),
            }
            if tools.boto3:
                tools_of["boto3-8thr"] = lambda w, s=size, c=count, n=name: s3_peer(args.s3, "boto3", 8, s, c, n,
                                                                                    "boto3-8thr")
            if args.s3_unsigned:  # PUT bodies not hashed (storage.sign_payload: false), mpibench and s3dlio alike
                for tool, depth in (("mpibench-qd1-unsigned", 1), ("mpibench-qd8-unsigned", 8)):
                    tools_of[tool] = lambda w, s=size, c=count, n=name, d=depth, t=tool: s3_mpibench(
                        tools, w, args.s3, s, c, d, n, t, signed=False)
                for tool, threads in (("s3dlio-seq-unsigned", 1), ("s3dlio-8thr-unsigned", 8)):
                    tools_of[tool] = lambda w, s=size, c=count, n=name, k=threads, t=tool: s3_peer(
                        args.s3, "s3dlio", k, s, c, n, t, signed=False)
            if args.s3_tools:
                wanted = args.s3_tools.split(",")
                unknown = sorted(set(wanted) - set(tools_of))
                if unknown:
                    raise SystemExit(f"--s3-tools: no tool {', '.join(unknown)}; the s3 tools are "
                                     f"{', '.join(tools_of)}")
                tools_of = {tool: run_tool for tool, run_tool in tools_of.items() if tool in wanted}
            cases.append({"kind": "s3", "name": name, "ranks": 1,
                          "object_bytes": size, "objects": count, "tools": tools_of,
                          "peers": ["s3dlio-seq", "boto3-8thr", "s3dlio-8thr"]})
    return cases


def compare(row: dict[str, Any], per_tool: dict[str, dict[str, list[float]]], ours: str, peer: str) -> str:
    """Put into `row` the ratio of the two tools' medians and the median of the repetitions'
    own ratios (the tools of one repetition ran minutes apart at most, so pairing them
    takes out the slow drift of a shared machine); return the ratio's name."""
    key = f"{ours} / {peer}"
    stats, phase = row["tools"], row["phase"]
    row["ratios"][key] = stats[ours]["median"] / stats[peer]["median"]
    row["paired"][key] = statistics.median(
        a / b for a, b in zip(per_tool[ours][phase], per_tool[peer][phase], strict=True))
    return key


def summarize(cases: list[dict[str, Any]], raw: dict[str, dict[str, dict[str, list[float]]]]) -> list[dict[str, Any]]:
    """One row per (case, phase): per tool median/min/max and mpibench's ratios."""
    rows = []
    for case in cases:
        per_tool = raw[case["name"]]
        phases = sorted({p for values in per_tool.values() for p in values},
                        key=["write", "read", "randread", "put", "get"].index)
        for phase in phases:
            stats = {tool: {"median": statistics.median(v[phase]), "min": min(v[phase]), "max": max(v[phase]),
                            "n": len(v[phase])}
                     for tool, v in per_tool.items() if v.get(phase)}
            row: dict[str, Any] = {"case": case["name"], "kind": case["kind"], "phase": phase, "tools": stats,
                                   "ratios": {}, "paired": {}}
            if case["kind"] in ("seq", "defaults", "rand", "train"):
                peers = [p for p in case["peers"] if p in stats]
                ours = case.get("ours", "mpibench")
                if ours in stats and peers:
                    best = max(peers, key=lambda p: stats[p]["median"])
                    key = compare(row, per_tool, ours, best)
                    row["target"] = TARGETS[case["kind"]]
                    row["met"] = row["ratios"][key] >= row["target"]
            else:
                checks = [("mpibench-qd1", "s3dlio-seq", 1.0), ("mpibench-qd8", "s3dlio-seq", 1.0),
                          ("mpibench-qd1", "s3dlio-seq-head", None),
                          ("mpibench-qd8", "boto3-8thr", 1.3), ("mpibench-qd8", "s3dlio-8thr", None),
                          # --s3-unsigned: like for like with s3dlio unsigned; against boto3 (which signs
                          # over http) for what the option buys, not as the target
                          ("mpibench-qd1-unsigned", "s3dlio-seq-unsigned", None),
                          ("mpibench-qd8-unsigned", "s3dlio-8thr-unsigned", None),
                          ("mpibench-qd8-unsigned", "boto3-8thr", None)]
                row["targets"] = {}
                for ours, peer, target in checks:
                    if ours in stats and peer in stats:
                        key = compare(row, per_tool, ours, peer)
                        if target is not None:
                            row["targets"][key] = target
            rows.append(row)
    return rows


def format_tables(rows: list[dict[str, Any]], markdown: bool) -> str:
    """The "equal settings" table (every case but defaults) and, when run, the "defaults" table."""
    equal = [r for r in rows if r["kind"] != "defaults"]
    defaults = [r for r in rows if r["kind"] == "defaults"]
    head = "### " if markdown else ""
    parts = []
    if equal:
        parts.append(f"{head}Equal settings\n\n{format_table(equal, markdown)}")
    if defaults:
        parts.append(f"{head}Defaults (what each tool does untuned)\n\n{format_table(defaults, markdown)}")
    return "\n\n".join(parts)


def format_table(rows: list[dict[str, Any]], markdown: bool) -> str:
    """The summary as an aligned text table or a Markdown table."""
    header = ["case", "phase", "tool", "median MiB/s", "min-max MiB/s", "ratio of medians (paired)", "target"]
    lines: list[list[str]] = []
    for row in rows:
        for tool, s in row["tools"].items():
            ratio, target = "", ""
            if row["kind"] in ("seq", "defaults", "rand", "train"):
                if not tool.startswith("mpibench") and row["ratios"]:
                    key = next(iter(row["ratios"]))
                    if key.endswith(tool):
                        ratio = f"{row['ratios'][key]:.3f} ({row['paired'][key]:.3f})"
                        target = f">= {row['target']:.2f} {'met' if row['met'] else 'MISSED'}"
            else:
                found = [(k, v) for k, v in row["ratios"].items() if k.endswith(f"/ {tool}")]
                ratio = ", ".join(f"{k.split(' / ')[0]}: {v:.3f} ({row['paired'][k]:.3f})" for k, v in found)
                target = ", ".join(f">= {row['targets'][k]:.1f} {'met' if v >= row['targets'][k] else 'MISSED'}"
                                   for k, v in found if k in row["targets"])
            lines.append([row["case"], row["phase"], tool, f"{s['median']:.1f}", f"{s['min']:.1f}-{s['max']:.1f}",
                          ratio, target])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*ln) for ln in lines])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        kind, rest = argv[1], argv[2:]
        if kind == "plainread":
            worker_plainread(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), float(rest[4]))
        elif kind == "pyrand":
            worker_pyrand(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
        else:
            worker_s3(kind, rest[0], int(rest[1]), int(rest[2]), int(rest[3]), shared=rest[4:5] == ["shared"])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; --quick 3)")
    parser.add_argument("--cases", default="seq,defaults,rand,train,s3",
                        help="comma-separated: seq,defaults,rand,train,s3")
    parser.add_argument("--ior", default=None, metavar="PATH",
                        help="the ior binary (seq and defaults cases); without it IOR is skipped. " + IOR_BUILD)
    parser.add_argument("--ranks", default="1,2", help="rank counts (default 1,2)")
    parser.add_argument("--s3-server-cpus", default="",
                        help="s3: run the server on these CPUs (e.g. 0) and the clients on the others; "
                             "default: both anywhere")
    parser.add_argument("--s3-client-cpu-quota", type=float, default=0.0, metavar="CPUS",
                        help="s3: the clients' processes together get this many CPUs' worth of time (a "
                             "cgroup CPU quota, e.g. 0.2; needs root), the server the rest: a client's own CPU "
                             "per request sets its pace, as on a node in front of a large store")
    parser.add_argument("--s3-tools", default="",
                        help="s3: only these tools, e.g. mpibench-qd1,s3dlio-seq (a focused A/B)")
    parser.add_argument("--s3-shared-buffer", action="store_true",
                        help="s3: the peers' threads all send one buffer (the runs before 2026-12-04 20:33) "
                             "instead of one each, as mpibench's I/O threads do")
    parser.add_argument("--s3-unsigned", action="store_true",
                        help="s3: also run mpibench (storage.sign_payload=false) and s3dlio with unsigned PUT bodies")
    parser.add_argument("--transfer-sizes", default="", help="seq: only these sizes in bytes, e.g. 4096,1048576")
    parser.add_argument("--workdir", default=None,
                        help="parent of the benchmark's own folder (default: $TMPDIR or /tmp); must be a "
                             "real filesystem accepting O_DIRECT")
    parser.add_argument("--output", default=None, help="results JSON (default: peers-<date>.json in the workdir's parent)")
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's folder")
    parser.add_argument("--bind", choices=("cpus", "none"), default="cpus",
                        help="cpus (default): rank r of every tool on the same CPU, round robin over the CPUs "
                             "this script may use; none: where the scheduler puts them")
    parser.add_argument("--huge-pages", action="store_true",
                        help="every tool's I/O buffers in 2 MiB huge pages: mpibench huge_pages=true, "
                             "fio --mem=shmhuge (needs reserved huge pages: sysctl vm.nr_hugepages=64), "
                             "the Python loops' in transparent huge pages (not the s3 case)")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds to wait after a sync before each tool runs (default {SETTLE_S})")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    reps = args.reps or sizes["reps"]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.transfer_sizes = [int(t) for t in args.transfer_sizes.split(",") if t.strip()]
    parent = Path(args.workdir or os.environ.get("TMPDIR") or "/tmp").resolve()
    work = Path(tempfile.mkdtemp(prefix="mpibench-peers-", dir=parent))
    output = Path(args.output) if args.output else parent / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    if args.huge_pages:
        free = hugetlb_free_bytes()
        need = 32 * HUGE_PAGE * max(args.ranks)
        if free < need:
            shutil.rmtree(work, ignore_errors=True)
            parser.error(f"--huge-pages: fio's buffers need {need // MiB} MiB of reserved huge pages, "
                         f"{free // MiB} MiB are free; as root: sysctl vm.nr_hugepages={need // HUGE_PAGE}")
        HUGE["on"] = True
    print(f"workdir {work}", flush=True)
    args.s3 = None
    try:
        tools = Tools(work, args.ior)
        for name, why in tools.skipped.items():
            print(f"skipping {name}: {why}", flush=True)
        if args.bind == "cpus":
            if tools.taskset:
                CPUS[:] = sorted(os.sched_getaffinity(0))
                print(f"rank r of every tool runs on CPU r of {','.join(map(str, CPUS))} (round robin); "
                      "the s3 case is not bound", flush=True)
            else:
                print("not binding: taskset not found (util-linux); every tool runs where the scheduler "
                      "puts it", flush=True)
        info = machine_info(work, tools)
        info["bound_cpus"] = list(CPUS)
        info["huge_pages"] = HUGE["on"]
        if info["filesystem"].get("fstype") in ("tmpfs", "ramfs"):
            print(f"warning: {work} is on {info['filesystem']['fstype']}: the numbers measure memory, not a disk",
                  flush=True)
        if "s3" in args.cases and tools.weed:
            try:
                server_cpus = [int(c) for c in args.s3_server_cpus.split(",") if c.strip()]
            except ValueError:
                raise SystemExit(f"--s3-server-cpus {args.s3_server_cpus}: give CPU numbers, e.g. 0 or 0,1") from None
            if args.s3_client_cpu_quota and not 0.01 <= args.s3_client_cpu_quota <= len(os.sched_getaffinity(0)):
                raise SystemExit(f"--s3-client-cpu-quota {args.s3_client_cpu_quota:g}: give a number of CPUs "
                                 f"between 0.01 and {len(os.sched_getaffinity(0))}, e.g. 0.2")
            args.s3 = S3Session(work, server_cpus, tools.taskset, args.s3_client_cpu_quota)
            args.s3.shared_buffer = args.s3_shared_buffer
            info["s3_server_cpus"] = server_cpus
            info["s3_client_cpu_quota"] = args.s3_client_cpu_quota or None
            if args.s3.quota is not None:
                print(f"s3: the clients share {args.s3_client_cpu_quota:g} CPUs' worth of time "
                      f"(cgroup {args.s3.quota.path}); the server runs outside it", flush=True)
            if server_cpus:
                print(f"s3: the server on CPU {args.s3_server_cpus}, the clients on "
                      f"{args.s3.client_prefix[-1]}", flush=True)
        cases = build_cases(args, sizes, tools)
        if "train" in args.cases:
            print("generating the train dataset (not timed)", flush=True)
            train_prepare(tools, work, sizes)
        raw: dict[str, dict[str, dict[str, list[float]]]] = {c["name"]: {} for c in cases}
        load = [os.getloadavg()[0]]
        started = time.time()
        for rep in range(reps):
            for case in cases:
                names = list(case["tools"])
                shift = rep % len(names)
                for tool in names[shift:] + names[:shift]:  # rotate who goes first
                    settle(args.settle)
                    values = case["tools"][tool](work)
                    for phase, value in values.items():
                        raw[case["name"]].setdefault(tool, {}).setdefault(phase, []).append(value)
                    shown = ", ".join(f"{p} {v:.1f}" for p, v in values.items())
                    print(f"rep {rep + 1}/{reps}  {case['name']:<28} {tool:<14} {shown} MiB/s", flush=True)
            load.append(os.getloadavg()[0])
        rows = summarize(cases, raw)
        table = format_tables(rows, markdown=False)
        print()
        print(table)
        if REQUESTS:
            print("\nseq: the device's requests per transfer, median (its counters: every process's I/O)")
            for key, values in REQUESTS.items():
                print(f"  {key:<40} {statistics.median(values):.2f}")
        if CHOICES:
            print("\ndefaults: mpibench's automatic choices (its result's auto_choices)")
            for key, choice in CHOICES.items():
                print(f"  {key:<24} " + ", ".join(f"{k} {v['value']}" for k, v in choice.items()))
        if CLIENT_CPU:
            print("\ns3: the client's CPU per object in microseconds, median (mpibench: its phase's client_cpu; "
                  "the peers: getrusage around their loop), and the CPUs it kept busy (objects/s x CPU per "
                  "object, median): near --s3-client-cpu-quota, the client's own CPU set its pace")
            for key, cpus in s3_client_cpus(cases, raw).items():
                print(f"  {key:<56} {statistics.median(CLIENT_CPU[key]):6.0f}   {cpus:.2f} CPUs")
        info["load_average_1min"] = load
        info["seconds"] = round(time.time() - started, 1)
        document = {"machine": info, "repetitions": reps, "quick": args.quick, "skipped": tools.skipped,
                    "cases": [{k: v for k, v in c.items() if k != "tools"} for c in cases],
                    "raw_MiBps": raw, "summary": rows,
                    "device_requests_per_transfer": REQUESTS, "s3_client_cpu_us_per_object": CLIENT_CPU,
                    "mpibench_auto_choices": CHOICES,
                    "s3_client_cpus_busy": s3_client_cpus(cases, raw)}
        output.write_text(json.dumps(document, indent=1))
        print(f"\nresults: {output}")
        if args.markdown:
            Path(args.markdown).write_text(format_tables(rows, markdown=True) + "\n")
            print(f"markdown table: {args.markdown}")
        if max(load) > 1.5:
            print(f"note: the 1-minute load average reached {max(load):.1f} during the run (it counts "
                  "the tools' own processes and I/O waits; other work on the machine may also have "
                  "moved the numbers)", flush=True)
    finally:
        if args.s3 is not None:
            args.s3.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
