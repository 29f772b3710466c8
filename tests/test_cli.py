"""The command line end to end, launched as a user would (plain and under mpiexec)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import BIN, CONFIGS, REPO, clean_env, run_cli, tree

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


def test_null_storage_under_mpiexec(tmp_path):
    """storage.type=null: a real 2-rank run whose I/Os return at once. Every operation is
    counted as on real storage, nothing is created (not even the root), and the result and
    the printed table say that the figures are mpibench's own cost per operation."""
    root = tmp_path / "never"
    output = tmp_path / "null.json"
    done = run_cli(2, "run", os.path.join(CONFIGS, "bandwidth.yaml"), "storage.type=null", f"storage.root={root}",
                   "bandwidth.transfer_size=4KiB", "bandwidth.block_size=8MiB", "bandwidth.iterations=2",
                   "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert "note: null storage: no I/O reaches any storage" in done.stdout
    doc = json.loads(output.read_text())
    assert doc["complete"] and doc["config"]["storage"]["type"] == "null"
    backend = doc["environment"]["backend"]
    assert backend["backend"] == "null" and "mpibench's own cost" in backend["note"]
    assert doc["environment"]["io_depth"] == 1 and doc["environment"]["io_engine"] == "none"
    assert any("mpibench's own cost" in w for w in doc["preflight"]["warnings"])
    assert [p["name"] for p in doc["phases"]] == ["write", "read"] * 2
    for phase in doc["phases"]:
        assert phase["bytes"] == 2 * 8 * 2**20 and phase["cache"]["state"] == "none"
        assert [r["ops"] for r in phase["ranks"]] == [8 * 2**20 // 4096] * 2
        assert phase["storage_bytes"]["read_bytes"] == 0
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


TASKSET = shutil.which("taskset")


@pytest.mark.skipif(TASKSET is None, reason="taskset (util-linux) not installed")
def test_auto_sizes_count_the_cpus_the_ranks_may_use(shared_tmpdir):
    """io_depth and the s3dlio runtime threads 'auto' divide the CPUs the node's ranks may
    run on (the union of their affinities), not the host's core count: a Slurm cpuset or
    binding must not give each rank threads for cores it cannot use."""
    mine = sorted(os.sched_getaffinity(0))
    mpiexec, cli = os.path.join(BIN, "mpiexec"), os.path.join(BIN, "mpibench")
    bench = ["run", os.path.join(CONFIGS, "bandwidth.yaml"), "storage.type=direct_fs", "bandwidth.iterations=1",
             "bandwidth.block_size=1MiB", "bandwidth.transfer_size=256KiB", "--quiet"]

    def run(name: str, *segments: list[str], prefix: tuple[str, ...] = ()) -> dict:
        """mpibench under mpiexec, one rank per segment (a taskset command, or nothing)."""
        out = os.path.join(shared_tmpdir, f"{name}.json")
        args = [*bench, f"storage.root={os.path.join(shared_tmpdir, name)}", "--output", out]
        command = [*prefix, mpiexec]
        for i, segment in enumerate(segments):
            command += [":"] * (i > 0) + ["-n", "1", *segment, cli, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env(),
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        with open(out) as f:
            return json.load(f)

    one_cpu = run("one", [], prefix=(TASKSET, "-c", str(mine[0])))
    assert one_cpu["environment"]["usable_cpus_per_node"] == 1
    assert {p["io_depth"] for p in one_cpu["phases"]} == {1}
    every = run("all", [])
    assert every["environment"]["usable_cpus_per_node"] == len(mine)
    reads = {p["io_depth"] for p in every["phases"] if p["name"] == "read"}
    assert reads == {max(1, min(16, len(mine)))} == {every["auto_choices"]["read_io_depth"]["value"]}
    # writes at the depth mpibench.choices gave them (1 for 256 KiB transfers on ext4)
    writes = {p["io_depth"] for p in every["phases"] if p["name"] == "write"}
    assert writes == {every["auto_choices"]["write_io_depth"]["value"]}
    if len(mine) >= 2:  # two ranks bound to a CPU each: their node has both
        doc = run("bound", [TASKSET, "-c", str(mine[0])], [TASKSET, "-c", str(mine[1])])
        assert doc["environment"]["usable_cpus_per_node"] == 2
        assert {p["io_depth"] for p in doc["phases"]} == {1}


def test_plan_and_preflight_commands(tmp_path):
    done = run_cli(0, "plan", os.path.join(CONFIGS, "bandwidth.yaml"), "--ranks", "64", "--ranks-per-node", "8")
    assert done.returncode == 0
    assert "64 rank(s), 8 per node, 8 node(s)" in done.stdout
    assert '"written_by": 8' in done.stdout  # rank 0 reads what the first rank of node 1 wrote
    assert "preflight will check" in done.stdout
    assert "buffers of a node's ranks fit in its available memory" in done.stdout
    # The I/O buffers preflight checks against memory: transfer_size x (io_depth + 2) per rank.
    done = run_cli(0, "plan", os.path.join(CONFIGS, "bandwidth.yaml"), "io.depth=4", "--ranks", "64",
                   "--ranks-per-node", "8")
    assert "I/O buffers: 6.00 MiB per rank (bandwidth.transfer_size x (io_depth 4 + 2)), 48.00 MiB per node " \
           "of 8 rank(s)\n" in done.stdout, done.stdout
    done = run_cli(0, "plan", os.path.join(CONFIGS, "bandwidth.yaml"), "--ranks", "4", "--json")
    buffers = json.loads(done.stdout)["buffers"]
    assert buffers["per_node_bytes"] == 4 * buffers["per_rank_bytes"] == 4 * (buffers["io_depth"] + 2) * 2**20
    assert "io_depth auto is" in buffers["note"]
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


# -- bad command lines: one line, exit 2, before any I/O ------------------------------------

SMALL = ("bandwidth.block_size=2MiB", "bandwidth.transfer_size=256KiB", "bandwidth.iterations=1")


def only_error(done, *fragments: str) -> str:
    """The single stderr line of a refused command: exit 2, no traceback, no usage text."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpibench: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def started(pids_dir) -> bool:
    """Whether a run got past its preflight (the `pids` fault writes a file per rank there)."""
    return any(name.endswith(".pid") for name in os.listdir(pids_dir))


@pytest.fixture
def pids(tmp_path):
    """A `pids` fault: tells whether the run ever started measuring."""
    path = tmp_path / "pids"
    path.mkdir()
    return path, {"MPIBENCH_FAULT": f"pids:dir={path}"}


@pytest.mark.parametrize("option", ["--output", "--csv"])
def test_empty_output_or_csv_is_refused(tmp_path, option):
    root = tmp_path / "d"
    extra = ["--output", str(tmp_path / "r.json")] if option == "--csv" else []
    done = run_cli(0, "run", QUICK, f"storage.root={root}", *SMALL, *extra, option, "", cwd=str(tmp_path))
    only_error(done, f"{option} is empty", f"e.g. {option} result.")
    assert sorted(os.listdir(tmp_path)) == []


def test_same_file_for_output_and_csv_is_refused(tmp_path, pids):
    pids_dir, env = pids
    same = tmp_path / "same.json"
    for csv in (str(same), os.path.join(str(tmp_path), ".", "same.json")):
        done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", *SMALL, "--output", str(same),
                       "--csv", csv, env=env)
        only_error(done, f"--csv {csv} is the results file too", "different names")
        assert not started(pids_dir)
    assert sorted(os.listdir(tmp_path)) == ["pids"]


def test_options_and_overrides_mix_in_any_order(tmp_path):
    output = tmp_path / "mixed.json"
    done = run_cli(0, "run", QUICK, "-q", f"storage.root={tmp_path / 'd'}", "--output", str(output),
                   "bandwidth.block_size=2MiB", "--force", "bandwidth.iterations=1", "run_id=mixed")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    doc = json.loads(output.read_text())
    assert (doc["run_id"], doc["config"]["bandwidth"]["block_size"]) == ("mixed", 2 * 2**20)
    assert doc["config"]["bandwidth"]["iterations"] == 1
    # A later override still wins over an earlier one, across an option.
    done = run_cli(0, "plan", QUICK, "bandwidth.block_size=4MiB", "--json", "bandwidth.block_size=8MiB",
                   "--ranks", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["planned_bytes"] == 2 * 8 * 2**20
    # An unknown option is still refused, in one line.
    done = run_cli(0, "run", QUICK, "--bogus", "bandwidth.iterations=1")
    only_error(done, "unrecognized arguments: --bogus", "mpibench run --help")
    usage = subprocess.run([sys.executable, "-m", "mpibench", "run", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert usage.startswith("usage: mpibench run CONFIG.yaml [KEY=VALUE ...] [options]")


def test_default_output_name_is_checked_not_a_placeholder(tmp_path, pids):
    pids_dir, env = pids
    unrelated = tmp_path / "mpibench-run.json"
    unrelated.write_text("not mpibench's")
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", *SMALL, "-q", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    written = [name for name in os.listdir(tmp_path) if name.startswith("mpibench-") and name != unrelated.name]
    assert len(written) == 1
    assert written[0] == f"mpibench-{json.loads((tmp_path / written[0]).read_text())['run_id']}.json"
    assert unrelated.read_text() == "not mpibench's"
    # The name the run would write is taken: refused before anything is measured.
    taken = tmp_path / "mpibench-named.json"
    taken.write_text("precious")
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", *SMALL, "run_id=named", cwd=str(tmp_path),
                   env=env)
    only_error(done, "results file mpibench-named.json already exists", "--force")
    assert not started(pids_dir)
    assert taken.read_text() == "precious"


@pytest.mark.parametrize("option", ["--output", "--csv"])
def test_output_directory_that_refuses_files_is_refused_before_the_run(tmp_path, pids, option):
    """/proc passes a permission check (we may run as root) but takes no new file."""
    pids_dir, env = pids
    target = "/proc/mpibench-test.json" if option == "--output" else "/proc/mpibench-test.csv"
    extra = ["--output", str(tmp_path / "r.json")] if option == "--csv" else []
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", *SMALL, *extra, option, target, env=env)
    what = "results file" if option == "--output" else "CSV file"
    only_error(done, f"cannot write {what} {target}", "no file can be created in /proc", f"choose a writable {option}")
    assert not started(pids_dir)
    assert sorted(os.listdir(tmp_path)) == ["pids"]


def test_existing_csv_names_the_csv_option(tmp_path):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("theirs")
    done = run_cli(0, "run", QUICK, f"storage.root={tmp_path / 'd'}", *SMALL, "--output", str(tmp_path / "r.json"),
                   "--csv", str(csv_path))
    only_error(done, f"CSV file {csv_path} already exists", "choose another --csv or pass --force")
    assert csv_path.read_text() == "theirs"


@pytest.mark.parametrize("ranks", [0, 2])
def test_run_without_a_configuration_file(ranks):
    for args in (["run"], ["run", "-q"], ["plan", "--ranks", "4"], ["run", "storage.root=/tmp/x"]):
        done = run_cli(ranks, *args, timeout=60)
        only_error(done, f"mpibench {args[0]} needs a configuration file", "configs/quickstart.yaml")
        assert "KEY=VALUE is required" not in done.stderr


def test_configuration_that_is_not_a_small_regular_file_is_refused(tmp_path):
    """/dev/zero was read until the OOM killer came; a FIFO blocked for ever."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.yaml"
    huge.write_text("workload: bandwidth\n" + "# padding\n" * (2**20 // 10 + 1))
    for path, fragment in (("/dev/zero", "is not a regular file"), (str(fifo), "is not a regular file"),
                           (str(tmp_path), "is a directory"), (str(huge), "over the 1048576")):
        done = run_cli(0, "run", path, f"storage.root={tmp_path / 'd'}", timeout=30)
        only_error(done, f"config file {path} ", fragment, "give the path of a YAML file")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--ranks", "-1"], ["--ranks -1 is not a rank count"]),
    (["--ranks", "0"], ["--ranks 0 is not a rank count"]),
    (["--ranks", "8", "--ranks-per-node", "-2"], ["--ranks-per-node -2 is not a rank count"]),
    (["--ranks", "2", "--ranks-per-node", "3"], ["--ranks-per-node 3 is more than --ranks 2"]),
    (["--ranks-per-node", "3"], ["--ranks-per-node 3 is more than the 1 rank(s) planned"]),
    (["--ranks", "4", "--show", "-1"], ["--show -1 is negative"]),
    (["--ranks", "x"], ["--ranks: invalid int value: 'x'"]),
], ids=["ranks_negative", "ranks_zero", "per_node_negative", "per_node_over_ranks", "per_node_over_job",
        "show_negative", "ranks_not_a_number"])
def test_plan_rank_counts_are_checked(args, fragments):
    only_error(run_cli(0, "plan", QUICK, *args), *fragments)


def test_plan_with_uneven_nodes():
    done = run_cli(0, "plan", QUICK, "--ranks", "10", "--ranks-per-node", "4")
    assert done.returncode == 0, done.stderr
    assert "10 rank(s), 4 per node, 3 node(s)" in done.stdout


def test_a_signal_python_cannot_raise_is_not_lost():
    """A KeyboardInterrupt that Python cannot propagate (raised in a weakref callback of
    the import system, or wrapped by a class body's __set_name__) still ends the run as
    an interruption, without a traceback (both seen when Ctrl-C lands during imports)."""
    code = textwrap.dedent("""
        import signal, sys, time, weakref
        from mpibench import lifecycle
        from mpibench.errors import interrupt_in
        sys.unraisablehook = lifecycle.redeliver_interrupt
        signal.signal(signal.SIGINT, lifecycle.raise_interrupt)
        class Owner:
            pass
        owner = Owner()
        def callback(_):
            raise KeyboardInterrupt("SIGINT")
        ref = weakref.ref(owner, callback)
        try:
            del owner
            time.sleep(5)
            print("lost")
        except KeyboardInterrupt as exc:
            print("raised later", exc.args[0])
        try:
            try:
                raise KeyboardInterrupt("SIGTERM")
            except KeyboardInterrupt as inner:
                raise RuntimeError("Error calling __set_name__") from inner
        except RuntimeError as wrapped:
            print("found", interrupt_in(wrapped).args[0], interrupt_in(ValueError()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["raised later SIGINT", "found SIGTERM None"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr
