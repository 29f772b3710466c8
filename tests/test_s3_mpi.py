"""Every workload on a real S3 server at several ranks (mpiexec -n 2|4 pytest --with-mpi).

Each test checks, with a listing independent of s3dlio, that the bytes the results
report are the bytes stored, and that the bucket is exactly as it was afterwards.
"""

from __future__ import annotations

from collections import Counter

import pytest
from s3fixture import PREFIX, S3Server, assert_untouched, s3_fixture  # noqa: F401

from mpibench.backends.base import StoragePlan
from mpibench.backends.s3 import S3Backend
from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.formats import MANIFEST_NAME
from mpibench.plan import RUN_MARKER
from mpibench.run import execute

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.s3, pytest.mark.timeout(120)]

MiB = 2**20


def s3_config(s3: S3Server, workload: str, **sections: object):
    data: dict = {"workload": workload, "storage": {"type": "s3", "root": s3.root}}
    for name, value in sections.items():
        data[name] = value
    return build_config(data)


@pytest.fixture
def opened(monkeypatch):
    """Every (key, mode) this rank opens through the S3 backend."""
    seen: list[tuple[str, str]] = []
    original = S3Backend.open

    def spy(self, key, mode):
        seen.append((key, mode))
        return original(self, key, mode)

    monkeypatch.setattr(S3Backend, "open", spy)
    return seen


def run_prefix(doc: dict) -> str:
    return f"{PREFIX}/mpibench-{doc['run_id']}/"


def stored_under(s3: S3Server, prefix: str) -> dict[str, int]:
    """The run's objects (the run marker aside)."""
    return {k: v for k, v in s3.listing(prefix).items() if not k.endswith(RUN_MARKER)}


def finish_kept_run(comm: Comm, s3: S3Server, config, doc: dict | None) -> None:
    """Delete a keep_files run's objects the way the end of a run does (rank 0)."""
    if comm.is_root:
        assert doc is not None
        S3Backend.undo(config, StoragePlan(run_key=f"mpibench-{doc['run_id']}"))
    comm.barrier()


@pytest.mark.parametrize("object_size", [None, 1 * MiB, 2 * MiB], ids=["per-block", "per-transfer", "2-transfers"])
def test_bandwidth_bytes_stored_and_cleanup(s3, object_size):
    comm = Comm()
    before = s3.listing()
    comm.barrier()
    block, transfer, iterations = 4 * MiB, 1 * MiB, 2
    bandwidth = {"transfer_size": transfer, "block_size": block, "iterations": iterations}
    if object_size:
        bandwidth["object_size"] = object_size
    config = s3_config(s3, "bandwidth", bandwidth=bandwidth, io={"depth": 2}, verify=True, keep_files=True)
    doc = execute(config, comm, output=None)
    if comm.is_root:
        assert doc["complete"] is True
        assert [p["name"] for p in doc["phases"]] == ["write", "read"] * iterations
        for phase in doc["phases"]:
            assert phase["bytes"] == comm.size * block
            assert phase["cache"]["state"] == "object"  # no client cache, and not O_DIRECT
        stored = stored_under(s3, run_prefix(doc))
        per_rank = block // (object_size or block)
        assert len(stored) == comm.size * per_rank
        assert sum(stored.values()) == doc["phases"][-2]["bytes"]  # the last write, overwritten in place
        backend = doc["environment"]["backend"]
        assert backend["endpoints"] == [s3.endpoint] and backend["library"] == "s3dlio"
        assert backend["library_version"] and backend["objects"]["object_size_bytes"] == (object_size or block)
        assert backend["credentials"]["access_key_id"] == "..." + s3.access_key[-4:]
    finish_kept_run(comm, s3, config, doc)
    if comm.is_root:
        assert_untouched(s3, before)
    comm.barrier()


def test_bandwidth_cleans_up_without_keep_files(s3):
    comm = Comm()
    before = s3.listing()
    comm.barrier()
    config = s3_config(s3, "bandwidth", bandwidth={"transfer_size": MiB, "block_size": 2 * MiB, "iterations": 1,
                                                   "object_size": MiB, "access": "random"}, verify=True)
    doc = execute(config, comm, output=None)
    comm.barrier()
    if comm.is_root:
        assert doc["complete"] and doc["phases"][0]["bytes"] == 2 * MiB * comm.size
        assert_untouched(s3, before)


