"""`mpibench report`: text, figures and HTML from a real run; every figure recomputable."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import re
import shutil
import statistics
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import CONFIGS, run_cli

from mpibench.metrics import LatencyHistogram
from mpibench.report import phase_table, run_header
from mpibench.reporting import (
    FIGURES,
    _check_target,
    aggregate_series,
    interval_rates,
    latency_cdf,
    merged_histogram,
    recompute_mismatches,
    stragglers,
    summary_text,
)
from mpibench.results import load_results
from mpibench.schema import validate_document
from mpibench.schema_versions import SCHEMA_VERSION, migrate
from mpibench.units import MiB

QUICK = os.path.join(CONFIGS, "quickstart.yaml")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_run(tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str) -> Path:
    """A real 2-rank run of the quickstart with small blocks; the path of its results file."""
    out = tmp_path_factory.mktemp(name) / "result.json"
    data = tempfile.mkdtemp(prefix="mpibench-report-", dir=os.environ.get("MPIBENCH_TEST_DIR"))
    try:
        done = run_cli(2, "run", QUICK, f"storage.root={data}/d", "bandwidth.block_size=8MiB",
                       "bandwidth.iterations=4", "metrics.interval=0.01", *overrides, "--output", str(out),
                       "--quiet")
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    return out


def workload_runs(tmp_path_factory: pytest.TempPathFactory, name: str,
                  *runs: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Real 2-rank runs, one after the other in one data directory (datagen, then train);
    the paths of their results files and what each printed."""
    folder = tmp_path_factory.mktemp(name)
    data = tempfile.mkdtemp(prefix="mpibench-report-", dir=os.environ.get("MPIBENCH_TEST_DIR"))
    paths, outputs = [], []
    try:
        for i, args in enumerate(runs):
            out = folder / f"result-{i}.json"
            done = run_cli(2, "run", *args, f"storage.root={data}/d", "--output", str(out))
            assert done.returncode == 0, done.stderr
            paths.append(out)
            outputs.append(done.stdout)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return paths, outputs


CHECKPOINT_RUN = (os.path.join(CONFIGS, "llama3-8b-quick.yaml"), "storage.type=local_fs", "checkpoint.scale=0.0002",
                  "checkpoint.fsync=false", "checkpoint.num_checkpoints_write=1", "checkpoint.num_checkpoints_read=1")
TRAIN_DATASET = ("dataset.num_files=6", "dataset.record_size=256KiB", "dataset.record_size_stdev=0")
TRAIN_RUNS = ((os.path.join(CONFIGS, "unet3d-quick.yaml"), "workload=datagen", *TRAIN_DATASET),
              (os.path.join(CONFIGS, "unet3d-quick.yaml"), *TRAIN_DATASET, "train.computation_time=0.001",
               "train.epochs=4"))


@pytest.fixture(scope="module")
def result_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_run(tmp_path_factory, "report")


@pytest.fixture(scope="module")
def document(result_path: Path) -> dict[str, Any]:
    return json.loads(result_path.read_text())


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_phase_bandwidth_recomputes_from_its_ranks(document):
    assert document["phases"]
    for phase in document["phases"]:
        ranks = phase["ranks"]
        total = sum(r["bytes"] for r in ranks)
        seconds = max(r["end"] for r in ranks) - min(r["start"] for r in ranks)
        assert total == phase["bytes"]
        assert math.isclose(seconds, phase["seconds"], rel_tol=1e-12)
        assert math.isclose(total / MiB / seconds, phase["bandwidth_MiBps"], rel_tol=1e-9)
        assert math.isclose(total / 1e9 / seconds, phase["bandwidth_GBps"], rel_tol=1e-9)
        assert sum(r["ops"] for r in ranks) == phase["ops"]
        assert sum(phase["latency_histogram"]["counts"]) == phase["ops"]
        for rank in ranks:
            assert sum(rank["series_bytes"]) == rank["bytes"]
            assert math.isclose(rank["bytes"] / MiB / (rank["end"] - rank["start"]), rank["bandwidth_MiBps"],
                                rel_tol=1e-9)
        # The time series integrates to the phase bandwidth: sum of bytes over the summed widths.
        _, widths, rates = interval_rates(aggregate_series(phase), phase["interval_s"], phase["seconds"])
        moved = sum(rate * width for rate, width in zip(rates, widths, strict=True))
        assert math.isclose(moved * MiB, phase["bytes"], rel_tol=1e-9)
    assert recompute_mismatches(document) == []


