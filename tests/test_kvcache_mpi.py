"""kvcache on real files and a real S3 server at several ranks (mpiexec -n 2 ... --only-mpi).

Every check is on counts and on figures recomputed from the results file, never on speed.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
from s3fixture import S3Server, assert_untouched, s3_fixture  # noqa: F401

from mpibench.comm import Comm
from mpibench.config import build_config
from mpibench.csvout import write_csv
from mpibench.errors import MpibenchError
from mpibench.metrics import LatencyHistogram
from mpibench.reporting import figure_names, render_figures
from mpibench.run import execute
from mpibench.schema import validation_errors
from mpibench.workloads.kvcache import _Step, kvcache_lines, merge_sparse

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(180)]

# Ended by max_requests (each rank serves 5 requests), not by the clock: the counts are the same
# on a loaded machine; the hour is only a bound.
QUICK = {"model": "tiny", "users": 3, "duration": 3600, "max_requests": 5, "warmup": 0.2, "max_context": 600, "concurrency": 2,
         "block_tokens": 16}


def kv_config(kind: str, root: str, **kvcache: object):
    return build_config({"workload": "kvcache", "storage": {"type": kind, "root": root},
                         "kvcache": {**QUICK, **kvcache}})


def check_document(doc: dict, all_storage: bool = True) -> None:
    """The figures of the results file recompute from its per-rank records."""
    assert validation_errors(doc) == []
    kv = doc["kvcache"]
    phases = [p for p in doc["phases"] if p["name"] == "kvcache"]
    assert len(kv["steps"]) == len(phases) >= 1
    for step, phase in zip(kv["steps"], phases, strict=True):
        ranks = [r["kvcache"] for r in phase["ranks"]]
        assert len(ranks) == len(phase["ranks"]) >= 2
        for name in ("read", "write", "ttft"):
            merged = merge_sparse([r[f"{name}_histogram"] for r in ranks])
            assert LatencyHistogram.from_sparse(step[f"{name}_histogram"]).counts.tolist() == merged.counts.tolist()
            figures = step["ttft" if name == "ttft" else f"{name}_latency"]
            assert figures["count"] == merged.count == sum(
                LatencyHistogram.from_sparse(r[f"{name}_histogram"]).count for r in ranks)
            for key, pct in (("p50_s", 50), ("p95_s", 95), ("p99_s", 99), ("p999_s", 99.9)):
                assert figures[key] == merged.percentile(pct) / 1e9
        per_rank_p95 = [LatencyHistogram.from_sparse(r["read_histogram"]).percentile(95) / 1e9 for r in ranks]
        assert step["read_p95_max_rank_s"] == max(per_rank_p95)
        assert step["read_latency"]["p95_s"] <= max(per_rank_p95)  # pooled never exceeds the worst rank's
        assert step["read_bytes"] == sum(r["read_bytes"] for r in ranks) > 0
        assert step["write_bytes"] == sum(r["write_bytes"] for r in ranks) > 0
        assert step["read_bytes"] + step["write_bytes"] == phase["bytes"]
        assert step["read_objects"] == step["read_latency"]["count"]
        assert step["write_objects"] == step["write_latency"]["count"]
        max_requests = doc["config"]["kvcache"]["max_requests"]
        assert step["requests"] == sum(r["requests"] for r in ranks) == max_requests * len(ranks)
        assert step["requests"] == step["ttft"]["count"]
        if all_storage:  # budget 0, capacity unbounded: every access is a storage hit
            assert step["hit_rates"]["memory"] == 0.0 and step["hit_rates"]["storage"] == 1.0
        seconds = phase["end"] - phase["start"]
        assert step["read_GiBps"] == pytest.approx(step["read_bytes"] / 2**30 / seconds)
        assert step["tokens_per_s"] == pytest.approx(step["output_tokens"] / seconds)


def leftover_files(root: str) -> list[str]:
    found = []
    for current, _dirs, files in os.walk(root):
        found.extend(os.path.join(current, f) for f in files)
    return found


@pytest.mark.parametrize("kind", ["local_fs", "direct_fs"])
def test_quick_run_on_files(shared_tmpdir, kind):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    out = os.path.join(shared_tmpdir, "kv.json")
    config = kv_config(kind, root, verify=True, prefix_tokens=32)
    doc = execute(config, comm, output=out)
    if comm.is_root:
        with open(out, encoding="utf-8") as handle:
            check_document(json.load(handle))
        assert doc["complete"] is True
        phase = doc["phases"][0]
        assert phase["verified"] is True
        assert phase["cache"]["state"] == ("direct" if kind == "direct_fs" else "cold")
        step = doc["kvcache"]["steps"][0]
        if kind == "direct_fs":
            align = doc["environment"]["direct_io_alignment"]
            sizes = {s for r in phase["ranks"] for s in [r["kvcache"]["read_bytes"], r["kvcache"]["write_bytes"]]}
            assert all(s % align == 0 for s in sizes)
        assert step["hit_rates"]["accesses"] >= step["requests"]  # the prefix is read by every request
        assert leftover_files(root) == []  # every object removed, the run directory too
    comm.barrier()


def test_users_list_steps_and_capacity(shared_tmpdir):
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    doc = execute(kv_config("local_fs", root, users=[1, 2], p95_target=3600.0), comm, output=None)
    if comm.is_root:
        kv = doc["kvcache"]
        assert [s["users"] for s in kv["steps"]] == [1, 2]
        assert [p["iteration"] for p in doc["phases"]] == [0, 1]
        assert [s["users_total"] for s in kv["steps"]] == [comm.size, 2 * comm.size]
        check_document(doc)
        # every step's p95 is far under an hour: the largest count is the capacity
        assert kv["capacity"] == {"p95_target_s": 3600.0, "users": 2, "first_over": None, "met": True}
        path = write_csv(os.path.join(shared_tmpdir, "kv.csv"), doc, force=True)
        with open(path, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["kv_users"]) for r in rows] == [1, 2]
        assert [float(r["kv_read_p95_s_pooled"]) for r in rows] == [s["read_latency"]["p95_s"] for s in kv["steps"]]
        assert [float(r["kv_read_p95_s_max_rank"]) for r in rows] == [s["read_p95_max_rank_s"] for s in kv["steps"]]
        assert "kvcache_users.png" in figure_names(doc)
        assert render_figures(doc)["kvcache_users.png"].startswith(b"\x89PNG")
        lines = kvcache_lines(doc)
        assert any(line.startswith("capacity at pooled p95") for line in lines)
        assert "kvcache figures recomputed from the per-rank histograms and counts: match (2 step(s))" in lines
        doc["phases"][1]["ranks"][0]["kvcache"]["read_histogram"]["counts"][0] += 1  # a tampered file
        assert any("MISMATCH in users 2 read_latency" in line for line in kvcache_lines(doc))
    comm.barrier()
    doc = execute(kv_config("local_fs", root, users=[1, 2], p95_target=1e-9), comm, output=None)
    if comm.is_root:
        cap = doc["kvcache"]["capacity"]
        assert cap["met"] is False and cap["users"] is None and cap["first_over"] == 1
    comm.barrier()


def test_storage_capacity_deletes_the_least_recently_used(shared_tmpdir):
    """1 MiB per rank holds less than one entry (at least 128 tokens of 24 KiB): each new
    entry pushes the earlier ones out; a later turn finds its history gone (a miss)."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    doc = execute(kv_config("local_fs", root, storage_capacity="1MiB", users=1, max_requests=6, verify=True),
                  comm, output=None)
    if comm.is_root:
        check_document(doc, all_storage=False)
        step = doc["kvcache"]["steps"][0]
        assert doc["phases"][0]["storage_capacity"] == 2**20
        assert step["deleted_objects"] > 0
        assert step["hit_rates"]["memory"] == 0.0
        assert leftover_files(root) == []
    comm.barrier()


