"""The AI workloads without MPI: file sharding, record sizes, formats, manifests, and
one-rank datagen / train / checkpoint runs on real files."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpibench import buffers
from mpibench.comm import Comm
from mpibench.config import DatasetConfig, build_config
from mpibench.errors import ConfigError, PreflightError, VerifyError
from mpibench.formats import (
    decode,
    encode,
    file_key,
    manifest_mismatch,
    manifest_of,
    record_size_of,
    record_sizes,
    size_bound,
)
from mpibench.plan import epoch_files
from mpibench.run import check_huge_pages, execute
from mpibench.schema import validate_document
from mpibench.workloads import get_workload
from mpibench.workloads.datagen import check_dataset_name
from mpibench.workloads.train import (
    HASH_SLICE,
    MASK64,
    every_file_once,
    expected_file_checks,
    file_checks,
    index_hash,
    index_hash_key,
    index_hashes,
    index_sums,
)

# -- sharding of files to ranks -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 64), st.integers(0, 5), st.booleans(), st.integers(0, 2**31))
def test_every_file_once_per_epoch_balanced(num_files, size, epoch, shuffle, seed):
    seen = Counter()
    counts = []
    for rank in range(size):
        files = epoch_files(num_files, size, rank, epoch, shuffle, seed)
        counts.append(len(files))
        seen.update(files.tolist())
    assert sorted(seen) == list(range(num_files)) and set(seen.values()) == {1}
    assert max(counts) - min(counts) <= 1
    want_sum, want_sumsq = index_sums(num_files)
    assert sum(seen) == want_sum and sum(i * i for i in seen) == want_sumsq


def _rank_reports(parts: list[list[int]], key: int) -> list[dict]:
    """What ranks that read these files report for every_file_once."""
    reports = []
    for files in parts:
        count, total, squares, hashed = file_checks(files, key)
        reports.append({"files": count, "file_index_sum": total, "file_index_sumsq": squares,
                        "file_index_hash": f"{hashed:016x}"})
    return reports


def test_every_file_once_is_not_fooled_by_equal_moments():
    """{0,0,4,5} and {0,1,2,6} have the same count, sum and sum of squares (4, 9, 41): the
    hash sum tells them apart. So does every_file_once when ranks read 0,0,3,4,4,5,5 (files
    1, 2 and 6 never, 0, 4 and 5 twice) instead of 0..6, which the moments alone passed."""
    key = index_hash_key(42, 0)
    wrong, right = file_checks([0, 0, 4, 5], key), file_checks([0, 1, 2, 6], key)
    assert wrong[:3] == right[:3] == (4, 9, 41)
    assert wrong[3] != right[3]
    assert expected_file_checks(7, key)[:3] == file_checks([0, 0, 3, 4, 4, 5, 5], key)[:3]
    assert every_file_once(7, key, _rank_reports([[0, 1, 2], [3, 4, 5, 6]], key))
    assert not every_file_once(7, key, _rank_reports([[0, 0, 3], [4, 4, 5, 5]], key))
    assert not every_file_once(7, key, [{"files": 7}])  # a rank that reported nothing else


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 16), st.integers(0, 5), st.booleans(), st.integers(0, 2**63),
       st.data())
def test_every_file_once_passes_each_epoch_and_catches_any_change(num_files, size, epoch, shuffle, seed, data):
    """Every file once (any rank count, epoch, order) passes; one file read in place of
    another, one more or one fewer fails. The hash is keyed by seed and epoch, and the
    expected sum made a slice at a time equals the sum of the per-file hashes."""
    key = index_hash_key(seed, epoch)
    parts = [epoch_files(num_files, size, rank, epoch, shuffle, seed).tolist() for rank in range(size)]
    assert every_file_once(num_files, key, _rank_reports(parts, key))
    flat = [i for part in parts for i in part]
    position = data.draw(st.integers(0, num_files - 1))
    other = data.draw(st.integers(0, num_files + 3).filter(lambda v: v != flat[position]))
    changed = flat[:position] + [other] + flat[position + 1:]
    assert not every_file_once(num_files, key, _rank_reports([changed], key))
    assert not every_file_once(num_files, key, _rank_reports([flat + [other]], key))
    assert not every_file_once(num_files, key, _rank_reports([flat[:position] + flat[position + 1:]], key))
    assert key != index_hash_key(seed, epoch + 1) and key != index_hash_key(seed + 1, epoch)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**48), min_size=1, max_size=50), st.integers(0, MASK64))
def test_index_hash_vectorised_equals_scalar(indices, key):
    assert [int(h) for h in index_hashes(np.array(indices, dtype=np.uint64), key)] == \
        [index_hash(i, key) for i in indices]
    assert all(0 <= index_hash(i, key) <= MASK64 for i in indices)


def test_expected_file_checks_in_slices_with_bounded_memory():
    """Across slice boundaries the expected hash sum is the plain sum; for 10 million files
    rank 0 needs well under a megabyte beside the slice (docs/runs/2026-12-05-peers-journal.md)."""
    import tracemalloc

    key = index_hash_key(7, 2)
    n = 2 * HASH_SLICE + 3
    assert expected_file_checks(n, key) == file_checks(range(n), key)
    tracemalloc.start()
    try:
        expected_file_checks(10_000_000, key)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_shuffle_changes_each_epoch_and_is_seeded():
    a0 = epoch_files(1000, 4, 1, 0, True, 7)
    a1 = epoch_files(1000, 4, 1, 1, True, 7)
    assert not np.array_equal(a0, a1)
    assert np.array_equal(a0, epoch_files(1000, 4, 1, 0, True, 7))
    assert np.array_equal(epoch_files(1000, 4, 1, 0, False, 7), epoch_files(1000, 4, 1, 3, False, 9))


# -- record sizes and content ---------------------------------------------------------------


def test_record_sizes_seeded_normal_clipped():
    ds = DatasetConfig(num_files=4000, record_size=10000, record_size_stdev=2000, seed=5)
    sizes = np.array([record_size_of(ds, i) for i in range(ds.num_files)])
    assert sizes.mean() == pytest.approx(10000, rel=0.02)
    assert sizes.std() == pytest.approx(2000, rel=0.05)
    assert [record_size_of(ds, i) for i in range(10)] == sizes[:10].tolist()  # any rank, same answer
    assert record_sizes(ds, np.arange(ds.num_files)).tolist() == sizes.tolist()
    assert record_sizes(ds, [3999, 7]).tolist() == [sizes[3999], sizes[7]]
    other = DatasetConfig(num_files=4000, record_size=10000, record_size_stdev=2000, seed=6)
    assert [record_size_of(other, i) for i in range(10)] != sizes[:10].tolist()
    clipped = DatasetConfig(record_size=1, record_size_stdev=1000)
    assert min(record_size_of(clipped, i) for i in range(500)) == 1
    fixed = DatasetConfig(record_size=4096)
    assert {record_size_of(fixed, i) for i in range(50)} == {4096}


def test_file_names_deterministic_with_subfolders():
    ds = DatasetConfig(name="d", num_files=100000, format="npz", num_subfolders=16)
    assert file_key(ds, 1234) == "d/00002/img_0001234_of_0100000.npz"
    assert file_key(DatasetConfig(name="d", num_files=3, format="raw"), 2) == "d/img_0000002_of_0000003.bin"
    assert file_key(DatasetConfig(name="d", num_files=3, format="hdf5"), 0).endswith(".hdf5")


FORMATS = [("npz", None, "none"), ("hdf5", None, "none"), ("hdf5", 3000, "gzip"), ("hdf5", 100, "lzf"),
           ("raw", None, "none")]


@pytest.mark.parametrize("fmt,chunk,compression", FORMATS)
@pytest.mark.parametrize("alignment", [1, 512, 4096])
def test_encode_decode_roundtrip(fmt, chunk, compression, alignment):
    ds = DatasetConfig(num_files=8, samples_per_file=3, record_size=2000, record_size_stdev=700, format=fmt,
                       hdf5_chunk_size=chunk, compression=compression)
    sizes = set()
    for index in range(4):
        item = encode(ds, index, alignment)
        assert item.padded % alignment == 0 and item.padded - item.size < alignment
        assert item.size <= size_bound(ds, index)
        assert decode(ds, index, item.buffer, item.size, "f", verify=True) == 3
        order = np.array([2, 0, 1])
        assert decode(ds, index, item.buffer, item.size, "f", verify=True, sample_order=order) == 3
        sizes.add(item.size)
    assert len(sizes) > 1  # record sizes differ per file


def test_content_differs_per_file_and_is_not_zero():
    ds = DatasetConfig(num_files=4, samples_per_file=1, record_size=4096, format="raw")
    a = bytes(encode(ds, 0).view())
    b = bytes(encode(ds, 1).view())
    assert a != b and a.count(0) < 100


def test_decode_catches_damage():
    ds = DatasetConfig(num_files=2, samples_per_file=2, record_size=1000, format="raw")
    item = encode(ds, 0)
    with pytest.raises(VerifyError, match="expected 2 records"):
        decode(ds, 0, item.buffer, item.size - 1, "/x/f")
    damaged = bytearray(item.view())
    damaged[1500] ^= 0xFF
    with pytest.raises(VerifyError, match="byte 1500 differs"):
        decode(ds, 0, memoryview(damaged), item.size, "/x/f", verify=True)
    npz = DatasetConfig(num_files=2, samples_per_file=2, record_size=1000, format="npz")
    with pytest.raises(VerifyError, match="not a readable npz"):
        decode(npz, 0, memoryview(bytes(500)), 500, "/x/f")


def test_manifest_mismatch_names_keys():
    ds = DatasetConfig(num_files=10, format="npz")
    found = manifest_of(DatasetConfig(num_files=12, format="npz"), complete=True, total_bytes=5)
    assert manifest_mismatch(found, ds) == ["num_files=12 (config says 10)"]
    assert manifest_mismatch(manifest_of(ds, complete=True), ds) == []


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "mpibench-x", "a//b"])
def test_bad_dataset_names(name):
    with pytest.raises(ConfigError):
        check_dataset_name(name)


def test_report_lines_survive_partial_documents():
    for name in ("datagen", "train", "checkpoint"):
        assert get_workload(name).report_lines({}) == []


# -- one-rank runs on real files ------------------------------------------------------------


def one_rank() -> Comm:
    """A one-rank communicator, also when pytest itself runs under mpiexec."""
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover
        return Comm()
    return Comm(MPI.COMM_SELF)


def _config(root: str, workload: str, kind: str = "local_fs", **sections: dict) -> object:
    data: dict = {"workload": workload, "storage": {"type": kind, "root": root}}
    data.update(sections)
    return build_config(data)


DS = {"name": "ds", "num_files": 9, "samples_per_file": 2, "record_size": 3000, "record_size_stdev": 500,
      "format": "npz", "num_subfolders": 2}


def test_datagen_then_train_one_rank(tmp_path):
    root = str(tmp_path / "root")
    comm = one_rank()
    doc = execute(_config(root, "datagen", dataset=DS), comm, output=None)
    assert doc["complete"] and doc["datagen"]["files"] == 9
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(root, "ds"))
                  for f in fs if f.startswith("img_"))
    with open(os.path.join(root, "ds", ".mpibench-dataset.json")) as handle:
        manifest = json.load(handle)
    assert manifest["complete"] and manifest["total_bytes"] == on_disk == doc["phases"][0]["bytes"]
    # Only the dataset is left: the run directory is gone.
    assert sorted(os.listdir(root)) == ["ds"]
    train = {"epochs": 2, "batch_size": 3, "computation_time": 0.005, "read_threads": 2, "shuffle": "sample"}
    doc = execute(_config(root, "train", dataset=DS, train=train, verify=True), comm, output=None)
    t = doc["train"]
    assert t["every_file_once"] and t["bytes_match_dataset"]
    assert [e["bytes"] for e in t["epochs"]] == [on_disk, on_disk]
    assert all(p["cache"]["state"] == "cold" for p in doc["phases"])
    ranks = doc["phases"][0]["ranks"]
    assert ranks[0]["samples"] == 18 and ranks[0]["batches"] == 6
    assert ranks[0]["compute_s"] >= 6 * 0.005
    # datagen refuses the existing dataset; train refuses a config that differs from it.
    with pytest.raises(PreflightError, match="already holds a complete dataset"):
        execute(_config(root, "datagen", dataset=DS), comm, output=None)
    with pytest.raises(PreflightError, match="num_files=9 \\(config says 10\\)"):
        execute(_config(root, "train", dataset={**DS, "num_files": 10}), comm, output=None)
    assert sorted(os.listdir(root)) == ["ds"]


def test_train_reads_cached_files_in_the_rank_thread(tmp_path, monkeypatch):
    """train.read_threads auto on warm local_fs without compute: one reader, the rank's own
    thread (no reader thread started), every file read once; the choice is in the result."""
    import threading

    root = str(tmp_path / "root")
    comm = one_rank()
    ds = {"name": "ds", "num_files": 11, "samples_per_file": 2, "record_size": 512, "format": "npz"}
    execute(_config(root, "datagen", dataset=ds), comm, output=None)
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    train = {"epochs": 2, "batch_size": 3, "cache": "warm", "computation_time": 0}
    doc = execute(_config(root, "train", dataset=ds, train=train, verify=True), comm, output=None)
    t = doc["train"]
    assert t["every_file_once"] and t["bytes_match_dataset"] and t["read_threads"] == 1
    assert [e["files"] for e in t["epochs"]] == [11, 11] and t["samples"] == 44
    assert doc["auto_choices"]["read_threads"]["value"] == 1
    assert not [name for name in started if name.startswith("train-reader")]
    validate_document(doc)
    # With a compute to overlap, the automatic choice keeps its reader threads.
    started.clear()
    doc = execute(_config(root, "train", dataset=ds, train={**train, "computation_time": 0.001}), comm,
                  output=None)
    assert doc["train"]["every_file_once"] and doc["auto_choices"]["read_threads"]["value"] == 4
    readers = Counter(n for n in started if n.startswith("train-reader"))
    assert readers == {f"train-reader-{i}": 2 for i in range(4)}  # 4 reader threads in each of 2 epochs


def test_au_counts_the_configured_compute_not_the_oversleep(tmp_path, monkeypatch):
    """The emulated compute oversleeps (here by 15 ms per sleep of a 20 ms step): AU is the
    configured compute time over the wall time, so the lost time lowers AU; the measured
    time is recorded beside it and the report names the overshoot."""
    import time
    import types

    from mpibench.workloads import train as train_module

    root = str(tmp_path / "root")
    comm = one_rank()
    ds = {"name": "ds", "num_files": 8, "samples_per_file": 1, "record_size": 4096, "format": "raw"}
    execute(_config(root, "datagen", dataset=ds), comm, output=None)
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(
        perf_counter=time.perf_counter, perf_counter_ns=time.perf_counter_ns,
        sleep=lambda seconds: time.sleep(seconds + 0.015)))
    step = 0.02
    train = {"epochs": 1, "batch_size": 1, "computation_time": step, "read_threads": 2, "prefetch": 4}
    doc = execute(_config(root, "train", dataset=ds, train=train), comm, output=None)
    rank = doc["phases"][0]["ranks"][0]
    assert rank["batches"] == 8
    assert rank["compute_s"] == pytest.approx(8 * step)
    assert rank["compute_measured_s"] >= 8 * (step + 0.015)
    assert rank["au_pct"] == pytest.approx(100 * step * 7 / rank["au_wall_s"])
    assert rank["au_pct"] < 100 * step / (step + 0.015) + 1  # at most about 57 %, not about 100 %
    t = doc["train"]
    assert t["compute_measured_s_per_batch"] >= step + 0.015
    assert t["compute_overshoot_pct"] >= 70
    assert any(line.startswith("note: the emulated compute slept") for line in get_workload("train").report_lines(doc))


def test_train_without_dataset_says_run_datagen(tmp_path):
    with pytest.raises(PreflightError, match="run datagen first"):
        execute(_config(str(tmp_path), "train", dataset=DS), one_rank(), output=None)


def test_checkpoint_one_rank_emulating_eight(tmp_path):
    root = str(tmp_path / "ck")
    ck = {"model": "llama3-8b", "ranks": 8, "scale": 0.0002, "num_checkpoints_write": 2,
          "num_checkpoints_read": 1, "verify": True, "transfer_size": "1MiB"}
    doc = execute(_config(root, "checkpoint", "direct_fs", checkpoint=ck), one_rank(), output=None)
    c = doc["checkpoint"]
    assert c["scaled"] and c["emulated_ranks"] == 8 and c["world_size"] == 1
    assert [p["name"] for p in doc["phases"]] == ["write", "write", "read"]
    assert all(p["bytes"] == c["bytes_per_checkpoint"] for p in doc["phases"])
    assert doc["phases"][0]["ranks"][0]["files"] == 16
    assert c["bytes_per_checkpoint"] == pytest.approx(105 * 2**30 * 0.0002, rel=0.01)
    assert set(c["write"]["bandwidth_GiBps"]) == {"mean", "median", "min", "max"}
    assert not os.path.exists(root)  # created by the run, removed with its files


def test_checkpoint_rank_count_must_match(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint of 8 ranks"):
        execute(_config(str(tmp_path), "checkpoint", checkpoint={"model": "llama3-8b", "scale": 0.001}),
                one_rank(), output=None)
    with pytest.raises(ConfigError, match="num_checkpoints_read=3"):
        execute(_config(str(tmp_path), "checkpoint", checkpoint={
            "model": "llama3-8b", "ranks": 8, "scale": 0.001, "num_checkpoints_write": 2,
            "num_checkpoints_read": 3}), one_rank(), output=None)


def test_huge_pages_need_transparent_huge_pages(monkeypatch):
    """huge_pages on a host whose transparent huge pages are off: one line naming the fix."""
    for mode, said in (("never", "off (never)"), ("", "not available in this kernel")):
        monkeypatch.setattr(buffers, "transparent_huge_pages", lambda mode=mode: mode)
        with pytest.raises(PreflightError, match=rf"transparent huge pages are {re.escape(said)}") as caught:
            check_huge_pages()
        assert "huge_pages: false" in caught.value.line()
    monkeypatch.setattr(buffers, "transparent_huge_pages", lambda: "madvise")
    assert "2 MiB transparent huge pages" in check_huge_pages()


def test_memory_estimate_counts_huge_pages_whole():
    """The preflight's buffer estimate uses what a buffer really takes: whole 2 MiB pages."""
    workload = get_workload("bandwidth")
    data = {"workload": "bandwidth", "storage": {"type": "direct_fs", "root": "/x"},
            "io": {"depth": 4}, "bandwidth": {"transfer_size": "1MiB", "block_size": "64MiB"}}
    plain, _, _ = workload.buffer_bytes(build_config(data), 2, 2, 4)
    huge, _, _ = workload.buffer_bytes(build_config({**data, "huge_pages": True}), 2, 2, 4)
    assert plain == 6 * 2**20 and huge == 6 * 2 * 2**20  # io_depth working buffers + 2 bases