def test_datagen_then_train_reads_every_object_once(s3, opened):
    comm = Comm()
    before = s3.listing()
    comm.barrier()
    epochs = 2
    dataset = {"name": f"{PREFIX}-ds-{comm.size}", "num_files": 5 * comm.size + 1, "samples_per_file": 2,
               "record_size": 20000, "record_size_stdev": 3000, "format": "npz", "num_subfolders": 2}
    # The dataset is the product: it lives beside the run prefixes, under the root.
    gen = execute(s3_config(s3, "datagen", dataset=dataset), comm, output=None)
    train = {"epochs": epochs, "batch_size": 2, "read_threads": 3, "prefetch": 2, "shuffle": "file"}
    doc = execute(s3_config(s3, "train", dataset=dataset, train=train, verify=True), comm, output=None)
    mine = Counter(key for key, mode in opened if mode == "r" and "img_" in key)
    counts = Counter()
    for part in comm._comm.allgather(mine):
        counts.update(part)
    if comm.is_root:
        folder = f"{PREFIX}/{dataset['name']}/"
        stored = s3.listing(folder)
        files = {k: v for k, v in stored.items() if "img_" in k}
        assert len(files) == dataset["num_files"] and folder + MANIFEST_NAME in stored
        assert sum(files.values()) == gen["datagen"]["bytes"]
        assert len(counts) == dataset["num_files"] and set(counts.values()) == {epochs}
        t = doc["train"]
        assert t["every_file_once"] and t["bytes_match_dataset"]
        assert [e["bytes"] for e in t["epochs"]] == [gen["datagen"]["bytes"]] * epochs
        assert all(e["cache"] == "object" for e in t["epochs"])
        s3.delete(list(stored))
        assert_untouched(s3, before)
    comm.barrier()


def test_checkpoint_multipart_verify_and_bytes(s3):
    comm = Comm()
    before = s3.listing()
    comm.barrier()
    # Optimizer shards of 6.7 MiB, model shards of 0.4 MiB: 54 MiB per checkpoint.
    checkpoint = {"model": "llama3-8b", "ranks": 8, "scale": 0.0006, "num_checkpoints_write": 2,
                  "num_checkpoints_read": 1, "verify": True, "transfer_size": MiB}
    # 5 MiB parts of 1 MiB writes: every shard of more than one transfer is a multipart upload.
    config = build_config({"workload": "checkpoint", "keep_files": True,
                           "storage": {"type": "s3", "root": s3.root, "part_size": "5MiB", "parts_in_flight": 2},
                           "checkpoint": checkpoint})
    doc = execute(config, comm, output=None)
    if comm.is_root:
        assert doc["complete"] is True
        phases = doc["phases"]
        assert [p["name"] for p in phases] == ["write", "write", "read"]
        assert all(p["verified"] for p in phases if p["name"] == "read")
        assert len({p["bytes"] for p in phases}) == 1
        stored = stored_under(s3, run_prefix(doc))
        assert sum(stored.values()) == sum(p["bytes"] for p in phases if p["name"] == "write")
        assert max(stored.values()) > 5 * MiB  # at least one shard went up in several parts
    finish_kept_run(comm, s3, config, doc)
    if comm.is_root:
        assert_untouched(s3, before)
    comm.barrier()


@pytest.mark.parametrize("object_size", [None, 1 * MiB], ids=["ranged", "whole-objects"])
def test_reader_copies_only_what_is_looked_at(s3, object_size):
    """The engine's S3 reader: with keep (verification on) the bytes land in the buffer;
    without, the same GETs count the same bytes and leave the buffer alone, as a plain
    s3dlio.get loop would (no copy)."""
    comm = Comm()
    before = s3.listing()
    comm.barrier()
    storage = build_config({"workload": "bandwidth", "storage": {"type": "s3", "root": s3.root}}).storage
    backend = S3Backend(storage, object_size=object_size, transfer_size=MiB)
    key = f"reader-test/rank-{comm.rank}"
    data = bytes(range(256)) * (2 * MiB // 256)
    handle = backend.open(key, "w")
    for offset in (0, MiB):
        assert backend.write_at(handle, memoryview(data)[offset:offset + MiB], offset) == MiB
    backend.close(handle)
    for keep in (False, True):
        buf = bytearray(MiB)
        read = backend.reader(backend.open(key, "r"), memoryview(buf), keep=keep)
        assert read(MiB) == MiB
        assert bytes(buf) == (data[MiB:] if keep else bytes(MiB))
    backend.remove(key)
    comm.barrier()
    if comm.is_root:
        assert_untouched(s3, before)