def test_merged_histogram_gives_the_stored_percentiles(document):
    for phase in document["phases"]:
        hist = merged_histogram([phase])
        assert hist.count == phase["latency"]["count"]
        for key, pct in (("p50_s", 50), ("p99_s", 99), ("p999_s", 99.9)):
            assert math.isclose(hist.percentile(pct) / 1e9, phase["latency"][key], rel_tol=1e-12)


def test_report_text(result_path, document):
    done = run_cli(0, "report", str(result_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for needle in ("MiB/s", "GB/s", "IOPS", "p99.9", "slowest rank", "slowest/median", "requested",
                   "storage read", "median MiB/s", f"matches ({len(document['phases'])} phases)"):
        assert needle in out, needle
    assert document["run_id"] in out
    assert "Traceback" not in out + done.stderr
    # Each phase's client CPU, as the bandwidth table's last column and in run's summary table.
    lines = out.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("phase  iter") and "client cores" in line))
    for phase, line in zip(document["phases"], lines[head + 1:], strict=False):
        assert line.split()[-1] == f"{phase['client_cpu']['cores']:.2f}", line
    summary = phase_table(document).splitlines()
    at = next(i for i, line in enumerate(summary) if line.endswith("client CPU cores"))
    write = statistics.median(p["client_cpu"]["cores"] for p in document["phases"] if p["name"] == "write")
    assert summary[at + 1].split()[0] == "write" and summary[at + 1].split()[-1] == f"{write:.2f}"


def test_report_png_and_html(tmp_path, result_path):
    try:
        from PIL import Image as pil
    except ImportError:  # the PNG header checks below still apply
        pil = None
    figures = tmp_path / "figs"
    page = tmp_path / "report.html"
    done = run_cli(0, "report", str(result_path), "--png", str(figures), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(figures)) == sorted(FIGURES)
    for name in FIGURES:
        data = (figures / name).read_bytes()
        width, height = png_size(data)
        assert width >= 600 and height >= 300, (name, width, height)
        if pil is not None:
            image = pil.open(io.BytesIO(data))
            image.load()
            assert image.format == "PNG" and image.size == (width, height)
    text = page.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == len(FIGURES)
    for data in embedded:
        png_size(base64.b64decode(data))
    assert not re.search(r'(src|href)="(https?:|//)', text), "the page must not load anything"
    for needle in ("Configuration", "Environment", "bandwidth.transfer_size", "world_size", "Preflight"):
        assert needle in text
    # Existing files are kept unless --force.
    again = run_cli(0, "report", str(result_path), "--html", str(page))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"mpibench: error: {page} already exists; "
                                                 "choose another name or pass --force"]
    _check_target(str(page), force=True)  # what --force allows, without drawing the figures again


def test_unknown_schema_version_exits_2(tmp_path, document):
    future = dict(document, schema_version=99)
    path = tmp_path / "future.json"
    path.write_text(json.dumps(future))
    for args in (("report", str(path)), ("compare", str(path), str(path))):
        done = run_cli(0, *args)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mpibench: error: ")
        assert "schema version 99" in lines[0] and "reads 1" in lines[0]
        assert "Traceback" not in done.stderr


