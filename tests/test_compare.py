"""`mpibench compare`: significance only when the repetitions support it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from test_report import CHECKPOINT_RUN, TRAIN_RUNS, small_run, workload_runs

from mpibench.compare import (
    MAX_CONFIG_DIFFERENCES,
    METRICS,
    compare_metric,
    compare_text,
    config_differences,
    iterations_needed,
    mann_whitney_p,
    smallest_p,
)
from mpibench.errors import ResultsError
from mpibench.schema_versions import migrate

BANDWIDTH = METRICS[0]
LATENCY = METRICS[2]


@pytest.fixture(scope="module")
def result_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_run(tmp_path_factory, "compare")


@pytest.fixture(scope="module")
def document(result_path: Path) -> dict[str, Any]:
    return json.loads(result_path.read_text())


def scaled(document: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy whose phases all moved their bytes `factor` times faster."""
    faster = copy.deepcopy(document)
    for phase in faster["phases"]:
        for key in ("bandwidth_MiBps", "bandwidth_GiBps", "bandwidth_GBps"):
            phase[key] *= factor
    return faster


def steady(document: dict[str, Any]) -> dict[str, Any]:
    """A copy whose iterations differ by 2 % steps: the run behind `document` is tiny (8 MiB
    per rank), so on a loaded machine its iterations can differ by more than the 10x the
    tests below compare against, which would make them about the machine, not the test."""
    calm = copy.deepcopy(document)
    for phase in calm["phases"]:
        factor = (100.0 if phase["name"] == "write" else 80.0) * (1 + 0.02 * phase["iteration"]) / phase["bandwidth_MiBps"]
        for key in ("bandwidth_MiBps", "bandwidth_GiBps", "bandwidth_GBps"):
            phase[key] *= factor
    return calm


def bandwidth_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if "bandwidth MiB/s" in line]


def test_clearly_faster_copy_is_significant(document):
    document = steady(document)
    text = compare_text([("a.json", document), ("b.json", scaled(document, 10.0))])
    rows = bandwidth_rows(text)
    assert len(rows) == 2  # write and read
    for row in rows:
        assert "10.000x" in row and "yes, better" in row
    assert "Mann-Whitney U" in text and "bootstrap" in text
    slower = compare_text([("a.json", document), ("c.json", scaled(document, 0.1))])
    assert all("yes, worse" in row for row in bandwidth_rows(slower))


def test_identical_pair_is_not_significant(document):
    text = compare_text([("a.json", document), ("a2.json", copy.deepcopy(document))])
    assert "yes" not in text.split("Method:")[0]
    for row in bandwidth_rows(text):
        assert "1.000x" in row and row.rstrip().endswith("no")


def test_too_few_iterations_is_na(document):
    document = steady(document)
    two = copy.deepcopy(document)
    two["phases"] = [p for p in two["phases"] if p["iteration"] < 2]
    text = compare_text([("a.json", two), ("b.json", scaled(two, 10.0))])
    assert all("n/a (need >= 3 iterations)" in row for row in bandwidth_rows(text))
    three = copy.deepcopy(document)
    three["phases"] = [p for p in three["phases"] if p["iteration"] < 3]
    text = compare_text([("a.json", three), ("b.json", scaled(three, 10.0))])
    # 3 vs 3 iterations: an exact rank test cannot go below p = 0.1, so no verdict at alpha 0.05.
    assert all("n/a (need >= 4 iterations)" in row and "0.100" in row for row in bandwidth_rows(text))


def test_phases_that_did_not_complete_are_left_out(document):
    broken = scaled(document, 10.0)
    for phase in broken["phases"]:
        if phase["name"] == "read":
            phase["complete"] = False
    text = compare_text([("a.json", document), ("b.json", broken)])
    assert "4 phase(s) of B did not complete and are left out" in text
    assert "phases only in A: read" in text
    assert [row.split()[0] for row in bandwidth_rows(text)] == ["write"]


def test_cli_compare_three_files(tmp_path, document):
    base, faster = tmp_path / "base.json", tmp_path / "faster.json"
    base.write_text(json.dumps(steady(document)))
    faster.write_text(json.dumps(scaled(steady(document), 10.0)))
    done = run_cli(0, "compare", str(base), str(faster), str(base))
    assert done.returncode == 0, done.stderr
    assert "B vs A" in done.stdout and "C vs A" in done.stdout
    b_part, c_part = done.stdout.split("C vs A")
    assert "yes, better" in b_part and "yes" not in c_part.split("Method:")[0]
    assert "config of B is the same as A's" in done.stdout


def test_cli_compare_needs_two_files(result_path):
    done = run_cli(0, "compare", str(result_path))
    assert done.returncode == 2
    assert done.stderr.strip() == ("mpibench: error: compare needs at least two results files; "
                                   "e.g. mpibench compare a.json b.json")