def test_verify_catches_a_corrupted_block(shared_tmpdir, monkeypatch):
    """Rank 0 flips one byte of each block it writes (on disk, behind the benchmark's back):
    the first read of it fails the run on every rank, naming the file."""
    comm = Comm()
    root = os.path.join(shared_tmpdir, "root")
    original = _Step._write_entry

    def corrupting(self, entry, slot, log, counters):
        original(self, entry, slot, log, counters)
        if comm.rank == 0:
            path = self.backend.path_of(self._key(entry, 0))
            with open(path, "r+b") as handle:
                handle.seek(100)
                byte = handle.read(1)
                handle.seek(100)
                handle.write(bytes([byte[0] ^ 0xFF]))
                handle.flush()
                os.fsync(handle.fileno())

    monkeypatch.setattr(_Step, "_write_entry", corrupting)
    config = kv_config("local_fs", root, verify=True, warmup=0.0)
    with pytest.raises(MpibenchError) as caught:
        execute(config, comm, output=None)
    if comm.is_root:
        assert "data verification failed" in str(caught.value)
        assert leftover_files(root) == []  # cleanup ran
    comm.barrier()


@pytest.mark.s3
def test_quick_run_on_s3(s3: S3Server):
    comm = Comm()
    before = s3.listing()
    comm.barrier()
    doc = execute(kv_config("s3", s3.root, verify=True, grouping="layer"), comm, output=None)
    if comm.is_root:
        check_document(doc)
        phase = doc["phases"][0]
        assert phase["cache"]["state"] == "object"
        step = doc["kvcache"]["steps"][0]
        # per layer: every request writes 12 objects (the tiny model's layers)
        assert step["write_objects"] % 12 == 0
        assert_untouched(s3, before)
    comm.barrier()
