"""docs/architecture.md's walkthrough "add a backend" is true: a backend written as one
module outside the package (here in the test's directory) and one `register(...)` line runs
a bandwidth test on every rank (run under mpiexec --with-mpi)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.run import execute

pytestmark = pytest.mark.mpi(min_size=2)

# The walkthrough's backend: plain files through Python's os module, nothing else overridden
# (no preflight, no queue depth, no cache state: the protocol's defaults apply).
TOY_MODULE = '''
"""Files below storage.root, written and read with os.pwrite / os.preadv."""

import os

from mpibench.backends.base import Backend, io_error


class ToyBackend(Backend):
    name = "toy"

    def open(self, key, mode):
        path = self.path_of(key)
        try:
            return os.open(path, (os.O_WRONLY | os.O_CREAT) if mode == "w" else os.O_RDONLY, 0o644)
        except OSError as exc:
            raise io_error("open", path, exc) from None

    def write_at(self, handle, buf, offset):
        return os.pwrite(handle, buf, offset)

    def read_at(self, handle, buf, offset):
        return os.preadv(handle, [buf], offset)

    def close(self, handle):
        os.close(handle)

    def remove(self, key):
        try:
            os.unlink(self.path_of(key))
        except FileNotFoundError:
            pass

    def size_of(self, key):
        return os.stat(self.path_of(key)).st_size

    def makedirs(self, key):
        os.makedirs(self.path_of(key), exist_ok=True)

    def remove_dir(self, key):
        try:
            os.rmdir(self.path_of(key))
        except OSError:
            pass

    def path_of(self, key):
        return os.path.join(self.storage.root, key)
'''


def test_a_backend_from_one_module_and_one_registry_line_runs_bandwidth(shared_tmpdir):
    comm = Comm()
    plugins = os.path.join(shared_tmpdir, "plugins")
    root = os.path.join(shared_tmpdir, "root")
    if comm.is_root:
        os.makedirs(plugins)
        os.makedirs(root)
        with open(os.path.join(plugins, "mpibench_toy.py"), "w", encoding="utf-8") as handle:
            handle.write(textwrap.dedent(TOY_MODULE))
    comm.barrier()
    sys.path.insert(0, plugins)
    from mpibench.backends import REGISTRY, register

    try:
        register("toy", "mpibench_toy", "ToyBackend")  # the one registry line
        config = build_config({
            "workload": "bandwidth", "storage": {"type": "toy", "root": root},
            "bandwidth": {"transfer_size": "64KiB", "block_size": "1MiB", "iterations": 2, "fsync": True},
            "verify": True})
        doc = execute(config, comm, output=None)
    finally:
        REGISTRY.pop(("toy", "native"), None)
        sys.path.remove(plugins)
    comm.barrier()
    if comm.is_root:
        assert doc["complete"] is True
        assert [p["name"] for p in doc["phases"]] == ["write", "read"] * 2
        for phase in doc["phases"]:
            assert phase["bytes"] == comm.size * 2**20
            assert phase["ops"] == comm.size * 16
            assert sorted(r["rank"] for r in phase["ranks"]) == list(range(comm.size))
        read = doc["phases"][1]
        assert read["verified"] is True
        # The protocol's defaults: a client cache (direct is false), evicted or not as the
        # workload decides; one run directory below the root, its files removed.
        assert read["cache"]["state"] in ("cold", "warm")
        assert doc["environment"]["backend"]["backend"] == "toy"
        left = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
        assert left == []
