"""The command line end to end, launched as a user would (plain and under mpiexec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import CONFIGS, REPO, run_cli, tree

QUICK = os.path.join(CONFIGS, "quickstart.yaml")


def test_help_has_examples():
    for command in ("run", "plan", "preflight"):
        proc = subprocess.run([sys.executable, "-m", "mpibench", command, "--help"], capture_output=True,
                              text=True, check=True)
        assert "examples:" in proc.stdout
    top = subprocess.run([sys.executable, "-m", "mpibench", "--help"], capture_output=True, text=True, check=True)
    assert "exit codes" in top.stdout


@pytest.mark.parametrize("ranks", [2, 4])
def test_quickstart_under_mpiexec(tmp_path, ranks):
    root = tmp_path / "data"
    output = tmp_path / "result.json"
    done = run_cli(ranks, "run", QUICK, f"storage.root={root}", "bandwidth.block_size=8MiB",
                   "bandwidth.iterations=2", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert "results written to" in done.stdout
    assert "median MiB/s" in done.stdout
    doc = json.loads(output.read_text())
    assert doc["environment"]["world_size"] == ranks
    assert doc["environment"]["launcher"]["kind"].startswith("mpiexec")
    assert [p["bytes"] for p in doc["phases"]] == [ranks * 8 * 2**20] * 4
    assert not root.exists()


def test_singleton_run_and_csv(tmp_path):
    output = tmp_path / "r.json"
    csv_path = tmp_path / "r.csv"
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", "bandwidth.block_size=4MiB",
                   "bandwidth.iterations=1", "--output", str(output), "--csv", str(csv_path), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("run_id,workload,phase") and len(rows) == 3
    assert json.loads(output.read_text())["environment"]["launcher"]["kind"] == "singleton"


@pytest.mark.parametrize("ranks", [2, 4])
def test_preflight_error_ends_every_rank(tmp_path, ranks):
    done = run_cli(ranks, "run", QUICK, "storage.type=s3", f"storage.root={tmp_path}", timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["mpibench: error: storage.type=s3 needs an s3://bucket/prefix root; "
                     "for a local directory use local_fs or direct_fs"]
    assert "Traceback" not in done.stderr + done.stdout
    assert done.seconds < 30
    assert os.listdir(tmp_path) == []


def test_storage_errors(tmp_path):
    missing = tmp_path / "a" / "b"
    done = run_cli(2, "run", QUICK, f"storage.root={missing}")
    assert done.returncode == 2
    assert f"directory {tmp_path / 'a'} does not exist" in done.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = run_cli(2, "run", QUICK, f"storage.root={a_file}")
    assert done.returncode == 2 and "is not a directory" in done.stderr
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'r'}", "bandwidth.block_size=1000TiB")
    assert done.returncode == 2 and "not enough free space" in done.stderr and "bytes) are free" in done.stderr
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'r'}", "bandwidth.transfer_size=1000",
                   "bandwidth.block_size=10000")
    assert done.returncode == 2
    assert "not a multiple of the direct-I/O alignment" in done.stderr
    assert "use " in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_results_file_is_never_overwritten(tmp_path):
    output = tmp_path / "r.json"
    output.write_text("precious")
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", "--output", str(output))
    assert done.returncode == 2 and "already exists" in done.stderr and "--force" in done.stderr
    assert output.read_text() == "precious"
    assert not (tmp_path / "d").exists()


def test_plan_and_preflight_commands(tmp_path):
    done = run_cli(0, "plan", os.path.join(CONFIGS, "bandwidth.yaml"), "--ranks", "64", "--ranks-per-node", "8")
    assert done.returncode == 0
    assert "64 rank(s), 8 per node, 8 node(s)" in done.stdout
    assert '"written_by": 8' in done.stdout  # rank 0 reads what the first rank of node 1 wrote
    assert "preflight will check" in done.stdout
    before = tree(str(tmp_path))
    done = run_cli(2, "preflight", QUICK, f"storage.root={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert "O_DIRECT works" in done.stdout and "preflight passed" in done.stdout
    assert tree(str(tmp_path)) == before


def test_default_output_name(tmp_path):
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", "bandwidth.block_size=2MiB",
                   "bandwidth.iterations=1", "run_id=named", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mpibench-named.json").exists()


def test_repo_layout():
    for name in ("setup.cfg", "pyproject.toml", "mpibench", "tests", "slurm", "configs", "README.md", ".ci/run"):
        assert os.path.exists(os.path.join(REPO, name)), name