def test_statistics():
    assert smallest_p(3, 3) == pytest.approx(0.1)
    assert smallest_p(4, 4) == pytest.approx(2 / 70)
    assert iterations_needed(0.05) == 4
    assert iterations_needed(0.01) == 5
    assert mann_whitney_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert mann_whitney_p([1, 1, 3, 4], [5, 6, 7, 7]) < 0.05  # ties: permutation test
    assert mann_whitney_p([5, 5, 5], [5, 5, 5]) == pytest.approx(1.0)
    verdict = compare_metric([100, 101, 99, 100, 102], [90, 91, 89, 90, 92], BANDWIDTH, 0.05)
    assert verdict.significant and verdict.text == "yes, worse"
    assert verdict.ci_high < 1 and verdict.ratio == pytest.approx(0.9)
    # Lower latency is better.
    verdict = compare_metric([2.0, 2.1, 2.2, 2.3], [1.0, 1.1, 1.2, 1.3], LATENCY, 0.05)
    assert verdict.text == "yes, better"
    overlapping = compare_metric([100, 120, 90, 110, 105], [101, 119, 95, 108, 104], BANDWIDTH, 0.05)
    assert not overlapping.significant and overlapping.text == "no"


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (path,), _ = workload_runs(tmp_path_factory, "compare-checkpoint", CHECKPOINT_RUN)
    return path


def test_different_workloads_are_not_compared(tmp_path, result_path, checkpoint_path):
    checkpoint = json.loads(checkpoint_path.read_text())
    differences = config_differences(checkpoint, json.loads(result_path.read_text()))
    assert differences[0] == "workload: checkpoint -> bandwidth"
    # Sections one of the workloads does not read are left out: their defaults say nothing.
    assert not [d for d in differences if d.startswith(("checkpoint.", "dataset.", "train."))]
    assert not [d for d in differences if d.startswith("bandwidth.") and not d.startswith("bandwidth.io_")]
    # Two files: nothing to compare, one line and exit 2.
    done = run_cli(0, "compare", str(result_path), str(checkpoint_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"mpibench: error: {checkpoint_path} runs the checkpoint workload and {result_path} the bandwidth "
        "workload: they measure different things; compare runs of the same workload"]
    # Three files: the pair of different workloads is left out with a warning, the other compared.
    done = run_cli(0, "compare", str(result_path), str(checkpoint_path), str(result_path))
    assert done.returncode == 0, done.stderr
    b_part, c_part = done.stdout.split("C vs A")
    assert "config of B differs from A in: workload: bandwidth -> checkpoint" in b_part
    assert ("warning: B vs A not compared: B runs the checkpoint workload and A the bandwidth workload, they "
            "measure different things") in b_part
    assert "B/A" not in b_part and "bandwidth MiB/s" in c_part
    with pytest.raises(ResultsError, match="measure different things"):
        compare_text([("a.json", json.loads(result_path.read_text())), ("b.json", checkpoint)])


def test_a_file_written_before_a_key_moved_compares_under_the_new_name(document):
    """bandwidth.io_depth / io_engine of version-1 files are io.depth / io.engine once loaded
    (schema_versions.migrate): equal values are no difference, others are named by the new key."""
    older = copy.deepcopy(document)
    older["schema_version"] = 1
    io = older["config"].pop("io")
    older["config"]["bandwidth"].update(io_depth=io["depth"], io_engine=io["engine"])
    assert config_differences(migrate(older), document) == []
    older["config"]["bandwidth"]["io_depth"] = 64
    assert config_differences(migrate(older), document) == [f"io.depth: 64 -> {io['depth']}"]


def test_differences_that_change_the_measurement_come_first(document):
    other = copy.deepcopy(document)
    other["environment"]["world_size"] = 4
    other["environment"]["num_nodes"] = 2
    other["config"]["storage"]["type"] = "local_fs"
    for key, value in (("transfer_size", 4096), ("block_size", 1), ("iterations", 9), ("fsync", False),
                       ("access", "random"), ("cache", "warm")):
        other["config"]["bandwidth"][key] = value
    other["config"]["io"]["depth"] = 8
    other["config"]["train"]["epochs"] = 7  # a section the bandwidth workload does not read
    other["config"]["metrics"]["interval"] = 1.0
    differences = config_differences(document, other)
    assert differences[:4] == ["ranks (world size): 2 -> 4", "nodes: 1 -> 2", "storage.type: direct_fs -> local_fs",
                               "bandwidth.access: sequential -> random"]
    assert not any(d.startswith("train.") for d in differences)
    assert differences[-1] == "metrics.interval: 0.01 -> 1.0"
    text = compare_text([("a.json", document), ("b.json", other)])
    line = next(line for line in text.splitlines() if "config of B differs" in line)
    assert line.count("; ") == MAX_CONFIG_DIFFERENCES and "ranks (world size): 2 -> 4" in line


@pytest.fixture(scope="module")
def train_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    paths, _ = workload_runs(tmp_path_factory, "compare-train", *TRAIN_RUNS)
    return paths[1]


def test_train_results_compare_au_and_samples_per_second(train_path):
    document = json.loads(train_path.read_text())
    faster = copy.deepcopy(document)
    for phase in faster["phases"]:
        phase["seconds"] /= 2
        for rank in phase["ranks"]:
            rank["au_pct"] = 50.0 + phase["iteration"]
    for phase in document["phases"]:
        for rank in phase["ranks"]:
            rank["au_pct"] = 10.0 + phase["iteration"]
    text = compare_text([("a.json", document), ("b.json", faster)])
    samples = next(line for line in text.splitlines() if "samples/s" in line)
    au = next(line for line in text.splitlines() if "AU %" in line)
    assert "2.000x" in samples and "4/4" in samples and "yes, better" in samples
    assert "4/4" in au and "yes, better" in au
    expected = sum(r["samples"] for r in document["phases"][0]["ranks"]) / document["phases"][0]["seconds"]
    assert document["train"]["epochs"][0]["samples_per_s"] == pytest.approx(expected)
    assert [line.split()[0] for line in bandwidth_rows(text)] == ["train"]
