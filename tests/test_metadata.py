"""The metadata workload on real files and a real S3 server, at one rank (serial pytest) and
through the CLI at 2 ranks; the MPI runs at 2 and 4 ranks are in test_metadata_mpi.py.

Every run is checked against the storage itself: what the phases say they did is what
exists (or no longer exists), and every rate recomputes from the per-rank values."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import tempfile

import pytest
from conftest import CONFIGS, run_cli, tree
from s3fixture import PREFIX, assert_untouched, s3_fixture  # noqa: F401
from test_reliability import jobs, launch, wait_for  # noqa: F401

from mpibench.backends import posix_metadata
from mpibench.backends.posix import PosixBackend
from mpibench.comm import Comm
from mpibench.config import load_config
from mpibench.mdplan import file_name, renamed_of
from mpibench.plan import RUN_MARKER
from mpibench.run import execute
from mpibench.schema import validation_errors

pytestmark = pytest.mark.timeout(180)

EASY = os.path.join(CONFIGS, "io500-mdtest-easy-quick.yaml")
HARD = os.path.join(CONFIGS, "io500-mdtest-hard-quick.yaml")
PRESETS = {"easy": EASY, "hard": HARD}


def check_document(doc: dict, ranks: int) -> None:
    """Phases in order, counts as created, and every rate recomputed from the rank records."""
    md = doc["metadata"]
    config = doc["config"]["metadata"]
    assert doc["complete"] is True
    assert validation_errors(doc) == []
    assert md["preset"] == config["preset"] and md["ranks"] == ranks
    created = md["files_created_per_rank"]
    assert len(created) == ranks
    files = doc["config"]["storage"]["type"] in ("local_fs", "direct_fs")  # storage with directories
    names = ([("mkdir",)] if files else []) + [("create",), ("stat",)]
    names += [("read",)] if config["read"] else []
    names += [("list",)] if config["list"] else []
    names += [("rename",)] if config["rename"] else []
    names += [("remove",)] + ([("rmdir",)] if files else [])
    assert [(p["name"],) for p in doc["phases"]] == names
    for phase in doc["phases"]:
        ranks_ = phase["ranks"]
        assert len(ranks_) == ranks
        ops = sum(r["ops"] for r in ranks_)
        seconds = max(r["end"] for r in ranks_) - min(r["start"] for r in ranks_)
        assert phase["ops"] == ops and phase["seconds"] == pytest.approx(seconds)
        assert phase["ops_per_s"] == pytest.approx(ops / seconds)
        assert phase["latency"]["count"] == ops  # the merged histogram holds every operation
        assert phase["bytes"] == sum(r["bytes"] for r in ranks_)
        if phase["name"] == "create":
            assert [r["files_created"] for r in ranks_] == created
            assert phase["bytes"] == sum(created) * config["file_size"]
        if phase["name"] in ("stat", "read", "rename", "remove"):
            # each rank works on exactly the files its partner created, and all are covered once
            assert sorted(r["files_of_rank"] for r in ranks_) == list(range(ranks))
            if phase["name"] == "remove" and phase["delete"]["mode"] == "batched":
                # one request per max_keys files of one directory; every file removed
                dirs, most = md["item_directories"], phase["delete"]["max_keys"]
                assert [r["remove_files"] for r in ranks_] == [created[r["files_of_rank"]] for r in ranks_]
                assert [r["ops"] for r in ranks_] == [sum(math.ceil(len(range(d, created[r["files_of_rank"]], dirs))
                                                                    / most) for d in range(dirs))
                                                      for r in ranks_]
            else:
                assert [r["ops"] for r in ranks_] == [created[r["files_of_rank"]] for r in ranks_]
        if phase["name"] == "read":
            assert phase["bytes"] == sum(created) * config["file_size"]
        if phase["name"] == "list":
            row = next(p for p in md["phases"] if p["name"] == "list")
            # every directory holds exactly the files created (and the listing names them all)
            assert row["entries"] >= sum(created) if config["layout"] == "unique" else row["entries"] > 0
    rows = {row["name"]: row for row in md["phases"]}
    for phase in doc["phases"]:
        assert rows[phase["name"]]["ops_per_s"] == phase["ops_per_s"]
    assert rows["remove"]["files"] == sum(created)


def run_preset(root: str, preset: str, kind: str, *overrides: str) -> tuple[object, dict]:
    config = load_config(PRESETS[preset], [f"storage.type={kind}", f"storage.root={root}", *overrides])
    return config, execute(config, Comm(), output=None)


@pytest.mark.parametrize("kind", ["local_fs", "direct_fs"])
@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_quick_presets_on_files(shared_tmpdir, kind, preset):
    root = os.path.join(shared_tmpdir, "root")
    os.mkdir(root)
    _config, doc = run_preset(root, preset, kind)
    check_document(doc, 1)
    items = doc["config"]["metadata"]["items"]
    assert doc["metadata"]["files_created_per_rank"] == [items]
    assert os.listdir(root) == []  # every file and directory removed, the run directory too
    io = doc["metadata"]["data_io"]
    if preset == "easy":
        assert io["state"] == "none"
    elif kind == "direct_fs":  # 3901 bytes cannot be O_DIRECT: said so, never silently
        assert io["state"] == "buffered" and "not a multiple of the direct-I/O alignment" in io["warning"]
        assert doc["phases"][1]["cache"]["state"] == "buffered"
    else:
        assert io["state"] == "buffered"


def test_direct_fs_aligned_files_are_o_direct(shared_tmpdir):
    root = os.path.join(shared_tmpdir, "root")
    _config, doc = run_preset(root, "hard", "direct_fs", "metadata.file_size=4096", "metadata.items=40",
                              "metadata.rename=true", "metadata.depth=2", "metadata.branching=3",
                              "metadata.items_at=all", "keep_files=true")
    check_document(doc, 1)
    assert doc["metadata"]["data_io"]["state"] == "direct"
    read = next(p for p in doc["phases"] if p["name"] == "read")
    assert read["cache"]["state"] == "direct" and read["bytes"] == 40 * 4096
    run_dir = os.path.join(root, f"mpibench-{doc['run_id']}")
    # kept: the emptied tree is gone (rmdir phase), only the top folder and the marker stay
    assert sorted(tree(run_dir)) == [RUN_MARKER, "metadata"]


def test_every_phase_with_a_tree_and_the_names_on_disk(shared_tmpdir, monkeypatch):
    """Files land where mdplan says, renamed where asked, and the listing sees them all."""
    root = os.path.join(shared_tmpdir, "root")
    seen: dict[str, list[str]] = {"stat": [], "rename": [], "remove": []}
    originals = {op: getattr(PosixBackend, f"{op}_in") if op != "remove" else PosixBackend.unlink_in
                 for op in seen}

    def spy(op):
        def call(self, handle, name, *args, **kwargs):
            seen[op].append(os.path.relpath(self.where_in(handle, name), root))
            return originals[op](self, handle, name, *args, **kwargs)
        return call

    for op in seen:
        monkeypatch.setattr(PosixBackend, "unlink_in" if op == "remove" else f"{op}_in", spy(op))
    _config, doc = run_preset(root, "easy", "local_fs", "metadata.items=10", "metadata.depth=1",
                              "metadata.branching=2", "metadata.rename=true")
    check_document(doc, 1)
    top = f"mpibench-{doc['run_id']}/metadata/r000000"
    expected = [f"{top}/d{i % 2}/{file_name(0, i)}" for i in range(10)]
    assert seen["stat"] == expected and seen["rename"] == expected
    assert seen["remove"] == [f"{top}/d{i % 2}/{renamed_of(file_name(0, i))}" for i in range(10)]
    listing = next(p for p in doc["metadata"]["phases"] if p["name"] == "list")
    assert listing["entries"] == 10 and listing["ops"] == 2  # two leaf directories listed


@pytest.mark.parametrize("budget", [None, 1, 0])
def test_directories_by_descriptor_or_by_path_and_every_descriptor_closed(shared_tmpdir, monkeypatch, budget):
    """Operations name entries relative to an open directory while the descriptor budget
    lasts, by path beyond it; either way every phase runs and no descriptor stays open."""
    if budget is not None:
        monkeypatch.setattr(posix_metadata, "_dir_fd_budget", lambda: budget)
    handles: list = []
    original = PosixBackend.open_dir

    def spy(self, key):
        handles.append(original(self, key))
        return handles[-1]

    monkeypatch.setattr(PosixBackend, "open_dir", spy)
    before = len(os.listdir("/proc/self/fd"))
    _config, doc = run_preset(os.path.join(shared_tmpdir, "root"), "hard", "local_fs", "metadata.items=12",
                              "metadata.depth=1", "metadata.branching=2", "metadata.rename=true")
    check_document(doc, 1)
    assert len(os.listdir("/proc/self/fd")) == before
    by_fd = [h for h in handles if h[0] is not None]
    assert len(handles) == 4  # two leaf directories: own (create) and the partner's (the rest)
    assert len(by_fd) == (4 if budget is None else budget)
    listing = next(p for p in doc["metadata"]["phases"] if p["name"] == "list")
    assert listing["entries"] == 12


def test_stonewall_never_stats_a_file_that_was_not_created(shared_tmpdir, monkeypatch):
    """Creates stop at the deadline; stat, read and remove touch exactly the files created."""
    root = os.path.join(shared_tmpdir, "root")
    touched: dict[str, list[str]] = {"stat": [], "read": []}
    stat, read = PosixBackend.stat_in, PosixBackend.read_in

    def stat_spy(self, handle, name):
        touched["stat"].append(name)
        return stat(self, handle, name)

    def read_spy(self, handle, name, buf):
        touched["read"].append(name)
        return read(self, handle, name, buf)

    monkeypatch.setattr(PosixBackend, "stat_in", stat_spy)
    monkeypatch.setattr(PosixBackend, "read_in", read_spy)
    # No machine creates a million files in 0.2 s: the deadline always comes first (and the first
    # create always ends before the deadline is looked at, so each rank creates at least one).
    _config, doc = run_preset(root, "hard", "local_fs", "metadata.items=1000000", "metadata.deadline=0.2",
                              "metadata.file_size=100")
    check_document(doc, 1)
    created = doc["metadata"]["files_created_per_rank"][0]
    assert 0 < created < 1_000_000
    create = doc["phases"][1]
    assert create["stonewalled"] is True and create["ranks"][0]["stonewall_deadline_s"] == 0.2
    assert touched["stat"] == [file_name(0, i) for i in range(created)]
    assert touched["read"] == touched["stat"]
    assert not os.path.exists(root)  # made by the run, removed with everything in it
    lines = "\n".join(execute_report(doc))
    assert f"files created per rank min {created} / max {created}" in lines


def execute_report(doc: dict) -> list[str]:
    from mpibench.workloads import get_workload

    return get_workload("metadata").report_lines(doc)


@pytest.mark.s3
@pytest.mark.parametrize("preset", ["easy", "hard"])
def test_quick_presets_on_s3(s3, preset):
    before = s3.listing()
    config, doc = run_preset(s3.root, preset, "s3", "metadata.read=true", "keep_files=true")
    check_document(doc, 1)
    items = doc["config"]["metadata"]["items"]
    stored = {k: v for k, v in s3.listing(f"{PREFIX}/mpibench-{doc['run_id']}/").items()
              if not k.endswith(RUN_MARKER)}
    assert stored == {}  # the remove phase deleted every object it created
    read = next(p for p in doc["phases"] if p["name"] == "read")
    assert read["ops"] == items and read["bytes"] == items * doc["config"]["metadata"]["file_size"]
    assert read["cache"]["state"] == "object" and doc["metadata"]["data_io"]["state"] == "object"
    listing = next(p for p in doc["metadata"]["phases"] if p["name"] == "list")
    assert listing["entries"] == items and listing["pages"] == 1
    assert doc["environment"]["backend"]["objects"]["object_size_bytes"] == doc["config"]["metadata"]["file_size"]
    from mpibench.backends.base import StoragePlan
    from mpibench.backends.base import StoragePlan
    from mpibench.backends.s3 import S3Backend

    S3Backend.undo(config, StoragePlan(run_key=f"mpibench-{doc['run_id']}"))
    assert_untouched(s3, before)


@pytest.mark.s3
def test_s3_list_by_pages_and_delete_in_batches(s3):
    """LIST comes in ceil(n / list_page) pages with the time to the first; the store's
    DeleteObjects (probed) removes exactly the run's objects, 1000 keys per request."""
    before = s3.listing()
    items, page = 2300, 250
    config, doc = run_preset(s3.root, "easy", "s3", f"metadata.items={items}", f"metadata.list_page={page}",
                             "metadata.read=false", "keep_files=true")
    check_document(doc, 1)
    listing = next(p for p in doc["phases"] if p["name"] == "list")
    (rank,) = listing["ranks"]
    assert rank["list_entries"] == items and rank["list_pages"] == math.ceil(items / page)
    assert 0 < rank["first_page_s_max"] <= listing["seconds"]
    remove = next(p for p in doc["phases"] if p["name"] == "remove")
    assert remove["delete"]["mode"] == "batched" and remove["delete"]["max_keys"] == 1000
    assert remove["ops"] == math.ceil(items / 1000) and remove["ranks"][0]["remove_files"] == items
    row = next(p for p in doc["metadata"]["phases"] if p["name"] == "remove")
    assert row["files"] == items and "DeleteObjects" in row["delete"]
    assert any("DeleteObjects" in line for line in doc["preflight"]["checks"])
    stored = {k for k in s3.listing(f"{PREFIX}/mpibench-{doc['run_id']}/") if not k.endswith(RUN_MARKER)}
    assert stored == set()  # every object of the run, the probe's included, is gone
    from mpibench.backends.base import StoragePlan
    from mpibench.backends.s3 import S3Backend

    S3Backend.undo(config, StoragePlan(run_key=f"mpibench-{doc['run_id']}"))
    assert_untouched(s3, before)  # the objects that are not the run's are all there, unchanged