def test_missing_and_malformed_files_exit_2(tmp_path, document):
    done = run_cli(0, "report", str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    broken = copy.deepcopy(document)
    broken["phases"][0]["ranks"][0]["bytes"] = "many"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    done = run_cli(0, "report", str(path))
    assert done.returncode == 2
    assert "phases/0/ranks/0/bytes" in done.stderr and "Traceback" not in done.stderr


def test_interval_rates_fold_a_short_tail():
    lefts, widths, rates = interval_rates([10 * MiB, 10 * MiB, MiB], 1.0, 2.1)
    assert lefts == [0.0, 1.0]
    assert widths == pytest.approx([1.0, 1.1])
    assert rates == pytest.approx([10.0, 10.0])
    _, widths, rates = interval_rates([10 * MiB, 5 * MiB], 1.0, 1.5)
    assert widths == pytest.approx([1.0, 0.5]) and rates == pytest.approx([10.0, 10.0])
    assert interval_rates([], 0.5, 1.0) == ([], [], [])


def test_latency_cdf_edges():
    hist = LatencyHistogram()
    import numpy as np

    values = np.array([1_000_000, 2_000_000, 2_000_000, 9_000_000], dtype=np.int64)
    hist.add_many(values)
    xs, fractions = latency_cdf(hist)
    assert xs[0] == pytest.approx(1.0) and xs[-1] == pytest.approx(9.0)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(xs, xs[1:], strict=False))
    assert all(b >= a for a, b in zip(fractions, fractions[1:], strict=False))
    # Bucket edges are within one 2% bucket of the samples they hold.
    assert xs[1] == pytest.approx(1.0, rel=0.021) and fractions[1] == 0.25


def test_stragglers_and_warnings(document):
    phase = copy.deepcopy(document["phases"][1])
    phase["ranks"][0]["bandwidth_MiBps"] = phase["ranks"][1]["bandwidth_MiBps"] * 0.5
    phase["ranks"].append(dict(phase["ranks"][1], rank=2))
    assert [r["rank"] for r in stragglers(phase["ranks"])] == [0]
    cached = copy.deepcopy(document)
    for p in cached["phases"]:
        if p["name"] == "read":
            p["cache"] = {"state": "cold", "method": "test"}
            p["storage_bytes"]["read_bytes"] = 0
    text = summary_text(cached)
    assert "served from the page cache" in text
    edited = copy.deepcopy(document)
    edited["phases"][0]["bandwidth_MiBps"] *= 2
    assert "does not match its per-rank values" in summary_text(edited)


@pytest.fixture(scope="module")
def unsynced_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Buffered writes without fsync, reads from a warm page cache: what the page cache gives."""
    return small_run(tmp_path_factory, "unsynced", "storage.type=local_fs", "bandwidth.fsync=false",
                     "bandwidth.cache=warm", "bandwidth.iterations=1")


def as_v1(document: dict) -> dict:
    """The document as schema version 1 wrote it: no storage traits recorded (readers then
    derived them from config.storage.type); the loader migrates it (schema_versions.migrate)."""
    old = copy.deepcopy(document)
    old["schema_version"] = 1
    for key in ("kernel_counted", "object_store", "uploads_at_close"):
        old["environment"]["backend"].pop(key, None)
    return old


def cache_rows(text: str) -> dict[str, list[str]]:
    """The rows of the report's cache table by phase name (cells split on runs of spaces)."""
    table = text.split("\nCache;")[1].split("\n\n")[0].splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("phase "))
    return {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line) for line in table[header + 1:]}


def test_write_without_fsync_is_not_reported_as_reaching_storage(unsynced_path):
    document = json.loads(unsynced_path.read_text())
    write = next(p for p in document["phases"] if p["name"] == "write")
    # The run flags the phase in the results file, with the device's own counter.
    assert write["fsync"] is False and write["cache"]["state"] == "buffered"
    assert "without fsync" in write["cache"]["warning"] and "bandwidth.fsync=true" in write["cache"]["warning"]
    device = write["hosts"][0]["block_device"]
    assert write["cache"]["device_write_bytes"] == (device["write_bytes"] if device else None)
    # ... in what `run` prints ...
    assert "warning: write iteration 0: write phase on local_fs without fsync" in phase_table(document)
    # ... and in the report, whose cache table no longer reads the dirtied bytes as reaching storage.
    text = summary_text(document)
    assert "warning: write iteration 0: write phase on local_fs without fsync: the figure" in text
    row = cache_rows(text)["write"]
    assert row[6].endswith(" device") or row[6] == "? no fsync", row
    assert row[6] != "100%"
    assert "no fsync" in row[-1]
    assert "kernel written" in text and "storage written" not in text
    # A version-1 file written before the flag existed gets the same warning when loaded.
    legacy = as_v1(document)
    for phase in legacy["phases"]:
        if phase["name"] == "write":
            phase["cache"] = {"state": "buffered", "method": "page cache"}
    legacy = migrate(legacy)
    assert legacy["migrated_from"] == 1
    validate_document(legacy)
    assert "write phase on local_fs without fsync" in summary_text(legacy)
    assert "write phase on local_fs without fsync" in phase_table(legacy)


