"""The metadata workload's quick presets at several ranks (mpiexec -n 2|4 pytest --only-mpi):
local_fs, direct_fs and S3, unique and shared layouts, and a stonewalled run."""

from __future__ import annotations

import os

import pytest
from mpi4py import MPI
from s3fixture import PREFIX, assert_untouched, s3_fixture  # noqa: F401
from test_metadata import check_document, run_preset

from mpibench.backends.posix import PosixBackend
from mpibench.backends.s3 import S3Backend
from mpibench.comm import Comm
from mpibench.mdplan import file_name
from mpibench.plan import RUN_MARKER

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(180)]


@pytest.mark.parametrize("kind", ["local_fs", "direct_fs"])
@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_quick_presets_on_files(shared_tmpdir, kind, preset):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    _config, doc = run_preset(root, preset, kind, "metadata.rename=true")
    if comm.is_root:
        check_document(doc, comm.size)
        assert doc["metadata"]["files_created_per_rank"] == [doc["config"]["metadata"]["items"]] * comm.size
        assert not os.path.exists(root)
    comm.barrier()


@pytest.mark.parametrize("layout", ["shared", "unique"])
def test_trees_at_several_ranks(shared_tmpdir, layout):
    """A tree of depth 2 with files everywhere: rank 0 makes the shared one, each rank its own
    otherwise; every listing sees what the plan put there; everything removed."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    _config, doc = run_preset(root, "hard", "direct_fs", f"metadata.layout={layout}", "metadata.depth=2",
                              "metadata.branching=2", "metadata.items_at=all", "metadata.items=21",
                              "metadata.rename=true")
    if comm.is_root:
        check_document(doc, comm.size)
        mkdir = next(p for p in doc["phases"] if p["name"] == "mkdir")
        assert [r["ops"] for r in mkdir["ranks"]] == ([7] + [0] * (comm.size - 1) if layout == "shared"
                                                     else [7] * comm.size)
        listing = next(p for p in doc["metadata"]["phases"] if p["name"] == "list")
        if layout == "unique":  # each rank lists the 7 directories of its partner's tree
            assert listing["ops"] == 7 * comm.size
            assert listing["entries"] == 21 * comm.size + 6 * comm.size  # the files, and the subdirectories
        assert not os.path.exists(root)
    comm.barrier()


@pytest.mark.s3
@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_quick_presets_on_s3(s3, preset):
    comm = Comm()
    before = s3.listing() if comm.is_root else None
    comm.barrier()
    _config, doc = run_preset(s3.root, preset, "s3", "metadata.read=true")
    if comm.is_root:
        check_document(doc, comm.size)
        items = doc["config"]["metadata"]["items"]
        listing = next(p for p in doc["metadata"]["phases"] if p["name"] == "list")
        # unique: each rank lists its partner's prefix; shared: ranks share the one prefix
        expected = items * comm.size if preset == "easy" else items * comm.size * comm.size
        assert listing["entries"] == expected
        assert_untouched(s3, before)  # every object deleted, the marker too, nothing else touched
    comm.barrier()


def test_stonewall_at_several_ranks(shared_tmpdir, monkeypatch):
    """Each rank stats exactly the files its partner created before the deadline."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    stat = PosixBackend.stat_in
    stated: list[str] = []

    def spy(self, handle, name):
        stated.append(name)
        return stat(self, handle, name)

    monkeypatch.setattr(PosixBackend, "stat_in", spy)
    _config, doc = run_preset(root, "easy", "local_fs", "metadata.items=10000000", "metadata.deadline=0.2")
    everyone = MPI.COMM_WORLD.allgather(stated)
    if comm.is_root:
        check_document(doc, comm.size)
        created = doc["metadata"]["files_created_per_rank"]
        assert all(n < 10_000_000 for n in created)
        stat_phase = next(p for p in doc["phases"] if p["name"] == "stat")
        for record in stat_phase["ranks"]:
            owner = record["files_of_rank"]
            assert everyone[record["rank"]] == [file_name(owner, i) for i in range(created[owner])]
        assert not os.path.exists(root)
    comm.barrier()


@pytest.mark.s3
def test_s3_objects_are_the_ones_created(s3, monkeypatch):
    """A kept S3 run without the remove phase's effect: the objects listed are exactly the
    names and sizes the plan gives."""
    comm = Comm()
    put = S3Backend.create_in
    created: list[str] = []

    def spy(self, handle, name, buf, fsync=False):
        created.append(name)
        return put(self, handle, name, buf, fsync)

    monkeypatch.setattr(S3Backend, "create_in", spy)
    _config, doc = run_preset(s3.root, "hard", "s3", "metadata.items=7")
    names = MPI.COMM_WORLD.allgather(created)
    if comm.is_root:
        check_document(doc, comm.size)
        for rank, mine in enumerate(names):
            assert mine == [file_name(rank, i) for i in range(7)]
        assert not [k for k in s3.listing(f"{PREFIX}/mpibench-{doc['run_id']}/") if not k.endswith(RUN_MARKER)]
    comm.barrier()
