"""Device bytes per payload byte in every phase, and datagen's small files on direct_fs."""

from __future__ import annotations

import os

import pytest
from test_workloads_unit import one_rank

from mpibench import environment
from mpibench.config import build_config
from mpibench.formats import encode
from mpibench.report import phase_table
from mpibench.results import annotate_amplification
from mpibench.run import execute
from mpibench.schema import validate_document
from mpibench.workloads.datagen import SMALL_FILE

DS = {"name": "small", "num_files": 12, "samples_per_file": 1, "record_size": 4500, "record_size_stdev": 0,
      "format": "raw", "num_subfolders": 0}


def _root(tmp_path) -> str:
    parent = os.environ.get("MPIBENCH_TEST_DIR") or str(tmp_path)
    if environment.block_stat_path(parent) is None:
        pytest.skip(f"{parent} has no block device counters")
    return os.path.join(parent, f"amp-{os.getpid()}-{tmp_path.name}")


def test_amplification_is_device_bytes_in_the_phase_direction_over_payload():
    device = {"read_bytes": 3 * 4096, "write_bytes": 9 * 4096}
    write = {"name": "write", "fsync": True, "bytes": 4 * 4096, "hosts": [{"block_device": device}]}
    read = {"name": "read", "bytes": 4 * 4096, "hosts": [{"block_device": device}, {"block_device": device}]}
    unknown = {"name": "read", "bytes": 4096, "hosts": [{"block_device": None}]}
    for phase in (write, read, unknown):
        annotate_amplification(phase)
    assert write["device_per_payload"] == 9 / 4 and read["device_per_payload"] == 6 / 4
    assert "device_per_payload" not in unknown


def test_bandwidth_phases_show_device_per_payload(tmp_path):
    root = _root(tmp_path)
    config = build_config({"workload": "bandwidth", "storage": {"type": "direct_fs", "root": root},
                           "bandwidth": {"transfer_size": "64KiB", "block_size": "1MiB", "iterations": 1},
                           "io": {"depth": 1}})
    doc = execute(config, one_rank(), output=None)
    assert [("device_per_payload" in p) for p in doc["phases"]] == [True, True]
    assert all(p["device_per_payload"] >= 0 for p in doc["phases"])
    table = phase_table(doc)
    assert "device/payload" in table.splitlines()[0]
    assert f"{doc['phases'][0]['device_per_payload']:.2f}x" in table.splitlines()[2]
    validate_document(doc)


def test_datagen_writes_small_unaligned_files_buffered_on_direct_fs(tmp_path):
    """4500-byte files (not a multiple of the alignment, below SMALL_FILE) go through the page
    cache with an fsync; the result counts them, every file has its true size and train
    reads them all back."""
    root = _root(tmp_path)
    data = {"workload": "datagen", "storage": {"type": "direct_fs", "root": root}, "dataset": DS}
    doc = execute(build_config(data), one_rank(), output=None)
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(root, "small"))
             for f in fs if not f.startswith(".")]
    expected = encode(build_config(data).dataset, 0).size
    assert expected % 512 and expected < SMALL_FILE
    assert sizes == [expected] * 12
    assert doc["datagen"]["buffered_files"] == 12
    assert doc["datagen"]["device_per_payload"] == doc["phases"][0]["device_per_payload"]
    validate_document(doc)
    train = execute(build_config({**data, "workload": "train",
                                  "train": {"epochs": 1, "batch_size": 3, "computation_time": 0.0}}),
                    one_rank(), output=None)
    assert train["complete"] and sum(p["ops"] for p in train["phases"] if p["name"] == "train") == 12


def test_datagen_keeps_o_direct_for_aligned_files(tmp_path):
    root = _root(tmp_path)
    ds = dict(DS, format="raw", record_size=8192)
    doc = execute(build_config({"workload": "datagen", "storage": {"type": "direct_fs", "root": root},
                                "dataset": ds}), one_rank(), output=None)
    assert doc["datagen"]["buffered_files"] == 0 and doc["datagen"]["files"] == 12