def test_null_storage_measures_the_loop_alone():
    """On null storage every operation returns at once: the rates are mpibench's own cost."""
    _config, doc = run_preset("", "easy", "null", "metadata.list=false", "metadata.read=true",
                              "metadata.items=2000")
    check_document(doc, 1)
    assert doc["metadata"]["files_created_per_rank"] == [2000]
    from mpibench.config import build_config
    from mpibench.errors import ConfigError

    with pytest.raises(ConfigError, match="storage.type=null keeps none"):
        build_config({"workload": "metadata", "storage": {"type": "null"}, "metadata": {"file_size": 10}})


def test_rename_is_refused_on_s3():
    from mpibench.config import build_config
    from mpibench.errors import ConfigError

    with pytest.raises(ConfigError, match="S3 has no rename"):
        build_config({"workload": "metadata", "storage": {"type": "s3", "root": "s3://b/p"},
                      "metadata": {"rename": True}})


def test_interrupted_create_leaves_nothing(tmp_path):
    """An I/O error on rank 1 in the middle of its creates: every rank stops, one line, and the
    cleanup removes every file either rank created."""
    root = tmp_path / "root"
    output = tmp_path / "out.json"
    done = run_cli(2, "run", HARD, f"storage.root={root}", "metadata.items=400", "--output", str(output),
                   env={"MPIBENCH_FAULT": "ioerror:rank=1:phase=create:after_ops=50"})
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mpibench: error")]
    assert errors == ["mpibench: error: rank 1: injected I/O error in phase create; a test asked for it"]
    assert "Traceback" not in done.stderr
    assert not root.exists() or tree(str(root)) == {}
    doc = json.loads(output.read_text())
    assert doc["complete"] is False
    create = next(p for p in doc["phases"] if p["name"] == "create")
    assert create["ranks"][1]["files_created"] == 50


