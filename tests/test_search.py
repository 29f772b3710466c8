"""`mpibench search`: the doubling-then-bisection order, and a 4-rank search through the CLI
that ends with its table, JSON and figure. The verdicts cannot depend on the machine's
speed: a threshold of 0 % passes every trial, and no compute at all (AU 0 %) fails every
one against a 50 % threshold."""

from __future__ import annotations

import json
import os

import pytest
from conftest import CONFIGS, run_cli

from mpibench.search import next_count


def order_of(most: int, passes_up_to: int) -> list[int]:
    """The counts search tries when every count up to `passes_up_to` passes."""
    tried: dict[int, bool] = {}
    k = next_count(tried, most)
    while k is not None:
        assert k not in tried and 1 <= k <= most
        tried[k] = k <= passes_up_to
        k = next_count(tried, most)
    best = max((k for k, ok in tried.items() if ok), default=0)
    assert best == min(passes_up_to, most)
    return list(tried)


def test_doubling_then_bisection():
    assert order_of(8, 5) == [1, 2, 4, 8, 6, 5]
    assert order_of(8, 8) == [1, 2, 4, 8]
    assert order_of(8, 0) == [1]
    assert order_of(6, 6) == [1, 2, 4, 6]
    assert order_of(6, 3) == [1, 2, 4, 3]
    assert order_of(1, 1) == [1]
    assert order_of(64, 37) == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("search", numbered=True))
    common = [f"storage.root={root}", "dataset.num_files=8", "dataset.samples_per_file=20",
              "train.batch_size=5", "train.epochs=1"]
    done = run_cli(2, "run", os.path.join(CONFIGS, "resnet50-quick.yaml"), "workload=datagen", *common,
                   "-q", "-o", os.path.join(root, "gen.json"))
    assert done.returncode == 0, done.stderr
    return root, common


@pytest.mark.parametrize("case", ["all_pass", "all_fail"])
def test_search_at_4_ranks_writes_table_json_and_figure(small_dataset, case):
    root, common = small_dataset
    out = os.path.join(root, f"{case}.json")
    if case == "all_pass":
        extra = ["train.computation_time=0.01", "--min-au", "0"]
    else:
        extra = ["train.computation_time=0", "--min-au", "50"]
    done = run_cli(4, "search", os.path.join(CONFIGS, "resnet50-quick.yaml"), *common, *extra, "-o", out,
                   timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.load(open(out))
    counts = [t["accelerators_per_host"] for t in doc["trials"]]
    assert doc["ranks_per_host"] == 4 and doc["hosts"] == 1
    for t in doc["trials"]:
        assert set(t) >= {"accelerators", "au_pct_mean", "au_pct_min", "samples_per_s", "bandwidth_MiBps",
                          "passed", "run_id"}
        assert t["samples_per_s"] > 0 and t["bandwidth_MiBps"] > 0
    if case == "all_pass":
        assert counts == [1, 2, 4] and all(t["passed"] for t in doc["trials"])
        assert doc["largest_passing"] == 4
        assert "largest passing: 4 accelerator(s) per host, 4 in all (1 host(s)), AU >= 0%" in done.stdout
    else:
        assert counts == [1] and doc["trials"][0]["au_pct_mean"] == 0.0 and not doc["trials"][0]["passed"]
        assert doc["largest_passing"] == 0
        assert "no accelerator count reaches AU >= 50%, not even 1 per host" in done.stdout
    table = [line for line in done.stdout.splitlines() if line.strip().endswith(("PASS", "FAIL"))
             and not line.startswith("trial")]
    assert len(table) == len(counts)
    with open(out[:-5] + ".png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_search_refuses_a_config_without_threshold(small_dataset):
    root, common = small_dataset
    done = run_cli(2, "search", os.path.join(CONFIGS, "resnet50-quick.yaml"), *common, "train.accelerator=none",
                   "train.model=none", "train.computation_time=0.01", "-o", os.path.join(root, "x.json"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "mpibench: error: search needs an AU threshold; set train.accelerator (its published minimum), "
        "train.min_au or --min-au"]
    assert not os.path.exists(os.path.join(root, "x.json"))
