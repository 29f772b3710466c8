"""The bandwidth workload on real files at several ranks (run under mpiexec --with-mpi)."""

from __future__ import annotations

import json
import os
import time

import pytest

from mpibench import buffers, environment, faults, uring
from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.plan import bandwidth_file, reorder_partner
from mpibench.results import SCHEMA_VERSION, load_results, phase_bandwidth
from mpibench.run import execute

pytestmark = pytest.mark.mpi(min_size=2)

BLOCK = 4 * 2**20
TRANSFER = 256 * 2**10
ITERATIONS = 2


def bandwidth_config(root: str, kind: str, file_mode: str, **extra: object):
    data = {
        "workload": "bandwidth",
        "storage": {"type": kind, "root": root},
        "bandwidth": {"transfer_size": TRANSFER, "block_size": BLOCK, "file_mode": file_mode,
                      "iterations": ITERATIONS, "fsync": True, "reorder_reads": True},
        "verify": True,
    }
    for key, value in extra.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return build_config(data)


def check_document(doc: dict, size: int) -> None:
    assert doc["schema_version"] == SCHEMA_VERSION and doc["complete"] is True
    assert doc["environment"]["world_size"] == size
    phases = doc["phases"]
    assert [p["name"] for p in phases] == ["write", "read"] * ITERATIONS
    for phase in phases:
        assert phase["bytes"] == size * BLOCK
        assert len(phase["ranks"]) == size
        assert sorted(r["rank"] for r in phase["ranks"]) == list(range(size))
        assert all(r["bytes"] == BLOCK and r["ops"] == BLOCK // TRANSFER for r in phase["ranks"])
        total, start, end, bw = phase_bandwidth(phase["ranks"])
        assert (total, start, end) == (phase["bytes"], phase["start"], phase["end"])
        assert bw == pytest.approx(phase["bandwidth_MiBps"])
        assert phase["latency"]["count"] == size * BLOCK // TRANSFER
    writes = sum(p["bytes"] for p in phases if p["name"] == "write")
    reads = sum(p["bytes"] for p in phases if p["name"] == "read")
    assert writes == reads == size * BLOCK * ITERATIONS


@pytest.mark.parametrize("file_mode", ["per_rank", "shared"])
@pytest.mark.parametrize("kind", ["direct_fs", "local_fs"])
def test_bandwidth_run_verifies_and_cleans(shared_tmpdir, kind, file_mode):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    output = os.path.join(shared_tmpdir, "result.json")
    doc = execute(bandwidth_config(root, kind, file_mode), comm, output=output if comm.is_root else None)
    comm.barrier()
    if comm.is_root:
        check_document(doc, comm.size)
        assert load_results(output) == json.loads(json.dumps(doc))
        read = doc["phases"][1]
        if kind == "direct_fs":
            assert read["cache"]["state"] == "direct"
            assert doc["environment"]["direct_io_alignment"] >= 512
        else:
            assert read["cache"]["state"] == "cold"
        assert read["verified"] is True
    # Nothing is left: the root leaf was created by the run and is removed with it.
    assert not os.path.exists(root)


def test_reads_come_from_another_rank(shared_tmpdir):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    os.makedirs(root, exist_ok=True)
    doc = execute(bandwidth_config(root, "direct_fs", "per_rank", bandwidth__iterations=1), comm,
                  output=None)
    if comm.is_root:
        reads = doc["phases"][1]
        assert reads["reorder_reads"] is True
        # The kernel saw the data go to and come from the device, not the page cache.
        storage = reads["storage_bytes"]["read_bytes"]
        assert storage >= reads["bytes"]
    comm.barrier()
    assert os.listdir(root) == []


def test_keep_files(shared_tmpdir):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    doc = execute(bandwidth_config(root, "direct_fs", "per_rank", bandwidth__iterations=1)
                  .__class__(**{**bandwidth_config(root, "direct_fs", "per_rank").__dict__, "keep_files": True}),
                  comm, output=None)
    run_id = comm.bcast(doc["run_id"] if comm.is_root else None)
    files = sorted(os.listdir(os.path.join(root, f"mpibench-{run_id}", "bandwidth")))
    assert files == [f"rank-{r:06d}.dat" for r in range(comm.size)]
    assert all(os.path.getsize(os.path.join(root, f"mpibench-{run_id}", "bandwidth", f)) == BLOCK for f in files)


@pytest.fixture
def file_states(monkeypatch):
    """For each phase this rank enters, before its start barrier: (phase, iteration, whether
    the file it writes exists, its inode); and how often the file system was synced."""
    from mpibench.backends.posix import PosixBackend
    from mpibench.context import RunContext

    states: list[tuple[str, int, bool, int | None]] = []
    syncs: list[float] = []
    phase, sync = RunContext.phase, PosixBackend.sync_filesystem

    def spy_phase(self, name, iteration, body, *args, **kwargs):
        bw = self.config.bandwidth
        path = self.backend.path_of(self.key(bandwidth_file(bw.file_mode, self.comm.rank, bw.block_size).key))
        found = os.lstat(path) if os.path.lexists(path) else None
        states.append((name, iteration, found is not None, found.st_ino if found else None))
        return phase(self, name, iteration, body, *args, **kwargs)

    def spy_sync(self):
        syncs.append(time.monotonic())
        sync(self)

    monkeypatch.setattr(RunContext, "phase", spy_phase)
    monkeypatch.setattr(PosixBackend, "sync_filesystem", spy_sync)
    return states, syncs


@pytest.mark.parametrize("file_mode", ["per_rank", "shared"])
def test_every_write_iteration_writes_new_files(shared_tmpdir, file_states, file_mode):
    """IOR without -k: before each write phase after the first, the previous iteration's
    file is removed (each rank its own, rank 0 the shared one), so every write phase starts,
    at its start barrier, with the file absent and allocates it anew; the node's first rank
    then syncs the file system (the removal's frees and discards are not timed). The bytes
    written and read, verified, are what they were."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    iterations = 3
    doc = execute(bandwidth_config(root, "direct_fs", file_mode, bandwidth__iterations=iterations), comm,
                  output=None)
    states, syncs = file_states
    assert [s[:2] for s in states] == [(name, i) for i in range(iterations) for name in ("write", "read")]
    # Absent when every write phase begins, present (written) when every read phase begins.
    assert [s[2] for s in states] == [False, True] * iterations
    layout = comm.layout()
    assert len(syncs) == (iterations - 1 if layout.local_rank == 0 else 0)
    if comm.is_root:
        assert doc["complete"] is True
        phases = doc["phases"]
        assert [p["name"] for p in phases] == ["write", "read"] * iterations
        for phase in phases:
            assert phase["bytes"] == comm.size * BLOCK
            assert all(r["bytes"] == BLOCK and r["ops"] == BLOCK // TRANSFER for r in phase["ranks"])
        assert all(p["fresh_files"] is True for p in phases if p["name"] == "write")
        assert all(p["verified"] is True for p in phases if p["name"] == "read")
    comm.barrier()
    assert not os.path.exists(root)


@pytest.mark.parametrize("file_mode", ["per_rank", "shared"])
def test_overwrite_keeps_the_files_between_iterations(shared_tmpdir, file_states, file_mode):
    """bandwidth.overwrite (IOR -k): the iterations after the first write over the same file,
    which is never removed in between (same inode), and say so; no sync is added."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    iterations = 3
    doc = execute(bandwidth_config(root, "direct_fs", file_mode, bandwidth__iterations=iterations,
                                   bandwidth__overwrite=True), comm, output=None)
    states, syncs = file_states
    assert [s[2] for s in states] == [False] + [True] * (2 * iterations - 1)
    assert len({s[3] for s in states[1:]}) == 1  # the same file all along
    assert syncs == []
    if comm.is_root:
        writes = [p for p in doc["phases"] if p["name"] == "write"]
        assert [p["fresh_files"] for p in writes] == [True] + [False] * (iterations - 1)
        assert all(p["bytes"] == comm.size * BLOCK for p in doc["phases"])
        assert all(p["verified"] is True for p in doc["phases"] if p["name"] == "read")


def test_stonewall_stops_within_one_operation(shared_tmpdir):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    deadline = 0.3
    cfg = build_config({
        "workload": "bandwidth", "storage": {"type": "direct_fs", "root": root},
        "io": {"depth": 1},
        "bandwidth": {"transfer_size": "1MiB", "block_size": "1GiB", "iterations": 1, "deadline": deadline},
    })
    doc = execute(cfg, comm, output=None)
    if comm.is_root:
        write, read = doc["phases"]
        written = {rank["rank"]: rank["bytes"] for rank in write["ranks"]}
        assert write["stonewalled"] is True
        assert all(rank["stonewalled"] for rank in write["ranks"])  # 1 GiB cannot be written in 0.3 s
        for rank in read["ranks"]:
            # A rank reads back only what its partner wrote before the deadline, which it may
            # finish before its own deadline: then it has read all of it.
            partner = reorder_partner(rank["rank"], comm.size, comm.size, 1)
            assert 0 < rank["bytes"] <= written[partner]
            assert rank["stonewalled"] or rank["bytes"] == written[partner]
        for rank in write["ranks"] + read["ranks"]:
            assert 0 < rank["bytes"] < 2**30
            # The last operation started before the deadline: transfers end within one op of it.
            assert rank["transfer_s"] <= deadline + rank["latency_max_s"] + 0.05
            if rank["stonewalled"]:  # the deadline counts from the phase start, before the open
                assert rank["open_s"] + rank["transfer_s"] >= deadline - 0.05


def test_idle_barrier_waits_without_holding_a_core():
    """A rank done early waits for a slow one asleep: it must not take CPU from the ranks
    still doing timed I/O (a spinning wait would use most of the 2 seconds)."""
    comm = Comm()
    comm.barrier()
    if comm.rank == comm.size - 1:
        time.sleep(2.0)
    wall, cpu = time.monotonic(), time.process_time()
    comm.idle_barrier()
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    if comm.rank == 0:
        assert wall > 1.5  # it did wait for the slow rank
        assert cpu < 0.2


def test_kernel_counters_match_direct_io(shared_tmpdir, monkeypatch):
    """The last rank stalls mid-write, so the node's first rank finishes long before it: the
    node's block device counters must still cover every rank's writes."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    monkeypatch.setenv(faults.ENV, f"sleep:rank={comm.size - 1}:phase=write:after_ops=2:seconds=0.5")
    doc = execute(bandwidth_config(root, "direct_fs", "per_rank", bandwidth__iterations=1), comm, output=None)
    if comm.is_root:
        write, read = doc["phases"]
        for rank in write["ranks"]:
            # O_DIRECT writes reach the storage layer byte for byte (plus a little metadata).
            assert rank["bytes"] <= rank["proc_io"]["write_bytes"] <= rank["bytes"] + 2**20
        for rank in read["ranks"]:
            assert rank["bytes"] <= rank["proc_io"]["read_bytes"] <= rank["bytes"] + 2**20
        for phase in (write, read):
            for rank in phase["ranks"]:
                cpu = rank["cpu_user_s"] + rank["cpu_system_s"]
                assert 0 < cpu < rank["end"] - rank["start"]
            assert phase["client_cpu"]["cores"] == pytest.approx(
                sum(r["cpu_user_s"] + r["cpu_system_s"] for r in phase["ranks"]) / phase["seconds"])
        stalled = write["ranks"][comm.size - 1]
        assert stalled["cpu_user_s"] + stalled["cpu_system_s"] < stalled["end"] - stalled["start"] - 0.4
        device = write["hosts"][0]["block_device"]
        if device:
            # Device counters are per node and shared with other processes: a sanity bound only.
            assert device["write_bytes"] >= 0.9 * write["bytes"]


def _max_request_bytes(root: str) -> int | None:
    """The largest request the block device under `root` takes (queue/max_sectors_kb), if known."""
    stat = environment.block_stat_path(root)
    if stat is None:
        return None
    device = os.path.dirname(os.path.realpath(stat))
    for queue in (os.path.join(device, "queue"), os.path.join(os.path.dirname(device), "queue")):
        try:
            with open(os.path.join(queue, "max_sectors_kb")) as f:
                return int(f.read()) * 1024
        except (OSError, ValueError):
            continue
    return None


def test_huge_page_buffers_reach_the_device_one_request_per_transfer(shared_tmpdir):
    """huge_pages: every rank's buffers are granted in huge pages, and a 1 MiB O_DIRECT transfer
    reaches the device as the fewest requests its size limit allows (with 4 KiB pages a queue's
    segment limit can split it: 254 segments on a virtio disk, 256 pages in 1 MiB)."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    mode = buffers.transparent_huge_pages() if comm.is_root else None
    if comm.bcast(mode) not in ("always", "madvise"):
        pytest.skip("transparent huge pages are off on this host")
    transfer = 2**20
    cfg = bandwidth_config(root, "direct_fs", "per_rank", bandwidth__iterations=1,
                           bandwidth__transfer_size=transfer, bandwidth__block_size=16 * transfer,
                           io__depth=1)
    doc = execute(cfg.__class__(**{**cfg.__dict__, "huge_pages": True}), comm, output=None)
    if not comm.is_root:
        return
    bufs = doc["environment"]["io_buffers"]
    assert bufs["huge_pages"] is True and bufs["transparent_huge_pages"] == mode
    assert bufs["huge_requested_bytes"] >= comm.size * 3 * buffers.HUGE_PAGE
    if bufs["huge_granted_bytes"] < bufs["huge_requested_bytes"]:
        pytest.skip("the kernel had too few free 2 MiB pages (fragmented memory)")
    limit = _max_request_bytes(root)
    for phase in doc["phases"]:
        device = phase["hosts"][0].get("block_device")
        if not device or limit is None:
            continue
        requests = device["writes"] if phase["name"] == "write" else device["reads"]
        fewest = phase["ops"] * -(-transfer // limit)
        # The counters are the whole device's: allow for the filesystem's own and other processes' I/O.
        assert fewest <= requests <= fewest * 1.1 + 16, (phase["name"], requests, fewest)


def _require_io_uring() -> None:
    reason = uring.unavailable()
    if reason is not None:
        pytest.skip(f"io_uring: {reason}")


@pytest.mark.parametrize("engine", ["io_uring", "threads"])
@pytest.mark.parametrize("access", ["random", "sequential"])
def test_queue_depth_engines_verify(shared_tmpdir, engine, access):
    """io_depth 8 kept in flight by an io_uring ring or by threads: every block written and
    read back once (verified), in every iteration, and the engine named in the results."""
    if engine == "io_uring":
        _require_io_uring()
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    cfg = bandwidth_config(root, "direct_fs", "per_rank", io__depth=8,
                           io__engine=engine, bandwidth__access=access,
                           bandwidth__transfer_size=64 * 2**10)
    doc = execute(cfg, comm, output=None)
    if comm.is_root:
        assert doc["environment"]["io_engine"] == engine and doc["environment"]["io_depth"] == 8
        ops = BLOCK // (64 * 2**10)
        for phase in doc["phases"]:
            assert phase["bytes"] == comm.size * BLOCK
            assert all(r["ops"] == ops for r in phase["ranks"])
            assert phase["latency"]["count"] == comm.size * ops
            assert phase["latency"]["min_s"] > 0
            assert phase["storage_bytes"]["read_bytes" if phase["name"] == "read" else "write_bytes"] >= phase["bytes"]
        assert all(p["verified"] for p in doc["phases"] if p["name"] == "read")
    comm.barrier()
    assert not os.path.exists(root)


def test_io_uring_stonewall_reads_what_was_written(shared_tmpdir):
    """At a deadline the ring stops submitting and lets what is in flight complete, so the
    operations done are a prefix: the read phase (stonewalled too) reads only blocks that were
    written, which verification proves (a block never written reads back as zeros)."""
    _require_io_uring()
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    cfg = build_config({
        "workload": "bandwidth", "storage": {"type": "direct_fs", "root": root},
        "io": {"depth": 8, "engine": "io_uring"},
        "bandwidth": {"transfer_size": "64KiB", "block_size": "1GiB", "iterations": 1, "deadline": 0.3,
                      "access": "random", "reorder_reads": False},
        "verify": True,
    })
    doc = execute(cfg, comm, output=None)
    if comm.is_root:
        write, read = doc["phases"]
        assert write["stonewalled"] is True
        for w, r in zip(sorted(write["ranks"], key=lambda x: x["rank"]),
                        sorted(read["ranks"], key=lambda x: x["rank"]), strict=True):
            assert 0 < w["bytes"] < 2**30
            assert r["bytes"] <= w["bytes"]
            assert w["transfer_s"] <= 0.3 + w["latency_max_s"] + 0.05
        assert read["verified"] is True


@pytest.mark.parametrize("restore", [True, False])
def test_signal_after_the_run_loses_nothing(shared_tmpdir, monkeypatch, restore):
    """Once the cleanup is over, a SIGINT while the results are put together is ignored
    (it no longer reads as "before the run started" and cannot abort a measured job); the
    caller's handlers come back unless it asks to keep ignoring signals (the CLI does)."""
    import signal

    from mpibench import run as run_module

    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    seen: list[int] = []
    mine = signal.signal(signal.SIGINT, lambda signum, _frame: seen.append(signum))
    assembling = run_module._document

    def signalled_document(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # handled (or not) before the next bytecode
        return assembling(*args, **kwargs)

    monkeypatch.setattr(run_module, "_document", signalled_document)
    try:
        doc = execute(bandwidth_config(root, "direct_fs", "per_rank", bandwidth__iterations=1), comm,
                      output=None, restore_signals=restore)
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, mine)
    assert seen == []
    if comm.is_root:
        assert doc["complete"] is True and [p["name"] for p in doc["phases"]] == ["write", "read"]
    assert (after is not signal.SIG_IGN) if restore else (after is signal.SIG_IGN)
