"""What a run leaves for a sweep and a reader: the CSV's settings and headline columns, the
HTML report's tables and configuration in human units, size hints, and the warning for a
direct_fs root in memory."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from conftest import CONFIGS, run_cli
from test_report import TRAIN_RUNS, small_run, workload_runs

from mpibench.config import build_config
from mpibench.csvout import write_csv
from mpibench.environment import filesystem_of
from mpibench.reporting import config_rows, html_page, summary_text
from mpibench.results import phase_au_pct, phase_samples_per_s
from mpibench.units import MiB, si_size_hint


@pytest.fixture(scope="module")
def bandwidth_doc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = small_run(tmp_path_factory, "outputs", "bandwidth.transfer_size=256KiB", "io.depth=2")
    return json.loads(path.read_text())


def _rows(tmp_path: Path, document: dict) -> list[dict[str, str]]:
    path = write_csv(str(tmp_path / "r.csv"), document)
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_rows_of_a_sweep_tell_their_settings_apart(tmp_path, bandwidth_doc):
    rows = _rows(tmp_path, bandwidth_doc)
    assert len(rows) == len(bandwidth_doc["phases"])
    for row in rows:
        assert (row["ranks"], row["nodes"], row["storage_type"], row["file_mode"]) == ("2", "1", "direct_fs", "per_rank")
        assert (int(row["transfer_size"]), int(row["block_size"]), row["io_depth"], row["access"]) == (
            256 * 1024, 8 * MiB, "2", "sequential")
        assert row["samples_per_s"] == "" and row["au_pct"] == ""


def test_csv_has_the_train_workloads_headline_figures(tmp_path_factory, tmp_path):
    paths, _ = workload_runs(tmp_path_factory, "outputs-train", *TRAIN_RUNS)
    document = json.loads(paths[1].read_text())
    for phase in document["phases"][1:]:  # this tiny run has too few steps for AU: give it some
        for rank in phase["ranks"]:
            rank["au_pct"] = 90.0 + rank["rank"]
    rows = _rows(tmp_path, document)
    assert [r["phase"] for r in rows] == ["train"] * 4
    for row, phase in zip(rows, document["phases"], strict=True):
        assert float(row["samples_per_s"]) == pytest.approx(phase_samples_per_s(phase), rel=1e-3)
        au = phase_au_pct(phase)  # None where no rank had a step to count (the first is excluded)
        assert row["au_pct"] == "" if au is None else float(row["au_pct"]) == pytest.approx(au, abs=0.01)
    assert [row["au_pct"] for row in rows][1:] == ["90.50"] * 3


def test_html_report_has_tables_and_the_config_in_human_units(bandwidth_doc):
    page = html_page(bandwidth_doc, summary_text(bandwidth_doc), {})
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Configuration</h2>")]
    assert summary.count("<table>") >= 5  # bandwidth, latency, ranks, cache, repetitions
    assert "<th>MiB/s</th>" in summary and '<td class="num">' in summary
    changed, default = config_rows(bandwidth_doc["config"])
    assert ("bandwidth.transfer_size", "256KiB") in changed and ("bandwidth.block_size", "8MiB") in changed
    assert ("storage.part_size", "16MiB") in default
    config = page[page.index("<h2>Configuration</h2>"):page.index("<h2>Environment</h2>")]
    assert "<td>256KiB</td>" in config and "262144" not in config
    assert f"{len(default)} keys at their defaults" in config


@pytest.mark.parametrize(("text", "hint"), [("4MB", "did you mean 4MiB (4194304 bytes)?"),
                                            ("1GB", "did you mean 1GiB"), ("4MiB", None), ("4000000", None),
                                            ("4m", None)])
def test_size_hint_for_1000_based_units(text, hint):
    found = si_size_hint(text)
    assert (found is None) if hint is None else (hint in found)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = build_config({"storage": {"root": "/tmp/x"}}, [f"dataset.record_size={text}"])
    assert config.dataset.record_size > 0  # read as written, only hinted
    messages = [str(w.message) for w in caught]
    if hint is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith("configuration key 'dataset.record_size': ")


def test_size_hint_is_one_warning_line_under_mpiexec(tmp_path):
    done = run_cli(2, "plan", os.path.join(CONFIGS, "quickstart.yaml"), "bandwidth.transfer_size=4MB",
                   "bandwidth.block_size=64000000")
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        "mpibench: warning: configuration key 'bandwidth.transfer_size': 4MB is 4000000 bytes (1000-based); "
        "did you mean 4MiB (4194304 bytes)? Write 4MiB, or the bytes in digits to keep this size without the hint"]


@pytest.mark.skipif(filesystem_of("/dev/shm")["fstype"] != "tmpfs", reason="/dev/shm is not a tmpfs here")
def test_direct_fs_root_on_tmpfs_is_warned(tmp_path):
    root = tempfile.mkdtemp(prefix="mpibench-test-", dir="/dev/shm")
    try:
        done = run_cli(2, "preflight", os.path.join(CONFIGS, "quickstart.yaml"), f"storage.root={root}")
    finally:
        os.rmdir(root)
    if done.returncode == 2 and "O_DIRECT" in done.stderr:
        pytest.skip(f"this kernel refuses O_DIRECT on tmpfs: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert f"warning: storage.root {root} is on tmpfs at /dev/shm, a filesystem in memory: direct_fs there " \
           "measures RAM, not storage" in done.stdout


def test_lustre_stripe_is_read_from_lfs_getstripe():
    """The text `lfs getstripe -d DIR` prints (Lustre 2.12 to 2.15 print it so)."""
    from mpibench.environment import parse_lustre_stripe

    text = "stripe_count:  4 stripe_size:   4194304 pattern:       raid0 stripe_offset: -1\n"
    assert parse_lustre_stripe(text) == {"lustre_stripe_count": "4", "lustre_stripe_size": "4194304",
                                         "lustre_stripe_offset": "-1"}
    assert parse_lustre_stripe("/scratch/x has no stripe info\n") == {}