def test_synced_and_direct_writes_are_not_flagged(document):
    assert document["config"]["storage"]["type"] == "direct_fs"
    text = summary_text(document)
    flag = "write phase on local_fs without fsync"
    assert flag not in text and flag not in phase_table(document)
    assert cache_rows(text)["write"][6].endswith("%")
    buffered = copy.deepcopy(document)
    buffered["config"]["storage"]["type"] = "local_fs"
    for phase in buffered["phases"]:
        phase["cache"] = {"state": "buffered", "method": "page cache, fsync before close"}
    assert flag not in summary_text(buffered)  # fsync: the data reached the device


def test_reached_counts_the_phase_direction(unsynced_path):
    document = json.loads(unsynced_path.read_text())
    read = next(p for p in document["phases"] if p["name"] == "read")
    read["storage_bytes"] = {"read_bytes": 0, "write_bytes": read["bytes"]}  # writes of others do not count
    # A file-backed read served by the page cache reached 0 % of storage, not "none counted".
    assert cache_rows(summary_text(document))["read"][6] == "0%"
    read["storage_bytes"] = {"read_bytes": read["bytes"] // 4, "write_bytes": read["bytes"]}
    assert cache_rows(summary_text(document))["read"][6] == "25%"
    # Network I/O is not counted by the kernel: "-".
    remote = as_v1(document)  # a version-1 file: what s3 means comes from its storage type
    remote["config"]["storage"]["type"] = "s3"
    assert cache_rows(summary_text(migrate(remote)))["read"][6] == "-"


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    (path,), (printed,) = workload_runs(tmp_path_factory, "checkpoint", CHECKPOINT_RUN)
    return path, printed


def test_report_prints_the_checkpoint_headline_and_flags_unsynced_writes(checkpoint_run):
    path, printed = checkpoint_run
    document = json.loads(path.read_text())
    write = next(p for p in document["phases"] if p["name"] == "write")
    assert write["cache"]["state"] == "buffered" and "checkpoint.fsync=true" in write["cache"]["warning"]
    done = run_cli(0, "report", str(path))
    assert done.returncode == 0, done.stderr
    for needle in ("checkpoint llama3-8b:", "SCALED by 0.0002", "GiB/s mean", "warning: write iteration 0: write "
                   "phase on local_fs without fsync"):
        assert needle in printed and needle in done.stdout, needle
    assert cache_rows(done.stdout)["write"][2] == "buffered"


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    return workload_runs(tmp_path_factory, "train", *TRAIN_RUNS)


def test_report_prints_the_train_and_datagen_headlines(train_runs):
    paths, printed = train_runs
    for path, run_text, needles in zip(paths, printed, (("datagen: 6 npz files", "files/s"),
                                                        ("train: 6 npz files", "AU mean", "samples/s",
                                                         "each file once", "bytes = dataset", "overall:")),
                                       strict=True):
        done = run_cli(0, "report", str(path))
        assert done.returncode == 0, done.stderr
        for needle in needles:
            assert needle in run_text and needle in done.stdout, needle


def test_s3_header_and_upload_note(unsynced_path):
    written = as_v1(json.loads(unsynced_path.read_text()))  # as a version-1 file on S3 looked
    document = written
    document["config"]["storage"].update(type="s3", root="s3://bench/mpibench")
    document["environment"]["filesystem"] = {"fstype": "s3", "source": "http://127.0.0.1:9000",
                                             "mount": "s3://bench"}
    document["environment"]["backend"] = {"backend": "s3", "direct": True, "alignment": 1,
                                          "endpoint": "http://127.0.0.1:9000", "bucket": "bench"}
    for phase in document["phases"]:
        phase["cache"] = {"state": "direct", "method": "s3"}  # as files written before "object" were
        phase.pop("fsync", None) if phase["name"] == "read" else None
    document = migrate(written)
    validate_document(document)
    header = run_header(document)
    assert "endpoint http://127.0.0.1:9000, bucket bench" in header
    assert "alignment" not in header and "fsync" not in header and " on None" not in header
    table = phase_table(document)
    assert "direct" not in table and "object" in table
    assert "note: write: S3 multipart upload" in table and "hand-off of its buffer" in table
    text = summary_text(document)
    assert "note: write: S3 multipart upload" in text and "note: read" not in text
    assert cache_rows(text)["write"][2] == "object"
    # One object per transfer: each write is a PUT, its latency is the request's.
    written["config"]["bandwidth"]["object_size"] = written["config"]["bandwidth"]["transfer_size"]
    assert "multipart" not in phase_table(migrate(written))


def test_a_version_1_file_loads_in_report_and_compare(tmp_path, unsynced_path):
    """A file as schema version 1 wrote it (storage traits not recorded, the page-cache
    warning not in the phase, queue depth under bandwidth.io_depth) is migrated on load:
    report and compare read it as the current version, with the same warnings."""
    current = json.loads(unsynced_path.read_text())
    old = as_v1(current)
    io = old["config"].pop("io")
    old["config"]["bandwidth"].update(io_depth=io["depth"], io_engine=io["engine"])
    for phase in old["phases"]:
        for key in ("warning", "device_write_bytes"):
            (phase.get("cache") or {}).pop(key, None)
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    loaded = load_results(str(path))
    assert loaded["schema_version"] == SCHEMA_VERSION and loaded["migrated_from"] == 1
    assert loaded["config"]["io"] == io and "io_depth" not in loaded["config"]["bandwidth"]
    assert loaded["environment"]["backend"]["kernel_counted"] is True
    validate_document(loaded)
    done = run_cli(0, "report", str(path))
    assert done.returncode == 0, done.stderr
    assert "write phase on local_fs without fsync" in done.stdout
    done = run_cli(0, "compare", str(path), str(unsynced_path))
    assert done.returncode == 0, done.stderr
    assert "config of B differs" not in done.stdout  # io_depth and io.depth are one key once migrated


def test_modelload_files_give_cold_vs_warm_per_reader(tmp_path_factory, tmp_path):
    """`mpibench report` of real 2-rank modelload results, one per reader: one cold-vs-warm
    table per reader across them (medians recomputed from each file's loads) and the figure;
    a file that is not a modelload result is refused in one line."""
    config = os.path.join(CONFIGS, "llama3-8b-load-quick.yaml")
    once = "modelload.iterations=1"
    paths, _ = workload_runs(tmp_path_factory, "modelload-readers",
                             (config, "workload=datagen", "storage.type=direct_fs"),
                             (config, "modelload.reader=mmap", once), (config, "modelload.reader=read", once),
                             (config, "storage.type=direct_fs", once))
    files = [str(p) for p in paths[1:]]
    done = run_cli(0, "report", *files, "--png", str(tmp_path / "png"), "--html", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    readers = [line.removeprefix("reader ") for line in lines if line.startswith("reader ")]
    assert readers == ["mmap (private) on local_fs", "read on local_fs", "direct on direct_fs"]
    for path in files:
        doc = json.loads(Path(path).read_text())
        for row in doc["modelload"]["loads"]:
            [line] = [ln for ln in lines if ln.startswith(row["load"]) and ln.endswith(f"{os.path.basename(path)})")]
            assert line.split()[1:3] == ["1", f"{row['bandwidth_GBps']:.3f}"]
    assert sum("served from memory 1/1" in line for line in lines) == 2  # mmap and read: the page cache
    assert sum("served from memory 0/1" in line for line in lines) == 1  # direct: the device again
    assert (tmp_path / "png" / "modelload_readers.png").read_bytes().startswith(PNG_SIGNATURE)
    page = (tmp_path / "r.html").read_text()
    assert "modelload: cold vs warm per reader" in page and "data:image/png;base64," in page
    done = run_cli(0, "report", files[0], str(paths[0]))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not a modelload result" in done.stderr and len(done.stderr.strip().splitlines()) == 1
