"""direct_fs through s3dlio's direct:// at several ranks (mpiexec -n 2|4 pytest --with-mpi)."""

from __future__ import annotations

import os

import pytest

from mpibench.backends.base import StoragePlan
from mpibench.backends.s3dlio_direct import PART_SUFFIX, S3dlioDirectBackend
from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.run import execute

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]

MiB = 2**20


def direct_config(root: str, workload: str = "bandwidth", **sections: object):
    data: dict = {"workload": workload, "storage": {"type": "direct_fs", "library": "s3dlio", "root": root}}
    data.update(sections)
    return build_config(data)


@pytest.mark.parametrize("transfer", [4 * MiB, 1 * MiB], ids=["one-put-per-file", "one-put-per-transfer"])
def test_bandwidth_through_direct_uri(shared_tmpdir, transfer):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    block = 4 * MiB
    config = direct_config(root, bandwidth={"transfer_size": transfer, "block_size": block, "iterations": 2},
                           io={"depth": 2}, verify=True, keep_files=True)
    doc = execute(config, comm, output=None)
    run_id = comm.bcast(doc["run_id"] if comm.is_root else None)
    folder = os.path.join(root, f"mpibench-{run_id}", "bandwidth")
    mine = os.path.join(folder, f"rank-{comm.rank:06d}.dat")
    if transfer == block:
        assert os.path.isfile(mine) and os.path.getsize(mine) == block
    else:  # several writes: a folder of one O_DIRECT file per write, named by offset
        parts = sorted(os.listdir(mine))
        assert parts == [f"{i * transfer:020d}{PART_SUFFIX}" for i in range(block // transfer)]
    if comm.is_root:
        assert doc["complete"] is True
        assert [p["bytes"] for p in doc["phases"]] == [comm.size * block] * 4
        read = doc["phases"][1]
        assert read["verified"] is True and read["cache"]["state"] == "direct"
        backend = doc["environment"]["backend"]
        assert backend["backend"] == "s3dlio_direct" and backend["library"] == "s3dlio"
        assert any("O_DIRECT works" in check for check in doc["preflight"]["checks"])
    comm.barrier()
    # What keep_files left is removed the way a run ends (by name), and nothing else is left.
    backend = S3dlioDirectBackend(config.storage, alignment=doc["environment"]["direct_io_alignment"]
                                  if comm.is_root else 4096)
    backend.remove(f"mpibench-{run_id}/bandwidth/rank-{comm.rank:06d}.dat")
    comm.barrier()
    if comm.is_root:
        S3dlioDirectBackend.undo(config, StoragePlan(run_key=f"mpibench-{run_id}", created_root=True))
        assert not os.path.exists(root)
    comm.barrier()


def test_datagen_train_checkpoint_through_direct_uri(shared_tmpdir):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    dataset = {"name": "ds", "num_files": 3 * comm.size + 1, "samples_per_file": 2, "record_size": 10000,
               "record_size_stdev": 3000, "format": "npz"}  # sizes not aligned: padded puts, then truncate
    gen = execute(direct_config(root, "datagen", dataset=dataset), comm, output=None)
    doc = execute(direct_config(root, "train", dataset=dataset, train={"epochs": 2, "read_threads": 2},
                                verify=True), comm, output=None)
    ck = execute(direct_config(root, "checkpoint", checkpoint={
        "model": "llama3-8b", "ranks": 8, "scale": 0.0002, "num_checkpoints_write": 1, "num_checkpoints_read": 1,
        "verify": True, "transfer_size": MiB}), comm, output=None)
    if comm.is_root:
        assert doc["train"]["every_file_once"] and doc["train"]["bytes_match_dataset"]
        assert doc["train"]["bytes"] == 2 * gen["datagen"]["bytes"]
        assert ck["complete"] and all(p["verified"] for p in ck["phases"] if p["name"] == "read")
        assert sorted(os.listdir(root)) == ["ds"]  # the checkpoint run removed all it wrote
    comm.barrier()