@pytest.fixture
def small_tmpfs():
    """A tmpfs with room for 60 inodes: creates run out of inodes (ENOSPC) for real."""
    where = tempfile.mkdtemp(prefix="mpibench-md-tmpfs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=60", "tmpfs", where],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(where)
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=False)
        os.rmdir(where)


def test_out_of_inodes_is_one_line_naming_phase_and_count(small_tmpfs, tmp_path):
    root = os.path.join(small_tmpfs, "root")
    output = tmp_path / "partial.json"
    done = run_cli(1, "run", EASY, f"storage.root={root}", "metadata.items=500", "--output", str(output))
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    line = errors[0]
    assert line.startswith("mpibench: error: rank 0: create phase: the storage ran out of inodes or space after ")
    reached = int(line.split(" after ")[1].split(" of ")[0])
    assert 0 < reached < 500 and " of 500 operations on this rank" in line
    assert "[ENOSPC]" in line and line.endswith("free inodes (df -i) or space, raise the quota, or lower metadata.items")
    assert os.listdir(small_tmpfs) == []  # the files created before it, and the root made for the run, are gone
    warnings = json.loads(output.read_text())["preflight"]["warnings"]
    assert any("free inodes, fewer than the 501 files and directories the run may create" in w for w in warnings)


def test_signal_mid_create_leaves_nothing(tmp_path, jobs):  # noqa: F811 - the fixture
    """SIGINT to the job while rank 1 is in the middle of its creates (held there by a fault)
    and rank 0 goes on creating: every rank stops, exit 130, and the cleanup removes every
    file created."""
    root = tmp_path / "root"
    faults = tmp_path / "faults"
    faults.mkdir()
    output = tmp_path / "out.json"
    job = launch(jobs, 2, "run", EASY, f"storage.root={root}", "metadata.items=1000000", "run_id=sig",
                 "--output", str(output), fault=f"sleep:rank=1:phase=create:after_ops=30:seconds=2:dir={faults}")
    wait_for(str(faults / "stalled"), job)
    done = job.finish(since=job.signal(signal.SIGINT))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("mpibench: error")] == [
        "mpibench: error: interrupted by SIGINT; the partial result is marked incomplete"]
    assert not root.exists() or tree(str(root)) == {}
    doc = json.loads(output.read_text())
    create = next(p for p in doc["phases"] if p["name"] == "create")
    assert create["complete"] is False and create["ranks"][1]["files_created"] >= 30


