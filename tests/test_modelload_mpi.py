"""modelload at several ranks (mpiexec -n 2|4 ... --only-mpi): every reader on local_fs,
direct_fs (native and s3dlio direct://) and S3, and a real FUSE mount (bindfs) with and
without direct_io. Counts are asserted, never speed: the bytes the processes read, the
block device's bytes as a lower bound (other processes may read the same disk), mincore
residency, page faults and the probe's findings."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest
from s3fixture import S3Server, s3_fixture  # noqa: F401

from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.errors import PreflightError
from mpibench.run import execute
from mpibench.safetensors_layout import model_files

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(240)]

MODEL = {"model": "llama3-8b", "scale": 0.002, "shard_size": "16MB", "buffer_size": "1MiB"}


def config(root: str, workload: str, kind: str = "local_fs", library: str = "native", name: str = "m",
           **ml: object):
    return build_config({"workload": workload, "storage": {"type": kind, "root": root, "library": library},
                         "dataset": {"name": name, "format": "safetensors", "seed": 7},
                         "modelload": {**MODEL, **ml}})


def write_model(root: str, kind: str = "local_fs", name: str = "m") -> None:
    execute(config(root, "datagen", kind, name=name), Comm(), output=None)


def the_model():
    return model_files("llama3-8b", 0.002, 16 * 10**6)


def assert_load_figures(doc: dict, reader: str, size: int) -> None:
    """What every load records, recomputed from the per-rank values."""
    m = doc["modelload"]
    assert m["reader"] == reader and [r["load"] for r in m["loads"]] == ["cold", "warm"]
    for phase, row in zip(doc["phases"], m["loads"], strict=True):
        ranks = phase["ranks"]
        assert phase["name"] == f"{row['load']}_load" and len(ranks) == size
        total = sum(r["bytes"] for r in ranks)
        span = max(r["end"] for r in ranks) - min(r["start"] for r in ranks)
        assert row["bytes_touched"] == total == phase["bytes"]
        assert row["bandwidth_GBps"] == pytest.approx(total / 1e9 / span)
        assert row["first_tensor_s"]["max"] == max(r["first_tensor_s"] for r in ranks)
        assert all(0 < r["first_tensor_s"] <= r["end"] - r["start"] for r in ranks)
        assert row["tensor_bytes"] == sum(r["tensor_bytes"] for r in ranks)
        assert all(r["bytes"] >= r["tensor_bytes"] + r["header_bytes"] for r in ranks)
        assert all(r["major_faults"] >= 0 and r["minor_faults"] >= 0 for r in ranks)
        assert phase["cache"]["load"] == row["load"]


@pytest.mark.parametrize("reader", ["mmap", "read"])
def test_local_fs_cold_reads_the_model_once_per_node_and_warm_from_memory(shared_tmpdir, reader):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "data")
    os.makedirs(root, exist_ok=True)
    write_model(root)
    doc = execute(config(root, "modelload", reader=reader), comm, output=None)
    assert os.path.isfile(os.path.join(root, "m", "model.safetensors.index.json"))  # the model stays
    if not comm.is_root:
        return
    model = the_model()
    assert_load_figures(doc, reader, comm.size)
    cold, warm = doc["phases"]
    assert cold["cache"]["state"] == "cold" and cold["cache"]["evicted"] and cold["cache"]["confirmed"]
    assert cold["cache"]["resident_before_max_fraction"] == 0.0
    assert all(r["resident_before_bytes"] == 0 and r["resident_after_bytes"] == model.file_bytes
               for r in cold["ranks"])
    assert all(r["tensor_bytes"] == model.tensor_bytes for r in cold["ranks"])  # replicated
    (node,) = cold["nodes"]  # one node: its ranks share one page cache
    assert node["storage_bytes_needed"] == model.file_bytes
    # What the ranks' processes read from storage: each page once on the node (within 2 %).
    assert node["process_read_bytes"] == pytest.approx(model.file_bytes, rel=0.02)
    if node["device_read_bytes"] is not None:  # the whole disk: others may add, none may take away
        assert node["device_read_bytes"] >= 0.98 * model.file_bytes
    if reader == "mmap":
        assert sum(r["major_faults"] for r in cold["ranks"]) > 0
    assert warm["cache"]["state"] == "warm"
    if all(r["resident_before_bytes"] == model.file_bytes for r in warm["ranks"]):
        assert warm["cache"]["served_from_memory"] is True
        assert warm["storage_bytes"]["read_bytes"] == 0
        assert doc["modelload"]["loads"][1]["served_from_memory"] is True


@pytest.mark.parametrize("library", ["native", "s3dlio"])
@pytest.mark.parametrize("layout", ["replicated", "tensor_parallel", "pipeline_parallel"])
def test_direct_fs_reads_aligned_extents_every_load(shared_tmpdir, library, layout):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "data")
    os.makedirs(root, exist_ok=True)
    write_model(root, "direct_fs")
    doc = execute(config(root, "modelload", "direct_fs", library, layout=layout), comm, output=None)
    if not comm.is_root:
        return
    assert_load_figures(doc, "direct", comm.size)
    model = the_model()
    loads = doc["modelload"]["loads"]
    needed = loads[0]["storage_bytes_needed"]
    # Every rank's aligned runs, cold and warm alike: O_DIRECT bypasses the page cache.
    assert all(r["bytes_touched"] == needed for r in loads)
    for phase in doc["phases"]:
        assert phase["cache"]["state"] == "direct" and phase["cache"]["resident_before_max_fraction"] == 0.0
        assert all(r["resident_after_bytes"] == 0 for r in phase["ranks"])
        if library == "native":  # the process's own reads, a shard's last block counted whole
            extra = phase["storage_bytes"]["read_bytes"] - phase["bytes"]
            assert 0 <= extra < 4096 * len(model.shards) * comm.size
        (node,) = phase["nodes"]
        if node["device_read_bytes"] is not None:
            assert node["device_read_bytes"] >= 0.98 * needed
    if layout == "replicated":
        assert needed >= comm.size * model.file_bytes
    else:  # each rank its part: together the model once, plus alignment
        assert model.tensor_bytes <= needed < comm.size * model.file_bytes


@pytest.mark.s3
@pytest.mark.parametrize("fetch", ["ranges", "objects"])
def test_s3_ranged_gets_of_every_tensor(s3, fetch):
    comm = Comm()
    root = f"{s3.root}/modelload-{comm.size}-{fetch}"
    write_model(root, "s3")
    try:
        doc = execute(config(root, "modelload", "s3", layout="tensor_parallel", s3_fetch=fetch), comm, output=None)
        if comm.is_root and fetch == "objects":  # every rank every byte of every shard, whatever it needs
            assert all(p["bytes"] == comm.size * the_model().file_bytes for p in doc["phases"])
        if comm.is_root:
            assert_load_figures(doc, "s3", comm.size)
            model = the_model()
            stored = s3.listing(f"{root[len('s3://'):].split('/', 1)[1]}/m/")
            assert sorted(stored.values())[-3:] == sorted(s.file_bytes for s in model.shards)[-3:]
            for phase in doc["phases"]:
                assert phase["cache"]["state"] == "object"
                assert all(r["resident_before_bytes"] is None for r in phase["ranks"])
                assert sum(r["tensor_bytes"] for r in phase["ranks"]) >= model.tensor_bytes
    finally:
        comm.barrier()
        if comm.is_root:
            s3.delete(list(s3.listing(f"{root[len('s3://'):].split('/', 1)[1]}/")))
        comm.barrier()


# -- a real FUSE mount -------------------------------------------------------------------------------
def fuse_skip_reason() -> str | None:
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (apt-get install bindfs)"
    if os.geteuid() != 0:
        return "mounting bindfs with allow_other for every rank needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    return None


@contextlib.contextmanager
def bindfs(source: str, target: str, direct_io: bool):
    """Rank 0 mounts `source` at `target` (with -o direct_io or not); unmounted in any case."""
    comm = Comm()
    error = None
    if comm.is_root:
        os.makedirs(target, exist_ok=True)
        args = ["bindfs", *(["-o", "direct_io"] if direct_io else []), source, target]
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
        error = None if done.returncode == 0 else f"bindfs failed: {done.stderr.strip()}"
    error = comm.bcast(error)
    if error is not None:
        pytest.fail(error)
    try:
        yield target
    finally:
        comm.barrier()
        if comm.is_root:
            subprocess.run(["fusermount", "-u", target], capture_output=True, timeout=30, check=False)
            if os.path.ismount(target):
                subprocess.run(["umount", "-l", target], capture_output=True, timeout=30, check=False)
        comm.barrier()


@pytest.mark.parametrize("direct_io", [False, True], ids=["cached", "direct_io"])
def test_bindfs_probe_refusal_and_loads(shared_tmpdir, direct_io):
    reason = fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    comm = Comm()
    backing = os.path.join(shared_tmpdir, "data")
    os.makedirs(backing, exist_ok=True)
    write_model(backing)
    with bindfs(backing, os.path.join(shared_tmpdir, "fuse"), direct_io) as mount:
        refused = None
        try:
            shared = execute(config(mount, "modelload", mmap_mapping="shared"), comm, output=None)
        except PreflightError as exc:
            refused = exc.line()
        # safetensors' private mapping is accepted either way; the backing files are evicted too
        doc = execute(config(mount, "modelload", backing_root=backing), comm, output=None)
        read = execute(config(mount, "modelload", reader="read", backing_root=backing), comm, output=None)
    if direct_io:  # MAP_SHARED is refused by the kernel on a direct_io file: one line, every rank
        assert refused is not None and refused.startswith(
            f"mmap (MAP_SHARED) on this FUSE mount {mount} fails with ENODEV: it is mounted with direct_io "
            "without FUSE_DIRECT_IO_ALLOW_MMAP; use modelload.mmap_mapping=private")
    else:
        assert refused is None
    if not comm.is_root:
        return
    if not direct_io:
        assert shared["modelload"]["fuse_probe"]["shared_mmap"] == "ok"
    model = the_model()
    for d, reader in ((doc, "mmap"), (read, "read")):
        assert_load_figures(d, reader, comm.size)
        probe = d["modelload"]["fuse_probe"]
        assert probe["fstype"].startswith("fuse") and probe["mount"] == mount  # fuse.bindfs, or plain fuse
        assert probe["shared_mmap"] == ("ENODEV" if direct_io else "ok") and probe["private_mmap"] == "ok"
        assert probe["page_cache"] is (not direct_io) and probe["direct_io"] is direct_io
        assert d["environment"]["backend"]["fuse_probe"] == probe
        cold = d["phases"][0]
        assert cold["cache"]["evicted"] and "backing_root" in cold["cache"]["method"]
        (node,) = cold["nodes"]
        if node["device_read_bytes"] is not None:  # the backing disk's counter: the model came from it
            assert node["device_read_bytes"] >= 0.98 * model.file_bytes
    # Through direct_io, read() leaves nothing in the FUSE file's page cache; the private map does.
    if direct_io:
        assert all(r["resident_after_bytes"] == 0 for r in read["phases"][0]["ranks"])
