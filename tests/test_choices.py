"""The automatic choices (mpibench.choices): depth per direction, preallocation, engine, and
their record in the results. They assert the choices, never a speed."""

from __future__ import annotations

import os

import pytest
from test_workloads_unit import one_rank

from mpibench import choices, comm, environment, uring
from mpibench.config import build_config
from mpibench.run import execute
from mpibench.schema import validate_document
from mpibench.workloads import bandwidth


def config(root: str, kind: str = "direct_fs", workload: str = "bandwidth", verify: bool = False,
           **io: object):
    data: dict = {"workload": workload, "storage": {"type": kind, "root": root}, "verify": verify,
                  "bandwidth": {"transfer_size": "1MiB", "block_size": "8MiB", "iterations": 2,
                                "reorder_reads": False}, "io": io}
    if workload == "checkpoint":
        data["checkpoint"] = {"model": "llama3-8b", "ranks": 8, "scale": 0.0001, "transfer_size": "64KiB",
                              "num_checkpoints_write": 1, "num_checkpoints_read": 1}
    return build_config(data)


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_extending_writes_preallocate_where_the_workload_can(fstype):
    got = choices.decide(config("/x"), 4, "io_uring", fstype, cpus=4, ranks=1, can_preallocate=True)
    assert (got.read_depth, got.write_depth, got.preallocate) == (4, 4, True)
    assert set(got.record) == {"read_io_depth", "write_io_depth", "preallocate", "io_engine"}
    assert got.record["preallocate"]["value"] is True and fstype in got.record["preallocate"]["why"]
    assert got.record["io_engine"]["value"] == "io_uring"


def test_small_transfers_keep_depth_1_instead_of_preallocating():
    small = build_config({"workload": "bandwidth", "storage": {"type": "direct_fs", "root": "/x"},
                          "bandwidth": {"transfer_size": "512KiB", "block_size": "8MiB"}})
    got = choices.decide(small, 2, "io_uring", "ext4", cpus=2, ranks=1, can_preallocate=True)
    assert (got.read_depth, got.write_depth, got.preallocate) == (2, 1, False)
    assert "1 MiB" in got.record["write_io_depth"]["why"]
    assert choices.PREALLOCATE_MIN_TRANSFER == 1024 * 1024


def test_extending_writes_keep_depth_1_where_the_workload_cannot_preallocate():
    got = choices.decide(config("/x", workload="checkpoint"), 2, "io_uring", "ext4", cpus=2, ranks=1,
                         can_preallocate=False)
    assert (got.read_depth, got.write_depth, got.preallocate) == (2, 1, False)
    assert got.record["write_io_depth"]["value"] == 1 and got.record["read_io_depth"]["value"] == 2
    assert got.record["preallocate"]["value"] is False


def test_other_filesystems_writes_keep_the_depth():
    got = choices.decide(config("/x"), 8, "io_uring", "lustre", cpus=8, ranks=1, can_preallocate=True)
    assert (got.read_depth, got.write_depth, got.preallocate) == (8, 8, False)
    assert "lustre" in got.record["write_io_depth"]["why"]


def test_depth_1_needs_neither_preallocation_nor_an_engine():
    got = choices.decide(config("/x"), 1, "io_uring", "ext4", cpus=2, ranks=2, can_preallocate=True)
    assert (got.read_depth, got.write_depth, got.preallocate) == (1, 1, False)
    assert got.record["io_engine"]["value"] == "sync"
    assert got.record["preallocate"]["value"] is False


def test_local_fs_auto_is_depth_1():
    got = choices.decide(config("/x", kind="local_fs"), 1, "io_uring", "ext4", cpus=2, ranks=1,
                         can_preallocate=True)
    assert got.record["read_io_depth"]["value"] == 1 and "page cache" in got.record["read_io_depth"]["why"]


def test_settings_the_user_gave_are_not_choices():
    got = choices.decide(config("/x", depth=2, engine="threads"), 2, "threads", "ext4", cpus=2,
                         ranks=1, can_preallocate=True)
    assert got.record == {} and (got.read_depth, got.write_depth, got.preallocate) == (2, 2, False)


def test_null_storage_auto_is_depth_1():
    null = build_config({"workload": "bandwidth", "storage": {"type": "null", "root": "/unused"}})
    got = choices.decide(null, 1, "none", "", cpus=2, ranks=1, can_preallocate=True)
    assert got.record["read_io_depth"]["value"] == got.record["write_io_depth"]["value"] == 1
    assert "null" in got.record["read_io_depth"]["why"] and not got.preallocate


def test_s3_has_no_file_choices():
    s3 = build_config({"workload": "bandwidth", "storage": {"type": "s3", "root": "s3://bucket/x"}})
    got = choices.decide(s3, 2, "none", "", cpus=2, ranks=1, can_preallocate=True)
    assert set(got.record) == {"read_io_depth", "write_io_depth"} and not got.preallocate


