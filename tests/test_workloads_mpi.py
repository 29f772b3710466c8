"""datagen, train and checkpoint on real files at several ranks (mpiexec -n 2|4 ... --with-mpi)."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from mpi4py import MPI

from mpibench.backends.base import READ_FOREIGN
from mpibench.backends.posix import PosixBackend
from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.errors import PreflightError
from mpibench.formats import MANIFEST_NAME
from mpibench.run import execute

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]


def config(root: str, workload: str, kind: str, **sections: object):
    data: dict = {"workload": workload, "storage": {"type": kind, "root": root}}
    data.update(sections)
    return build_config(data)


@pytest.fixture
def opened(monkeypatch):
    """Every (key, mode) this rank opens through a POSIX backend."""
    seen: list[tuple[str, str]] = []
    original = PosixBackend.open

    def spy(self, key, mode):
        seen.append((key, mode))
        return original(self, key, mode)

    monkeypatch.setattr(PosixBackend, "open", spy)
    return seen


def dataset_files(root: str, name: str) -> dict[str, int]:
    """Size of every data file of a dataset, by key relative to the root."""
    found = {}
    for current, _dirs, files in os.walk(os.path.join(root, name)):
        for f in files:
            if f.startswith("img_"):
                path = os.path.join(current, f)
                found[os.path.relpath(path, root)] = os.path.getsize(path)
    return found


def reads_per_file(opened: list[tuple[str, str]], name: str) -> Counter:
    """How often each dataset file was opened for reading, over all ranks."""
    mine = Counter(key for key, mode in opened if mode in ("r", READ_FOREIGN) and key.startswith(name + "/")
                   and not key.endswith(MANIFEST_NAME))
    total: Counter = Counter()
    for counts in MPI.COMM_WORLD.allgather(mine):
        total.update(counts)
    return total


COMPUTE = 0.05
FORMATS = [("npz", {}), ("hdf5", {"hdf5_chunk_size": 4096, "compression": "gzip"}), ("raw", {})]


@pytest.mark.parametrize("kind", ["direct_fs", "local_fs"])
@pytest.mark.parametrize("fmt,extra", FORMATS, ids=[f[0] for f in FORMATS])
def test_datagen_then_train(shared_tmpdir, opened, kind, fmt, extra):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    epochs = 2
    dataset = {"name": "ds", "num_files": 8 * comm.size + 1, "samples_per_file": 1, "record_size": 6000,
               "record_size_stdev": 2000, "format": fmt, "num_subfolders": 3, **extra}
    gen = execute(config(root, "datagen", kind, dataset=dataset), comm, output=None)
    train = {"epochs": epochs, "batch_size": 2, "read_threads": 2, "computation_time": COMPUTE, "prefetch": 2,
             "shuffle": "file"}
    doc = execute(config(root, "train", kind, dataset=dataset, train=train, verify=True), comm, output=None)
    counts = reads_per_file(opened, "ds")
    comm.barrier()
    on_disk = dataset_files(root, "ds")
    # Every file read exactly once per epoch, across all ranks.
    assert set(counts) == set(on_disk) and set(counts.values()) == {epochs}
    if not comm.is_root:
        return
    total = sum(on_disk.values())
    assert len(on_disk) == dataset["num_files"]
    with open(os.path.join(root, "ds", MANIFEST_NAME)) as handle:
        assert json.load(handle)["total_bytes"] == total
    assert gen["datagen"]["bytes"] == total and gen["datagen"]["files"] == dataset["num_files"]
    t = doc["train"]
    assert t["every_file_once"] and t["bytes_match_dataset"]
    assert [p["bytes"] for p in doc["phases"]] == [total] * epochs  # bytes read = bytes on disk
    assert {p["cache"]["state"] for p in doc["phases"]} == {"direct" if kind == "direct_fs" else "cold"}
    # Reads and decoding of these small files hide behind the 50 ms compute (prefetch): AU
    # is close to 100% (the margin is for busy CI machines with fewer cores than ranks).
    assert 75.0 <= t["au_pct_mean"] <= 100.5, t
    for phase in doc["phases"]:
        for r in phase["ranks"]:
            assert r["compute_s"] == pytest.approx(r["batches"] * COMPUTE)  # the configured time
            assert r["compute_measured_s"] >= r["compute_s"] * 0.99  # sleeps never end early
            if r["au_pct"] is not None:  # AU counts the configured compute, not the oversleep
                assert r["au_pct"] == pytest.approx(100 * COMPUTE * (r["batches"] - 1) / r["au_wall_s"])
            assert len(r["file_index_hash"]) == 16
            # AU% = compute of batches 1.. / wall time after batch 0: at most 100%.
            assert r["au_pct"] is None or 0 < r["au_pct"] <= 100.5
    assert t["samples"] == epochs * dataset["num_files"]


@pytest.mark.parametrize("num_files", ["fewer", "one_more"])
def test_uneven_shares_finish(shared_tmpdir, opened, num_files):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    n = comm.size - 1 if num_files == "fewer" else comm.size + 1  # a rank with nothing / one with more
    dataset = {"name": "u", "num_files": n, "samples_per_file": 3, "record_size": 1000, "format": "raw"}
    execute(config(root, "datagen", "local_fs", dataset=dataset), comm, output=None)
    train = {"epochs": 3, "batch_size": 2, "read_threads": 3, "computation_time": 0.001, "shuffle": "sample"}
    doc = execute(config(root, "train", "direct_fs", dataset=dataset, train=train), comm, output=None)
    counts = reads_per_file(opened, "u")
    assert len(counts) == n and set(counts.values()) == {3}
    if comm.is_root:
        assert doc["complete"] and doc["train"]["every_file_once"]
        samples = sorted(r["samples"] for r in doc["phases"][0]["ranks"])
        assert max(samples) - min(samples) == 3  # files differ by at most one per rank


def test_datagen_refuses_an_existing_dataset_on_every_rank(shared_tmpdir):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    dataset = {"name": "d", "num_files": 4, "record_size": 100, "format": "raw"}
    execute(config(root, "datagen", "local_fs", dataset=dataset), comm, output=None)
    with pytest.raises(PreflightError, match="already holds a complete dataset"):
        execute(config(root, "datagen", "local_fs", dataset=dataset), comm, output=None)


@pytest.mark.parametrize("kind", ["direct_fs", "local_fs"])
def test_scaled_llama3_8b_write_read_verify(shared_tmpdir, kind):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "ck")
    ck = {"model": "llama3-8b", "ranks": 8, "scale": 0.0005, "num_checkpoints_write": 2,
          "num_checkpoints_read": 2, "verify": True, "transfer_size": "1MiB"}
    doc = execute(config(root, "checkpoint", kind, checkpoint=ck), comm, output=None)
    comm.barrier()
    assert not os.path.exists(root)  # shards and folders removed, root leaf too
    if not comm.is_root:
        return
    c = doc["checkpoint"]
    assert c["scaled"] and c["world_size"] == comm.size and c["emulated_ranks"] == 8
    assert [p["name"] for p in doc["phases"]] == ["write", "write", "read", "read"]
    for phase in doc["phases"]:
        assert phase["bytes"] == c["bytes_per_checkpoint"]
        assert sum(r["files"] for r in phase["ranks"]) == 16  # model + optimizer of 8 ranks
        assert phase["scaled"] is True
    reads = [p for p in doc["phases"] if p["name"] == "read"]
    assert all(p["verified"] for p in reads)
    assert {p["cache"]["state"] for p in reads} == {"direct" if kind == "direct_fs" else "cold"}
    assert all(p["written_by"] != 0 for p in reads)  # rank 0 reads another rank's shards
    for op in ("write", "read"):
        stats = c[op]["bandwidth_GiBps"]
        assert stats["min"] <= stats["median"] <= stats["max"] and stats["mean"] > 0
        assert len(c[op]["checkpoints"]) == 2
