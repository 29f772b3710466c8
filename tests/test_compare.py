"""`mpibench compare`: significance only when the repetitions support it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from test_report import small_run

from mpibench.compare import (
    METRICS,
    compare_metric,
    compare_text,
    iterations_needed,
    mann_whitney_p,
    smallest_p,
)

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