# A worker thread (as s3dlio's are: a heap of their own) allocates six 1 MiB blocks, writes
# them and frees them, 60 rounds, after one 2 MiB block that sets glibc's thresholds as a
# first large response would; prints the minor page faults per round over the last 50.
HEAP_ROUNDS = """
import ctypes, json, resource, sys, threading
from mpibench.buffers import keep_freed_heap
state = keep_freed_heap() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rounds(out):
    first = libc.malloc(2 << 20); ctypes.memset(first, 1, 2 << 20); libc.free(first)
    for i in range(60):
        if i == 10:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(1 << 20) for _ in range(6)]
        for block in blocks:
            ctypes.memset(block, 1, 1 << 20)
        for block in blocks:
            libc.free(block)
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 50)
out = []
worker = threading.Thread(target=rounds, args=(out,))
worker.start()
worker.join()
print(json.dumps({"faults_per_round": out[0], "state": state}))
"""


def _heap_rounds(mode: str, **env: str) -> dict:
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    proc = subprocess.run([sys.executable, "-c", HEAP_ROUNDS, mode], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))} | env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_freed_heap_is_kept_for_the_next_requests():
    """glibc gives the top of a heap back to the kernel once more than its trim threshold is
    free there, and the next round faults every page in again (1.5 thousand per round of
    6 MiB here); with keep_freed_heap, as the s3 backends call it, the pages stay."""
    default = _heap_rounds("default")
    kept = _heap_rounds("keep")
    assert default["faults_per_round"] > 1000, default
    assert kept["faults_per_round"] < 20, kept
    assert kept["state"] == {"applied": True, **buffers.KEEP_HEAP}


def test_freed_heap_leaves_the_users_malloc_settings():
    """A trim threshold the user set (MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES) stays theirs."""
    state = _heap_rounds("keep", MALLOC_TRIM_THRESHOLD_="65536")["state"]
    assert state["trim_threshold"] == "set by the user"
    assert state["mmap_threshold"] == buffers.KEEP_HEAP["mmap_threshold"]
    state = _heap_rounds("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")["state"]
    assert state["mmap_threshold"] == "set by the user" and state["applied"] is True