def test_fallocate_reserves_the_region(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        reason = choices.fallocate(fd, 4096, 1 << 20)
        if reason is not None:
            pytest.skip(reason)
        st = os.fstat(fd)
        assert st.st_size == 4096 + (1 << 20)  # mode 0: the size covers the region
        assert st.st_blocks * 512 >= 1 << 20  # and its blocks are reserved, no data written
    finally:
        os.close(fd)


def _test_root(tmp_path) -> str:
    parent = os.environ.get("MPIBENCH_TEST_DIR") or str(tmp_path)
    fstype = environment.filesystem_of(parent)["fstype"]
    if fstype not in choices.SERIALIZED_EXTENDING_WRITES:
        pytest.skip(f"{parent} is on {fstype}, not a filesystem that serializes extending writes "
                    "(set MPIBENCH_TEST_DIR to an ext4 or XFS directory)")
    return os.path.join(parent, f"choices-{os.getpid()}-{tmp_path.name}")


def test_run_records_and_applies_preallocation(tmp_path, monkeypatch):
    """One rank given 4 CPUs on ext4: reads and writes at depth 4, the files preallocated,
    every write phase says so, and the document with auto_choices validates."""
    root = _test_root(tmp_path)
    monkeypatch.setattr(comm, "usable_cpus", lambda: 4)
    called: list[tuple[int, int]] = []
    real = choices.fallocate
    monkeypatch.setattr(bandwidth, "fallocate", lambda fd, off, n: called.append((off, n)) or real(fd, off, n))
    doc = execute(config(root, verify=True), one_rank(), output=None)
    assert doc["complete"]
    auto = doc["auto_choices"]
    assert auto["read_io_depth"]["value"] == auto["write_io_depth"]["value"] == 4
    assert auto["preallocate"]["value"] is True
    assert auto["io_engine"]["value"] == ("io_uring" if uring.unavailable() is None else "threads")
    writes = [p for p in doc["phases"] if p["name"] == "write"]
    assert [p["preallocated"] for p in writes] == [True, True] and {p["io_depth"] for p in writes} == {4}
    assert called == [(0, 8 << 20), (0, 8 << 20)]  # each iteration's new file, before its phase
    assert all(p["bytes"] == 8 << 20 for p in doc["phases"])
    validate_document(doc)


def test_run_without_preallocation_writes_at_depth_1(tmp_path, monkeypatch):
    """The checkpoint workload does not preallocate: its writes go at depth 1, reads at 4."""
    root = _test_root(tmp_path)
    monkeypatch.setattr(comm, "usable_cpus", lambda: 4)
    doc = execute(config(root, workload="checkpoint"), one_rank(), output=None)
    assert doc["complete"]
    assert doc["auto_choices"]["write_io_depth"]["value"] == 1
    assert doc["auto_choices"]["read_io_depth"]["value"] == 4
    assert [(p["name"], p["io_depth"]) for p in doc["phases"]] == [("write", 1), ("read", 4)]
    validate_document(doc)


def test_explicit_depth_is_not_preallocated(tmp_path):
    root = _test_root(tmp_path)
    doc = execute(config(root, depth=2), one_rank(), output=None)
    assert set(doc["auto_choices"]) == {"io_engine"}  # the engine alone was left at auto
    assert not any(p.get("preallocated") for p in doc["phases"])
    assert {p["io_depth"] for p in doc["phases"]} == {2}


def train_config(kind: str = "local_fs", cache: str = "warm", **train: object):
    return build_config({"workload": "train", "storage": {"type": kind, "root": "/x"},
                         "train": {"cache": cache, **train}})


def test_train_reads_cached_files_without_compute_in_one_thread():
    cfg = train_config()
    assert choices.read_threads(cfg) == 1
    got = choices.decide(cfg, 1, "io_uring", "ext4", cpus=2, ranks=1, can_preallocate=False)
    assert got.record["read_threads"]["value"] == 1 and "GIL" in got.record["read_threads"]["why"]


@pytest.mark.parametrize("cfg", [
    train_config(cache="cold"),                       # evicted: the threads overlap the device's waits
    train_config(computation_time=0.01),              # a compute to overlap
    train_config(model="unet3d", accelerator="h100"),  # the accelerator's compute
    train_config(kind="direct_fs"),                   # O_DIRECT: never from the page cache
])
def test_train_keeps_reader_threads_where_waits_overlap(cfg):
    assert choices.read_threads(cfg) == choices.READ_THREADS_OVERLAP == 4
    got = choices.decide(cfg, 1, "io_uring", "ext4", cpus=2, ranks=1, can_preallocate=False)
    assert got.record["read_threads"]["value"] == 4 and "overlap" in got.record["read_threads"]["why"]


def test_train_read_threads_the_user_gave_are_not_choices():
    cfg = train_config(read_threads=3)
    assert choices.read_threads(cfg) == 3
    got = choices.decide(cfg, 1, "io_uring", "ext4", cpus=2, ranks=1, can_preallocate=False)
    assert "read_threads" not in got.record
    other = choices.decide(config("/x"), 1, "io_uring", "ext4", cpus=2, ranks=1, can_preallocate=True)
    assert "read_threads" not in other.record  # not a train run
