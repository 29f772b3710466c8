"""`mpibench ior` (IOR's options translated to the bandwidth workload), `mpibench configs`
and `mpibench keys`."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import CONFIGS, run_cli

from mpibench.config import build_config
from mpibench.errors import ConfigError
from mpibench.ior_cli import ior_summary, parse_ior
from mpibench.units import MiB


def test_translation_of_the_common_options(tmp_path):
    request = parse_ior(["-a", "POSIX", "--posix.odirect", "-t", "1m", "-b", "64m", "-s", "2", "-F", "-C", "-e",
                         "-i", "5", "-w", "-r", "-R", "-z", "-D", "30", "-o", str(tmp_path / "testFile"), "-k",
                         "-O", "summaryFormat=JSON"])
    config = build_config(request.config)
    assert (config.storage.type, config.storage.root) == ("direct_fs", str(tmp_path))
    bw = config.bandwidth
    assert (bw.transfer_size, bw.block_size, bw.file_mode, bw.iterations) == (MiB, 128 * MiB, "per_rank", 5)
    assert (bw.fsync, bw.reorder_reads, bw.access, bw.deadline, config.io.depth) == (True, True, "random", 30.0, 1)
    assert config.keep_files and config.verify and request.summary_format == "JSON"


def test_ior_defaults_are_iors():
    """Neither -F, -C, -e nor -i: one shared file, no reordering, no fsync, one repetition,
    256 KiB transfers of 1 MiB blocks, buffered POSIX reading what the page cache holds."""
    config = build_config(parse_ior(["-o", "/tmp/x/testFile"]).config)
    bw = config.bandwidth
    assert (bw.file_mode, bw.reorder_reads, bw.fsync, bw.iterations) == ("shared", False, False, 1)
    assert (bw.transfer_size, bw.block_size, bw.cache, config.storage.type) == (256 * 1024, MiB, "warm", "local_fs")


def test_mmap_runs_buffered_with_a_note():
    request = parse_ior(["-a", "MMAP", "-o", "/tmp/x/f"])
    assert request.config["storage"]["type"] == "local_fs"
    assert any("no mmap I/O" in note for note in request.notes)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["-x"], "ior option -x is not one mpibench ior translates"),
    (["--mpiio.collective"], "ior option --mpiio.collective is not one"),
    (["-a", "HDF5"], "-a POSIX and -a MMAP only"),
    (["-w"], "ior option -w alone"),
    (["-s", "4"], "with one shared file"),
    (["-t", "3m", "-b", "4m"], "is not a multiple of -t 3m"),
    (["-t", "4MB"], "did you mean 4m (4MiB)?"),
    (["-O", "summaryFile=x"], "summaryFormat=JSON|CSV only"),
    (["-i"], "ior option -i needs a value"),
    (["-i", "0"], "-i 0 is not a whole number of at least 1"),
    (["-a", "MMAP", "--posix.odirect"], "do not go together"),
])
def test_refused_options_name_themselves(argv, fragment):
    with pytest.raises(ConfigError) as info:
        parse_ior(argv)
    assert fragment in info.value.line()


def _document(write: list[float], read: list[float]) -> dict:
    phases = []
    for i, (w, r) in enumerate(zip(write, read)):
        for name, mibps in (("write", w), ("read", r)):
            phases.append({"name": name, "iteration": i, "bytes": 128 * MiB, "seconds": 128 / mibps,
                           "bandwidth_MiBps": mibps, "ops_per_s": mibps})
    return {"phases": phases, "config": {"bandwidth": {"file_mode": "per_rank", "reorder_reads": True}},
            "environment": {"world_size": 2, "ranks_per_node": [2]}}


def test_summary_lines_are_iors():
    request = parse_ior(["-t", "1m", "-b", "64m", "-F", "-i", "3"])
    text = ior_summary(_document([100.0, 200.0, 150.0], [400.0, 300.0, 500.0]), request)
    assert "Max Write: 200.00 MiB/sec (209.72 MB/sec)" in text
    assert "Max Read:  500.00 MiB/sec (524.29 MB/sec)" in text
    write = next(line for line in text.splitlines() if line.startswith("write "))
    # max, min, mean and IOR's (population) standard deviation
    assert write.split()[1:5] == ["200.00", "100.00", "150.00", "40.82"]
    request.summary_format = "JSON"
    data = json.loads(ior_summary(_document([100.0], [400.0]), request))
    assert data["max"] == {"writeMiB": 100.0, "writeMB": 104.8576, "readMiB": 400.0, "readMB": 419.4304}
    assert [row["operation"] for row in data["summary"]] == ["write", "read"]
    request.summary_format = "CSV"
    lines = ior_summary(_document([100.0], [400.0]), request).splitlines()
    assert lines[0].startswith("operation,API,") and lines[1].startswith("write,POSIX,")


def test_ior_command_under_mpiexec_prints_iors_summary(tmp_path):
    """The issue's command, as an IOR user types it (with -o in a temporary directory)."""
    output = tmp_path / "r.json"
    done = run_cli(2, "ior", "-a", "POSIX", "--posix.odirect", "-t", "1m", "-b", "64m", "-F", "-C", "-e",
                   "-i", "5", "-o", str(tmp_path / "testFile"), "--output", str(output), "--progress=off",
                   timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(output.read_text())
    assert doc["config"]["storage"]["type"] == "direct_fs" and doc["config"]["bandwidth"]["iterations"] == 5
    for name, label in (("write", "Max Write: "), ("read", "Max Read:  ")):
        match = re.search(rf"^{label}(\d+\.\d\d) MiB/sec \((\d+\.\d\d) MB/sec\)$", done.stdout, re.M)
        assert match, done.stdout
        best = max(p["bandwidth_MiBps"] for p in doc["phases"] if p["name"] == name)
        assert float(match.group(1)) == pytest.approx(best, abs=0.006)
        assert float(match.group(2)) == pytest.approx(best * 1.048576, abs=0.006)
    # mpibench's own table comes first, IOR's summary after it
    assert done.stdout.index("median MiB/s") < done.stdout.index("Summary of all tests:")
    assert os.listdir(tmp_path) == ["r.json"]


def test_unknown_ior_option_is_one_line_on_every_launch():
    done = run_cli(2, "ior", "-t", "1m", "--mpiio.hints")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mpibench: error: ior option --mpiio.hints is not one mpibench ior translates; the options it knows: "
        "-a, -t, -b, -s, -i, -D, -o, -O, -Q, -F, -C, -e, -w, -r, -W, -R, -z, -k, --posix.odirect "
        "(see 'mpibench ior --help')"]


def test_configs_lists_every_shipped_config_once():
    done = run_cli(0, "configs")
    assert done.returncode == 0, done.stderr
    names = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".yaml"))
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == names
    assert dict((r[0], r[1]) for r in rows)["llama3-8b.yaml"] == "checkpoint"


def test_keys_lists_every_key_with_its_default_in_human_units():
    done = run_cli(0, "keys")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()}
    assert rows["bandwidth.transfer_size"] == "1MiB" and rows["storage.part_size"] == "16MiB"
    assert rows["io.depth"] == "auto" and rows["keep_files"] == "false"
    section = run_cli(0, "keys", "checkpoint").stdout.splitlines()
    assert section and all(line.startswith("checkpoint.") for line in section)
    wrong = run_cli(0, "keys", "bandwith")
    assert wrong.returncode == 2 and "did you mean 'bandwidth'?" in wrong.stderr