def test_cli_table_json_and_csv(tmp_path):
    """Through the CLI: the run table and the report lines give ops/s per phase, the CSV one
    row per phase with the JSON's rates, and the preset named."""
    output, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    done = run_cli(1, "run", HARD, f"storage.root={tmp_path / 'root'}", "metadata.items=50",
                   "--output", str(output), "--csv", str(csv_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads(output.read_text())
    check_document(doc, 1)
    assert "metadata (preset io500-mdtest-hard-quick): 1 rank(s) x 50 files of 3.81 KiB (3901 bytes)" in done.stdout
    for phase in doc["phases"]:
        assert f"  {phase['name']:<8}{phase['ops_per_s']:>12.1f} ops/s" in done.stdout
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert [r["phase"] for r in rows] == [p["name"] for p in doc["phases"]]
    for row, phase in zip(rows, doc["phases"], strict=True):
        assert row["workload"] == "metadata" and int(row["ops"]) == phase["ops"]
        assert float(row["ops_per_s"]) == pytest.approx(phase["ops_per_s"], abs=1e-3)


class _RefusingStore:
    """A real HTTP front of the S3 fixture that answers DeleteObjects (POST ?delete) with
    501 NotImplemented, as a store without it does, and passes every other request on."""

    def __init__(self, endpoint: str) -> None:
        import http.client
        import http.server
        import threading
        import urllib.parse

        target = urllib.parse.urlsplit(endpoint)
        self.refused = 0
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _pass(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = urllib.parse.urlsplit(self.path).query
                if self.command == "POST" and "delete" in urllib.parse.parse_qs(query, keep_blank_values=True):
                    front.refused += 1
                    answer = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code>"
                              b"<Message>DeleteObjects is not implemented</Message></Error>")
                    self.send_response(501)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                reply = upstream.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.s3
def test_a_store_refusing_delete_objects_gets_one_delete_per_object(s3):
    """The probe finds the refusal, says why, and leaves no probe object behind; on the
    fixture itself it finds DeleteObjects working."""
    from mpibench.backends.s3_pages import make_client, probe_delete_objects
    from mpibench.config import build_config

    storage = build_config({"workload": "metadata", "storage": {"type": "s3", "root": s3.root}}).storage
    before = s3.listing()
    prefix = f"{PREFIX}/probe-{os.getpid()}/"
    direct = probe_delete_objects(make_client(storage, s3.endpoint, s3.region), s3.bucket, prefix)
    assert direct["mode"] == "batched" and direct["max_keys"] == 1000
    front = _RefusingStore(s3.endpoint)
    try:
        found = probe_delete_objects(make_client(storage, front.endpoint, s3.region), s3.bucket, prefix)
    finally:
        front.close()
    assert front.refused == 1
    assert found["mode"] == "single" and found["max_keys"] == 1 and found["method"] == "one DELETE per object"
    assert "NotImplemented" in found["reason"]
    assert s3.listing() == before  # the probe objects are gone, nothing else touched
