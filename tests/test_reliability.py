"""Reliability (issue #7): every fault and bad input ends the whole job promptly, with one
clear line and the right exit code, and leaves the storage as it was except for what the
run owned.

Each case launches `mpiexec -n 2|4 mpibench run ...` as a user would and checks the
contract: exit code (2 configuration/preflight, 1 run-time I/O, 130 interrupted), one
`mpibench: error:` line naming the cause (and the rank and path where relevant), no
traceback, every rank gone within END_WITHIN_S of the fault, a partial result marked
`"complete": false` when one is written, and an unchanged tree around the run directory.

Faults are injected with MPIBENCH_FAULT (mpibench/faults.py). Full or read-only
filesystems are small tmpfs mounts made by the test (we run as root, so chmod alone does
not stop a write); the cases that need one are skipped where mount is not permitted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import (
    CONFIGS,
    Completed,
    clean_env,
    launcher_files,
    mpi_segments,
    mpibench_cmd,
    tree,
    unmapped,
    unopened,
)

from mpibench import uring

QUICK = os.path.join(CONFIGS, "quickstart.yaml")
END_WITHIN_S = 30.0  # the contract: every rank gone this long after the fault (or the start)
MiB = 2**20
# A few MiB per rank keeps every case to about a second of I/O.
SMALL = ("bandwidth.block_size=4MiB", "bandwidth.transfer_size=256KiB", "bandwidth.iterations=1")

LAUNCHER_LINES = ("[mpiexec@", "Abort(")  # Hydra's notes; MPICH's line after MPI_Abort
TIMES: list[tuple[str, float]] = []  # (case, seconds from fault or start to the job's end)


@pytest.fixture(scope="module", autouse=True)
def _report_times(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print each case's time-to-end after the module (the issue asks for the slowest)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not TIMES:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("reliability: seconds from the fault (or the start) until the job ended")
        for case, seconds in sorted(TIMES, key=lambda t: -t[1]):
            reporter.write_line(f"  {seconds:6.2f}  {case}")


def _record(request: pytest.FixtureRequest, seconds: float) -> None:
    TIMES.append((request.node.name, seconds))


# -- launching ------------------------------------------------------------------------------


class Job:
    """One `mpiexec ... mpibench` in its own session, so the test can always end it all."""

    def __init__(self, ranks: int, *args: str, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        full_env = clean_env(env)
        if not env:
            full_env.pop("MPIBENCH_FAULT", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(mpibench_cmd(ranks, *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env,
                                     cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)

    def signal(self, signum: int) -> float:
        """Send a signal to the launcher (as Ctrl-C or scancel would); return when."""
        os.kill(self.proc.pid, signum)
        return time.monotonic()

    def finish(self, since: float | None = None, limit: float = END_WITHIN_S) -> Completed:
        """Wait for the job; fail (after killing every process of it) past `limit` seconds.

        `seconds` of the result counts from `since` (the fault), else from the start.
        """
        since = self.started if since is None else since
        try:
            out, err = self.proc.communicate(timeout=max(0.1, since + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            pytest.fail(f"the job did not end within {limit} s of the fault:\n{out}\n{err}")
        return Completed(self.proc.returncode, out, err, time.monotonic() - since)

    def kill(self) -> None:
        """End every process of the job (test teardown)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Jobs started by a test; any still running at its end are killed."""
    started: list[Job] = []
    yield started
    for job in started:
        job.kill()


def launch(jobs: list[Job], ranks: int, *args: str, fault: str = "", cwd: str | None = None) -> Job:
    job = Job(ranks, *args, env={"MPIBENCH_FAULT": fault} if fault else None, cwd=cwd)
    jobs.append(job)
    return job


def run(jobs: list[Job], ranks: int, *args: str, fault: str = "") -> Completed:
    """Run to the end; `seconds` counts from the start."""
    return launch(jobs, ranks, *args, fault=fault).finish()


def wait_for(path: str, job: Job, limit: float = 60.0) -> None:
    """Wait until `path` exists (a fault hook's signal), failing if the job ends first."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if job.proc.poll() is not None:
            out, err = job.proc.communicate()
            pytest.fail(f"job ended (exit {job.proc.returncode}) before {path} appeared:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {limit} s")
        time.sleep(0.01)


def wait_delivered(pid: int, signum: int, limit: float = 10.0) -> None:
    """Wait until a signal sent to process `pid` is no longer pending (the kernel delivered it)."""
    bit = 1 << (signum - 1)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        if not (int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)) & bit:
            return
        time.sleep(0.005)
    pytest.fail(f"signal {signum} to process {pid} still pending after {limit} s")


# -- the contract ---------------------------------------------------------------------------


def error_line(done: Completed) -> str:
    """The one `mpibench: error:` line; the launcher's and MPI's own lines may surround it."""
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mpibench: error: ")]
    assert len(errors) == 1, done.stderr
    others = [line for line in lines if line not in errors
              and not line.startswith(("mpibench: warning: ", "progress: ", *LAUNCHER_LINES))]
    assert others == [], done.stderr
    return errors[0]


def check_contract(done: Completed, code: int, *fragments: str) -> str:
    """Exit code, one clear line holding every fragment, no traceback, ended in time."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    line = error_line(done)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert done.seconds < END_WITHIN_S, done.seconds
    return line


def partial_result(path: str, *fragments: str) -> dict:
    """The results file of a failed run: marked incomplete, and saying why."""
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    assert doc["complete"] is False
    for fragment in fragments:
        assert fragment in doc["incomplete_reason"], doc["incomplete_reason"]
    return doc


@pytest.fixture
def sandbox(tmp_path) -> dict[str, str]:
    """A directory holding the storage root with files that are not the run's.

    `keep/` sits beside the root and `root/precious.bin` inside it: both must survive
    every run. Results go to `results/`, outside the sandbox, so tree(sandbox) must be
    the same before and after each run.
    """
    box = tmp_path / "box"
    root = box / "root"
    (box / "keep").mkdir(parents=True)
    (box / "keep" / "notes.txt").write_text("not mpibench's")
    root.mkdir()
    (root / "precious.bin").write_bytes(os.urandom(5000))
    (tmp_path / "results").mkdir()
    (tmp_path / "faults").mkdir()
    return {"box": str(box), "root": str(root), "results": str(tmp_path / "results"),
            "faults": str(tmp_path / "faults"), "output": str(tmp_path / "results" / "r.json")}


# -- mounts (root may chmod nothing away: read-only and full filesystems are real mounts) -----


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a test filesystem here ({done.stderr.strip() or done.returncode}); "
                    "run as root (or with CAP_SYS_ADMIN) to cover this case")


@contextlib.contextmanager
def tmpfs(path: str, size: str, readonly_after: bool = False,
          populate: dict[str, bytes] | None = None) -> Iterator[str]:
    """A small tmpfs at `path` (created), optionally populated and then remounted read-only."""
    os.makedirs(path, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
    try:
        for name, data in (populate or {}).items():
            with open(os.path.join(path, name), "wb") as handle:
                handle.write(data)
        if readonly_after:
            subprocess.run(["mount", "-o", "remount,ro", path], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


# -- 1. configuration and preflight: exit 2, before any I/O -----------------------------------


def _config_file(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# One case per kind of mistake (tests/test_config.py checks every message in-process;
# here each must end the whole job the same way).
CONFIG_CASES = {
    "unknown_key": (["bandwidth.trasfer_size=4MiB"], ["unknown configuration key 'bandwidth.trasfer_size'",
                                                       "did you mean 'transfer_size'"]),
    "wrong_type": (["bandwidth.iterations=many"], ["'bandwidth.iterations' must be an integer"]),
    "zero_size": (["bandwidth.transfer_size=0"], ["'bandwidth.transfer_size' must be a positive size"]),
    "negative_size": (["bandwidth.block_size=-4MiB"], ["bandwidth.block_size", "cannot read size"]),
    "s3_type_local_root": (["storage.type=s3"], ["storage.type=s3 needs an s3://bucket/prefix root"]),
    "local_type_s3_root": (["storage.type=direct_fs", "storage.root=s3://bucket/prefix"],
                           ["storage.type=direct_fs needs a local directory", "storage.type=s3"]),
    "bad_run_id": (["run_id=../escape"], ["is not a plain name"]),
    "long_run_id": (["run_id=" + "r" * 300], ["run_id is 300 characters long, more than 128",
                                               "use a run_id of at most 128 characters"]),
    "endpoints_on_local_fs": (["storage.endpoints=http://127.0.0.1:9000"],
                              ["storage.endpoints applies to storage.type=s3 only", "remove storage.endpoints"]),
    "compression_npz": (["workload=datagen", "dataset.format=npz", "dataset.compression=gzip"],
                        ["dataset.compression=gzip applies to dataset.format=hdf5 only, not npz",
                         "set dataset.compression=none"]),
    "float_as_yaml11_string": (["metrics.interval=1e-9"], ["'metrics.interval' must be at least 0.01"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_configuration_exits_2_and_touches_nothing(request, jobs, sandbox, case):
    overrides, fragments = CONFIG_CASES[case]
    before = tree(sandbox["box"])
    done = run(jobs, 4 if case == "wrong_type" else 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, *overrides,
               "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, *fragments)
    assert tree(sandbox["box"]) == before
    assert os.listdir(sandbox["results"]) == []


def test_malformed_yaml(request, jobs, sandbox, tmp_path):
    config = _config_file(tmp_path, "workload: bandwidth\nstorage:\n  type: direct_fs\n root: [x\n")
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", config, f"storage.root={sandbox['root']}", "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, f"config file {config} is not valid YAML at line")
    assert tree(sandbox["box"]) == before


def test_missing_config_file(request, jobs, sandbox, tmp_path):
    done = run(jobs, 2, "run", str(tmp_path / "nope.yaml"), "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "does not exist")


def test_size_over_free_space(request, jobs, sandbox):
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", "bandwidth.block_size=1000TiB",
               "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "not enough free space", sandbox["root"], "lower the sizes")
    assert tree(sandbox["box"]) == before


def test_size_over_free_space_created_leaf_is_removed(request, jobs, sandbox):
    """The preflight creates a missing leaf, and removes it again when it then fails."""
    before = tree(sandbox["box"])
    leaf = os.path.join(sandbox["root"], "new-leaf")
    done = run(jobs, 4, "run", QUICK, f"storage.root={leaf}", "bandwidth.block_size=1000TiB",
               "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "not enough free space")
    assert tree(sandbox["box"]) == before


def test_unaligned_direct_sizes(request, jobs, sandbox):
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", "storage.type=direct_fs",
               "bandwidth.transfer_size=1000", "bandwidth.block_size=10000", "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "bandwidth.transfer_size=1000 is not a multiple of the direct-I/O alignment",
                   "use ")
    assert tree(sandbox["box"]) == before


def test_two_missing_directory_levels(request, jobs, sandbox):
    before = tree(sandbox["box"])
    missing = os.path.join(sandbox["root"], "a", "b")
    done = run(jobs, 2, "run", QUICK, f"storage.root={missing}", *SMALL, "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, f"directory {os.path.join(sandbox['root'], 'a')} does not exist",
                   "storage.create_parents=true")
    assert tree(sandbox["box"]) == before


def test_root_is_a_file(request, jobs, sandbox):
    before = tree(sandbox["box"])
    a_file = os.path.join(sandbox["root"], "precious.bin")
    done = run(jobs, 2, "run", QUICK, f"storage.root={a_file}", *SMALL, "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, f"storage.root {a_file} is not a directory")
    assert tree(sandbox["box"]) == before
    leaf_under_file = os.path.join(a_file, "sub")
    done = run(jobs, 2, "run", QUICK, f"storage.root={leaf_under_file}", *SMALL, "--output", sandbox["output"])
    check_contract(done, 2, "is not a directory")
    assert tree(sandbox["box"]) == before


def test_root_read_only(request, jobs, sandbox):
    mount = os.path.join(sandbox["box"], "ro")
    with tmpfs(mount, "1m", readonly_after=True, populate={"theirs.dat": b"x" * 100}):
        before = tree(sandbox["box"])
        done = run(jobs, 2, "run", QUICK, f"storage.root={mount}", *SMALL, "--output", sandbox["output"])
        _record(request, done.seconds)
        check_contract(done, 2, f"storage.root {mount} is not writable")
        # A missing leaf under a read-only directory cannot be created either.
        done = run(jobs, 2, "run", QUICK, f"storage.root={mount}/leaf", *SMALL, "--output", sandbox["output"])
        check_contract(done, 2, f"storage.root {mount}/leaf cannot be created")
        assert tree(sandbox["box"]) == before
    assert os.listdir(sandbox["results"]) == []


def test_results_path_not_writable_is_checked_before_any_io(request, jobs, sandbox, tmp_path):
    before = tree(sandbox["box"])
    ro_results = str(tmp_path / "ro-results")
    with tmpfs(ro_results, "1m", readonly_after=True):
        done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL,
                   "--output", os.path.join(ro_results, "r.json"))
        _record(request, done.seconds)
        check_contract(done, 2, "cannot write results file", "is not writable", "--output")
    assert tree(sandbox["box"]) == before  # no run directory was ever created
    for output, fragment in ((sandbox["results"], "is a directory"),
                             (os.path.join(sandbox["results"], "no", "r.json"), "does not exist")):
        done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "--output", output)
        check_contract(done, 2, fragment)
        assert tree(sandbox["box"]) == before
    csv_dir = os.path.join(sandbox["results"], "no-such-dir", "r.csv")
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL,
               "--output", sandbox["output"], "--csv", csv_dir)
    check_contract(done, 2, "does not exist")
    assert tree(sandbox["box"]) == before and os.listdir(sandbox["results"]) == []


def test_existing_results_file_is_not_overwritten(request, jobs, sandbox):
    with open(sandbox["output"], "w") as handle:
        handle.write("precious")
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "already exists", "--force")
    assert open(sandbox["output"]).read() == "precious"
    assert tree(sandbox["box"]) == before


# -- 2. faults during I/O: exit 1 (130 for signals), everyone ends, cleanup done -------------


def run_dir_of(sandbox: dict[str, str], run_id: str) -> str:
    return os.path.join(sandbox["root"], f"mpibench-{run_id}")


def assert_only_run_dir_changed(before: dict[str, int], after: dict[str, int], run_id: str) -> None:
    """After an abort nothing can clean up: only the run's own directory may differ."""
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert all(k.startswith(os.path.join("root", f"mpibench-{run_id}")) for k in changed), changed


def test_enospc_mid_write(request, jobs, sandbox):
    """The filesystem fills up after the preflight found room: a filler file is written
    while rank 0 holds the job before the write phase (pause fault), so the free-space
    check passes and the writes then fail with ENOSPC."""
    mount = os.path.join(sandbox["box"], "small")
    with tmpfs(mount, "12m", populate={"theirs.dat": b"t" * 4096}):
        before = tree(sandbox["box"])
        # local_fs: tmpfs takes O_DIRECT only on recent kernels, and ENOSPC is the point here.
        job = launch(jobs, 2, "run", QUICK, f"storage.root={mount}", "storage.type=local_fs", *SMALL, "run_id=enospc",
                     "--output", sandbox["output"], fault=f"pause:phase=write:dir={sandbox['faults']}")
        wait_for(os.path.join(sandbox["faults"], "paused"), job)
        stats = os.statvfs(mount)
        filler = os.path.join(mount, "filler")
        with open(filler, "wb") as handle:  # leave 1.5 MiB of the 8 MiB the run writes
            handle.write(b"\0" * (stats.f_bavail * stats.f_frsize - 3 * MiB // 2))
        fault_at = time.monotonic()
        open(os.path.join(sandbox["faults"], "resume"), "w").close()
        done = job.finish(since=fault_at)
        _record(request, done.seconds)
        line = check_contract(done, 1, "No space left on device [ENOSPC]", "free space on the filesystem")
        assert line.startswith("mpibench: error: rank ")
        assert os.path.join(mount, "mpibench-enospc", "bandwidth", "rank-00000") in line
        partial_result(sandbox["output"], "ENOSPC")
        assert "partial result (complete: false)" in done.stdout
        os.unlink(filler)
        assert tree(sandbox["box"]) == before


def _tamper_during_read(request, jobs, sandbox, ranks: int, tamper, *fragments: str,
                        extra: tuple[str, ...] = ()) -> tuple[Completed, str]:
    """Hold the job before its read phase, let `tamper` change the run's files, resume."""
    before = tree(sandbox["box"])
    job = launch(jobs, ranks, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=tamper",
                 *extra, "--output", sandbox["output"], fault=f"pause:phase=read:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    run_dir = run_dir_of(sandbox, "tamper")
    tamper(os.path.join(run_dir, "bandwidth"))
    fault_at = time.monotonic()
    open(os.path.join(sandbox["faults"], "resume"), "w").close()
    done = job.finish(since=fault_at)
    _record(request, done.seconds)
    line = check_contract(done, 1, *fragments)
    partial_result(sandbox["output"], *fragments)
    assert tree(sandbox["box"]) == before
    return done, line


@pytest.mark.parametrize("ranks", [2, 4])
def test_partner_file_deleted_before_read(request, jobs, sandbox, ranks):
    # reorder_reads: rank r reads what rank r+1 wrote; the last rank's file is read by rank ranks-2.
    victim = f"rank-{ranks - 1:06d}.dat"

    def delete(bandwidth_dir: str) -> None:
        os.unlink(os.path.join(bandwidth_dir, victim))

    _tamper_during_read(request, jobs, sandbox, ranks, delete,
                        f"rank {ranks - 2}: open ", victim, "No such file or directory [ENOENT]",
                        "removed by another process")


def test_partner_file_truncated_before_read(request, jobs, sandbox):
    def truncate(bandwidth_dir: str) -> None:
        os.truncate(os.path.join(bandwidth_dir, "rank-000001.dat"), 1 * MiB)

    _tamper_during_read(request, jobs, sandbox, 2, truncate,
                        "rank 0: read ", "rank-000001.dat", f"at offset {1 * MiB}",
                        "expected 262144 bytes, got 0", "truncated")


def test_partner_file_truncated_before_read_io_uring(request, jobs, sandbox):
    """The same with 8 reads in flight in an io_uring ring: the reads past the new end
    complete with 0 bytes, in whatever order; the first one reaped is named."""
    if uring.unavailable():
        pytest.skip(f"io_uring: {uring.unavailable()}")

    def truncate(bandwidth_dir: str) -> None:
        os.truncate(os.path.join(bandwidth_dir, "rank-000001.dat"), 1 * MiB)

    _, line = _tamper_during_read(request, jobs, sandbox, 2, truncate,
                                  "rank 0: read ", "rank-000001.dat", "expected 262144 bytes, got 0",
                                  "truncated", extra=("io.depth=8", "io.engine=io_uring"))
    offset = int(line.split(" at offset ")[1].split(":")[0])
    assert 1 * MiB <= offset < 4 * MiB and offset % (256 * 1024) == 0


@pytest.mark.parametrize("ranks, rank, phase, action, extra", [
    (2, 1, "write", "raise", ()),
    (2, 1, "read", "raise", ()),
    (2, 0, "write", "raise", ()),
    (4, 3, "write", "raise", ()),
    (4, 2, "read", "raise", ("storage.type=local_fs", "io.depth=4",
                             "io.engine=threads")),  # threaded transfers
    (2, 1, "write", "raise", ("io.depth=8", "io.engine=io_uring")),
    (2, 0, "read", "ioerror", ("io.depth=8", "io.engine=io_uring")),
    (2, 1, "write", "raise", ("bandwidth.file_mode=shared",)),
    (4, 1, "read", "ioerror", ("bandwidth.iterations=2",)),
])
def test_rank_raises_mid_phase(request, jobs, sandbox, ranks, rank, phase, action, extra):
    """An exception (a bug: "internal error ... --debug") or an I/O error on one rank
    mid-phase: every rank leaves the phase, they agree, clean up, and exit 1."""
    before = tree(sandbox["box"])
    done = run(jobs, ranks, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, *extra,
               "--output", sandbox["output"], fault=f"{action}:rank={rank}:phase={phase}:after_ops=3")
    _record(request, done.seconds)
    if action == "raise":
        check_contract(done, 1, f"rank {rank}: internal error in phase {phase}: InjectedFault", "--debug")
    else:
        check_contract(done, 1, f"rank {rank}: injected I/O error in phase {phase}")
    doc = partial_result(sandbox["output"], f"rank {rank}: ")
    assert doc["phases"][-1]["name"] == phase and doc["phases"][-1]["complete"] is False
    assert tree(sandbox["box"]) == before


@pytest.mark.parametrize("ranks, rank", [(2, 1), (4, 3), (2, 0)])
def test_rank_fails_outside_a_phase(request, jobs, sandbox, ranks, rank):
    """An error only one rank raises outside a phase's agreement (here as it sets up)
    cannot be agreed on: that rank names itself and ends the job (MPI_Abort) instead of
    leaving the others waiting at the first phase's barrier."""
    before, segments, topology = tree(sandbox["box"]), mpi_segments(), launcher_files()
    done = run(jobs, ranks, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=setup",
               "--output", sandbox["output"], fault=f"ioerror:rank={rank}:phase=start")
    _record(request, done.seconds)
    check_contract(done, 1, f"rank {rank}: injected I/O error in phase start")
    assert_only_run_dir_changed(before, tree(sandbox["box"]), "setup")
    # MPI_Abort skips MPI_Finalize, which would remove MPICH's shared-memory file, and
    # Hydra's proxy is killed before it removes its topology file: the aborting rank
    # removes both first.
    assert not unmapped(mpi_segments() - segments)
    assert not unopened(launcher_files() - topology)


def test_debug_shows_the_traceback(jobs, sandbox):
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "--debug",
               "--output", sandbox["output"], fault="raise:rank=0:phase=write:after_ops=1")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "InjectedFault" in done.stderr


def test_one_rank_killed_mid_phase(request, jobs, sandbox):
    """SIGKILL leaves no chance to clean up: the launcher must end the others, promptly.

    Only the run directory may keep files (named by its .mpibench-run marker)."""
    before = tree(sandbox["box"])
    pids = sandbox["faults"]
    job = launch(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=killed",
                 "--output", sandbox["output"],
                 fault=f"pids:dir={pids};sleep:rank=1:phase=write:after_ops=2:seconds=60")
    wait_for(os.path.join(pids, "rank-1.pid"), job)
    data = os.path.join(run_dir_of(sandbox, "killed"), "bandwidth", "rank-000001.dat")
    wait_for(data, job)
    time.sleep(0.5)  # rank 1 is now in its 60 s stall, rank 0 done writing and waiting for it
    os.kill(int(open(os.path.join(pids, "rank-1.pid")).read()), signal.SIGKILL)
    done = job.finish(since=time.monotonic())
    _record(request, done.seconds)
    assert done.returncode != 0
    assert done.seconds < END_WITHIN_S
    assert "Killed" in done.stdout + done.stderr or "signal 9" in done.stdout + done.stderr
    assert_only_run_dir_changed(before, tree(sandbox["box"]), "killed")
    assert os.path.exists(os.path.join(run_dir_of(sandbox, "killed"), ".mpibench-run"))


# Long enough (64 iterations of 2 x 32 MiB) that the job is surely still moving data when
# the signal comes half a second in; a graceful stop takes a fraction of a second.
BUSY = ("bandwidth.block_size=32MiB", "bandwidth.transfer_size=1MiB", "bandwidth.iterations=64")


def _signal_mid_phase(request, jobs, sandbox, signum: int, stall: str = "", ranks: int = 2,
                      to_rank: int | None = None, graceful: bool = True) -> Completed:
    """Send `signum` half a second into the first write phase: to the launcher, or to one
    rank. Without `stall` the ranks are busy with I/O; with it, in the stall it makes."""
    faults_dir = sandbox["faults"]
    before = tree(sandbox["box"])
    sizes = SMALL if stall else BUSY
    job = launch(jobs, ranks, "run", QUICK, f"storage.root={sandbox['root']}", *sizes, "run_id=signal",
                 "--output", sandbox["output"],
                 fault=f"pids:dir={faults_dir};pause:phase=write:dir={faults_dir};{stall}")
    wait_for(os.path.join(faults_dir, "paused"), job)
    open(os.path.join(faults_dir, "resume"), "w").close()
    if stall:
        wait_for(os.path.join(faults_dir, "stalled"), job)
    else:
        time.sleep(0.5)
    assert job.proc.poll() is None, "the run ended before the signal"
    if to_rank is None:
        sent = job.signal(signum)
    else:
        os.kill(int(open(os.path.join(faults_dir, f"rank-{to_rank}.pid")).read()), signum)
        sent = time.monotonic()
    done = job.finish(since=sent)
    _record(request, done.seconds)
    if graceful:
        assert tree(sandbox["box"]) == before  # the cleanup ran
    else:
        assert_only_run_dir_changed(before, tree(sandbox["box"]), "signal")
    return done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_job_stops_gracefully(request, jobs, sandbox, signum):
    done = _signal_mid_phase(request, jobs, sandbox, signum)
    name = signal.Signals(signum).name
    check_contract(done, 130, f"interrupted by {name}", "partial result is marked incomplete")
    doc = partial_result(sandbox["output"], f"interrupted by {name}")
    assert doc["phases"][-1]["complete"] is False
    assert "partial result (complete: false)" in done.stdout


def test_sigterm_to_one_rank_stops_every_rank(request, jobs, sandbox):
    """As a batch system may signal the ranks themselves: the others learn it at the phase end."""
    done = _signal_mid_phase(request, jobs, sandbox, signal.SIGTERM, ranks=4, to_rank=2)
    check_contract(done, 130, "interrupted by")
    partial_result(sandbox["output"], "interrupted")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_preflight_ends_every_rank(request, jobs, sandbox, signum):
    """Rank 0 is in the preflight (run directory made) while the others wait in a
    broadcast: the job still ends at once and the preflight undoes what it created."""
    before = tree(sandbox["box"])
    leaf = os.path.join(sandbox["root"], "leaf")  # created by the preflight, so removed again
    job = launch(jobs, 4, "run", QUICK, f"storage.root={leaf}", *SMALL, "run_id=early",
                 "--output", sandbox["output"], fault=f"pause:phase=preflight:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    assert os.path.isdir(os.path.join(leaf, "mpibench-early"))
    done = job.finish(since=job.signal(signum))
    _record(request, done.seconds)
    name = signal.Signals(signum).name
    check_contract(done, 130, f"interrupted by {name} before the run started", "nothing was measured")
    assert tree(sandbox["box"]) == before
    assert os.listdir(sandbox["results"]) == []


def _rank_pid(run_id: str, rank: int) -> int:
    """The pid of one rank of the job whose command line holds run_id=`run_id` (PMI_RANK)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if f"run_id={run_id}".encode() in cmdline and f"PMI_RANK={rank}".encode() in environ:
            return int(entry)
    raise AssertionError(f"no rank {rank} of run {run_id}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_one_rank_during_preflight_is_carried_into_the_run(request, jobs, sandbox, signum):
    """A signal that reaches only rank 2 while rank 0 is half-way through its preflight (run
    directory made): the job is not ended under rank 0, which finishes the preflight; the
    run then stops at its first check and cleans up, with one line and exit 130. A second
    signal to that rank ends the job at once (test_second_signal_to_a_rank_aborts_at_once
    covers the run)."""
    before = tree(sandbox["box"])
    job = launch(jobs, 4, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=deferred",
                 "--output", sandbox["output"], fault=f"pause:phase=preflight:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    assert os.path.isdir(run_dir_of(sandbox, "deferred"))
    os.kill(_rank_pid("deferred", 2), signum)
    time.sleep(1.0)
    assert job.proc.poll() is None, "the job ended while rank 0 was in its preflight"
    open(os.path.join(sandbox["faults"], "resume"), "w").close()
    done = job.finish(since=time.monotonic())
    _record(request, done.seconds)
    check_contract(done, 130, "interrupted by a signal on another rank", "partial result is marked incomplete")
    assert tree(sandbox["box"]) == before  # the preflight's run directory went in the cleanup
    partial_result(sandbox["output"], "interrupted")


def test_signal_to_one_rank_while_the_preflight_hangs_ends_the_job(request, jobs, sandbox):
    """The same signal while rank 0's preflight does not finish (held here; a hung
    filesystem would do the same): the signalled rank ends the job itself once the run
    has not started RUN_STARTS_WITHIN_S later, with one line naming itself."""
    from mpibench.cli import RUN_STARTS_WITHIN_S

    before = tree(sandbox["box"])
    job = launch(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=deferred",
                 "--output", sandbox["output"], fault=f"pause:phase=preflight:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    pid = _rank_pid("deferred", 1)
    sent = time.monotonic()  # before the kill: the rank's deadline starts after it
    os.kill(pid, signal.SIGINT)
    done = job.finish(since=sent)
    _record(request, done.seconds)
    check_contract(done, 130, f"rank 1: interrupted by SIGINT and the run did not start within "
                   f"{RUN_STARTS_WITHIN_S:.0f} s: aborting the job")
    assert done.seconds >= RUN_STARTS_WITHIN_S  # it waited for the run to start, then ended it
    assert_only_run_dir_changed(before, tree(sandbox["box"]), "deferred")


def test_second_signal_to_one_rank_during_preflight_aborts_at_once(request, jobs, sandbox):
    """A second signal to the rank that noted one: the job ends at once, that rank says so."""
    before = tree(sandbox["box"])
    job = launch(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=deferred",
                 "--output", sandbox["output"], fault=f"pause:phase=preflight:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    pid = _rank_pid("deferred", 1)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    assert job.proc.poll() is None
    sent = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    done = job.finish(since=sent)
    _record(request, done.seconds)
    check_contract(done, 130, "rank 1: interrupted again by SIGTERM before the run started: aborting the job",
                   "may keep files")
    assert_only_run_dir_changed(before, tree(sandbox["box"]), "deferred")


def test_signal_to_one_rank_during_preflight_only(request, jobs, sandbox):
    """`mpibench preflight`, where no run comes to act on it: the preflight finishes and
    undoes itself, and the signalled rank says it was interrupted (exit 130)."""
    before = tree(sandbox["box"])
    job = launch(jobs, 2, "preflight", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=deferred",
                 fault=f"pause:phase=preflight:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    os.kill(_rank_pid("deferred", 1), signal.SIGTERM)
    time.sleep(0.5)
    open(os.path.join(sandbox["faults"], "resume"), "w").close()
    done = job.finish(since=time.monotonic())
    _record(request, done.seconds)
    check_contract(done, 130, "rank 1: interrupted by SIGTERM before the run started")
    assert tree(sandbox["box"]) == before


def test_signal_while_a_rank_is_stuck_ends_the_job(request, jobs, sandbox):
    """A rank stuck in an I/O call that does not return cannot stop gracefully: the job
    must still end well within the contract's 30 s, not when the call returns."""
    done = _signal_mid_phase(request, jobs, sandbox, signal.SIGINT,
                             f"sleep:rank=1:phase=write:after_ops=2:seconds=120:dir={sandbox['faults']}",
                             graceful=False)
    check_contract(done, 130, "rank 1: an I/O call has not returned 10 s after SIGINT: aborting the job",
                   f"{run_dir_of(sandbox, 'signal')} may keep files")


# -- 4. data integrity: verify catches one flipped byte ------------------------------------


@pytest.mark.parametrize("ranks, storage", [(2, "direct_fs"), (4, "local_fs")])
def test_verify_reports_a_flipped_byte(request, jobs, sandbox, ranks, storage):
    victim = f"rank-{ranks - 1:06d}.dat"  # read back by rank ranks-2 (reorder_reads)
    flipped_at = 1 * MiB + 12345

    def flip(bandwidth_dir: str) -> None:
        with open(os.path.join(bandwidth_dir, victim), "r+b") as handle:
            handle.seek(flipped_at)
            byte = handle.read(1)
            handle.seek(flipped_at)
            handle.write(bytes([byte[0] ^ 0x01]))

    _, line = _tamper_during_read(request, jobs, sandbox, ranks, flip,
                                  f"rank {ranks - 2}: data verification failed", victim,
                                  f"at offset {flipped_at}", extra=("verify=true", f"storage.type={storage}"))
    assert os.path.join(run_dir_of(sandbox, "tamper"), "bandwidth", victim) in line


def test_verify_passes_on_intact_data(jobs, sandbox):
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "verify=true",
               "bandwidth.access=random", "--output", sandbox["output"], "--quiet")
    assert done.returncode == 0, done.stderr
    doc = json.loads(open(sandbox["output"]).read())
    assert doc["complete"] is True
    assert [p["verified"] for p in doc["phases"] if p["name"] == "read"] == [True]
    assert tree(sandbox["box"]) == before


# -- 5. safety: only what the run created is touched -------------------------------------


def test_existing_run_directory_is_refused(request, jobs, sandbox):
    theirs = run_dir_of(sandbox, "taken")
    os.makedirs(os.path.join(theirs, "bandwidth"))
    with open(os.path.join(theirs, "bandwidth", "rank-000000.dat"), "w") as handle:
        handle.write("someone else's data")
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=taken",
               "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, f"run directory {theirs} already exists", "choose another run_id")
    assert tree(sandbox["box"]) == before


def test_run_directory_name_taken_by_a_symlink_is_refused(request, jobs, sandbox):
    os.symlink(os.path.join(sandbox["box"], "keep"), run_dir_of(sandbox, "link"))
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=link",
               "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "already exists")
    assert tree(sandbox["box"]) == before
    assert tree(os.path.join(sandbox["box"], "keep")) == {"notes.txt": len("not mpibench's")}


def _plant_during_read(jobs, sandbox, plant, ranks: int = 2) -> tuple[Completed, dict[str, int]]:
    """Hold the job before its read phase, let `plant` change the run directory, resume."""
    before = tree(sandbox["box"])
    job = launch(jobs, ranks, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=planted",
                 "--output", sandbox["output"], fault=f"pause:phase=read:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    plant(run_dir_of(sandbox, "planted"))
    open(os.path.join(sandbox["faults"], "resume"), "w").close()
    return job.finish(), before


def test_cleanup_leaves_planted_symlinks_and_their_targets(request, jobs, sandbox):
    """Links to a file and to a directory outside, planted in the run directory: the run
    completes, its own files go, the links and everything they point at stay (the run
    directory is kept because it holds entries the run did not create)."""
    keep = os.path.join(sandbox["box"], "keep")

    def plant(run_dir: str) -> None:
        os.symlink(os.path.join(keep, "notes.txt"), os.path.join(run_dir, "bandwidth", "to-file"))
        os.symlink(keep, os.path.join(run_dir, "to-dir"))

    done, before = _plant_during_read(jobs, sandbox, plant)
    _record(request, done.seconds)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    after = tree(sandbox["box"])
    for path, size in before.items():
        assert after.get(path) == size, path  # nothing that existed is gone or changed
    run_dir = os.path.join("root", "mpibench-planted")
    assert {k for k in after if k not in before} == {
        run_dir, os.path.join(run_dir, ".mpibench-run"), os.path.join(run_dir, "to-dir"),
        os.path.join(run_dir, "bandwidth"), os.path.join(run_dir, "bandwidth", "to-file")}
    assert open(os.path.join(keep, "notes.txt")).read() == "not mpibench's"
    assert [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("progress: ")] == [
        f"mpibench: warning: run directory {run_dir_of(sandbox, 'planted')} kept: "
        "it holds entries the run did not create or could not remove: ['bandwidth', 'to-dir']"]


def test_data_file_replaced_by_a_symlink_is_not_followed(request, jobs, sandbox):
    """The partner's file swapped for a link to a file outside: the reader refuses to
    follow it (O_NOFOLLOW) and the cleanup removes the link, never the target."""
    outside = os.path.join(sandbox["box"], "keep", "notes.txt")

    def plant(run_dir: str) -> None:
        data = os.path.join(run_dir, "bandwidth", "rank-000001.dat")
        os.unlink(data)
        os.symlink(outside, data)

    done, before = _plant_during_read(jobs, sandbox, plant)
    _record(request, done.seconds)
    check_contract(done, 1, "rank 0: open ", "rank-000001.dat", "[ELOOP]")
    assert tree(sandbox["box"]) == before
    assert open(outside).read() == "not mpibench's"


def test_directory_replaced_by_a_symlink_is_not_followed_by_cleanup(request, jobs, sandbox):
    """The run's bandwidth/ swapped for a link to a directory outside holding files of the
    same names: the cleanup must not delete them."""
    decoy = os.path.join(sandbox["box"], "decoy")
    os.mkdir(decoy)
    for rank in range(2):
        with open(os.path.join(decoy, f"rank-{rank:06d}.dat"), "wb") as handle:
            handle.write(b"precious" * 1000)

    def plant(run_dir: str) -> None:
        real = os.path.join(run_dir, "bandwidth")
        for name in os.listdir(real):
            os.unlink(os.path.join(real, name))
        os.rmdir(real)
        os.symlink(decoy, real)

    done, before = _plant_during_read(jobs, sandbox, plant)
    _record(request, done.seconds)
    assert done.returncode == 1, done.stderr
    error_line(done)
    after = tree(sandbox["box"])
    assert {k: v for k, v in after.items() if k.startswith("decoy")} == {
        "decoy": 4096, "decoy/rank-000000.dat": 8000, "decoy/rank-000001.dat": 8000}
    for path, size in before.items():
        if not path.startswith(os.path.join("root", "mpibench-planted")):
            assert after.get(path) == size, path


def test_cleanup_failure_on_another_rank_is_reported(request, jobs, sandbox):
    """A rank that cannot remove its file (made immutable) fails the run: rank 0 names it
    and the result is marked incomplete, instead of a silent non-zero exit."""
    run_dir = run_dir_of(sandbox, "immutable")
    stuck = os.path.join(run_dir, "bandwidth", "rank-000001.dat")
    before = tree(sandbox["box"])
    job = launch(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=immutable",
                 "--output", sandbox["output"], fault=f"pause:phase=read:dir={sandbox['faults']}")
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    if subprocess.run(["chattr", "+i", stuck], capture_output=True).returncode != 0:
        open(os.path.join(sandbox["faults"], "resume"), "w").close()
        job.finish()
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        open(os.path.join(sandbox["faults"], "resume"), "w").close()
        done = job.finish()
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    _record(request, done.seconds)
    check_contract(done, 1, f"rank 1: remove {stuck} failed", "[EPERM]")
    assert f"mpibench: warning: run directory {run_dir} kept" in done.stderr
    partial_result(sandbox["output"], "rank 1: remove")
    assert_only_run_dir_changed(before, tree(sandbox["box"]), "immutable")


def test_second_signal_to_a_rank_aborts_at_once(request, jobs, sandbox):
    """Whoever signals a rank twice does not want to wait for the graceful stop."""
    faults_dir = sandbox["faults"]
    before = tree(sandbox["box"])
    job = launch(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=twice",
                 "--output", sandbox["output"],
                 fault=f"pids:dir={faults_dir};sleep:rank=1:phase=write:after_ops=2:seconds=120:dir={faults_dir}")
    wait_for(os.path.join(faults_dir, "stalled"), job)
    pid = int(open(os.path.join(faults_dir, "rank-1.pid")).read())
    os.kill(pid, signal.SIGTERM)
    # Two signals still pending at once are one: send the second once the first was taken.
    wait_delivered(pid, signal.SIGTERM)
    time.sleep(0.3)  # and its handler ran (the main thread wakes from the stall's sleep for it)
    os.kill(pid, signal.SIGTERM)
    done = job.finish(since=time.monotonic())
    _record(request, done.seconds)
    check_contract(done, 130, "rank 1: SIGTERM during the graceful stop after SIGTERM: aborting the job")
    assert_only_run_dir_changed(before, tree(sandbox["box"]), "twice")


# -- 7. inputs past the machine's limits, and names taken: exit 2, nothing left behind ---------


def _mem_available() -> int:
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))


UQ = os.path.join(CONFIGS, "unet3d-quick.yaml")


@pytest.mark.parametrize("case", ["bandwidth", "bandwidth_per_node", "train", "datagen"])
def test_buffers_over_the_available_memory(request, jobs, sandbox, case):
    """Buffers the node cannot hold are refused before any I/O (the OOM killer would end the
    job with no message and leave its files)."""
    half = _mem_available() // 2 // MiB * MiB  # x 3 buffers x 2 ranks: 3 times what is there
    args, fragments = {
        "bandwidth": ([QUICK, "bandwidth.transfer_size=64GiB", "bandwidth.block_size=64GiB"],
                      ["(2 ranks x 192.00 GiB: bandwidth.transfer_size x (io_depth 1 + 2))",
                       "lower bandwidth.transfer_size or io.depth, or run fewer ranks per node"]),
        "bandwidth_per_node": ([QUICK, f"bandwidth.transfer_size={half}", f"bandwidth.block_size={half}"],
                               ["of I/O buffers on this node (2 ranks x", "available; lower bandwidth.transfer_size"]),
        "train": ([UQ, "dataset.record_size=64GiB", "train.read_threads=4"],
                  ["train.read_threads 4 x file size", "lower train.read_threads or dataset.record_size"]),
        "datagen": ([UQ, "workload=datagen", "dataset.record_size=64GiB"],
                    ["dataset.record_size x samples_per_file", "lower dataset.record_size"]),
    }[case]
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", *args, f"storage.root={sandbox['root']}", "storage.type=local_fs",
               "--output", sandbox["output"])
    _record(request, done.seconds)
    if case == "train":  # train sizes its buffers by the dataset's files: the dataset is looked for first
        check_contract(done, 2, "no dataset at")
        assert tree(sandbox["box"]) == before
        return
    check_contract(done, 2, "the run needs ", "of I/O buffers on this node", "more than the", *fragments)
    assert tree(sandbox["box"]) == before
    assert os.listdir(sandbox["results"]) == []


def test_out_of_memory_while_allocating_is_one_line_and_cleans_up(request, sandbox):
    """Memory the kernel refuses (here a ulimit -v below the buffers, which the preflight's
    check of MemAvailable cannot see) ends every rank with one line, exit 1, and the run
    directory removed, as any other failure: no "internal error", no abort."""
    if _mem_available() < 16 * 2**30:
        pytest.skip("needs 16 GiB of available memory for the preflight to pass")
    before = tree(sandbox["box"])
    cmd = mpibench_cmd(2, "run", QUICK, f"storage.root={sandbox['root']}", "storage.type=local_fs",
                       "bandwidth.transfer_size=2GiB", "bandwidth.block_size=2GiB", "bandwidth.iterations=1",
                       "run_id=oom", "--output", sandbox["output"])
    start = time.monotonic()
    proc = subprocess.run(["bash", "-c", 'ulimit -v 3000000 && exec "$@"', "bash", *cmd], capture_output=True,
                          text=True, env=clean_env(), stdin=subprocess.DEVNULL, timeout=END_WITHIN_S * 2)
    done = Completed(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    _record(request, done.seconds)
    line = check_contract(done, 1, "rank ", "out of memory [ENOMEM]", "run fewer ranks per node")
    assert "internal error" not in line
    partial_result(sandbox["output"], "out of memory")
    assert tree(sandbox["box"]) == before


def test_created_parents_are_removed_after_a_failure(request, jobs, sandbox):
    """storage.create_parents: what the preflight made (leaf and parents) goes again when
    the run fails, deepest first, and only what it made."""
    before = tree(sandbox["box"])
    deep = os.path.join(sandbox["root"], "a", "b", "c")
    done = run(jobs, 2, "run", QUICK, f"storage.root={deep}", "storage.create_parents=true",
               "storage.type=direct_fs", "bandwidth.transfer_size=1000", "bandwidth.block_size=10000",
               "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "bandwidth.transfer_size=1000 is not a multiple of the direct-I/O alignment")
    assert tree(sandbox["box"]) == before
    # A parent that existed before stays: only a/ exists, b/c are made and removed.
    os.mkdir(os.path.join(sandbox["root"], "a"))
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={deep}", "storage.create_parents=true",
               "storage.type=direct_fs", "bandwidth.transfer_size=1000", "bandwidth.block_size=10000",
               "--output", sandbox["output"])
    check_contract(done, 2, "is not a multiple of the direct-I/O alignment")
    assert tree(sandbox["box"]) == before


def test_created_parents_follow_the_root_leaf_after_a_run(jobs, sandbox):
    """After a complete run the leaf and the parents mpibench made are removed with the run
    directory; keep_files keeps them, as it keeps the leaf."""
    before = tree(sandbox["box"])
    deep = os.path.join(sandbox["root"], "a", "b", "c")
    done = run(jobs, 2, "run", QUICK, f"storage.root={deep}", "storage.create_parents=true", *SMALL,
               "--output", sandbox["output"], "--quiet")
    assert done.returncode == 0, done.stderr
    assert tree(sandbox["box"]) == before
    os.unlink(sandbox["output"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={deep}", "storage.create_parents=true", *SMALL,
               "keep_files=true", "run_id=kept", "--output", sandbox["output"], "--quiet")
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(os.path.join(deep, "mpibench-kept", "bandwidth", "rank-000000.dat"))


def test_run_directory_path_too_long_removes_the_created_root(request, jobs, sandbox):
    """A run directory whose paths would pass PATH_MAX is refused before it is made, and
    the root leaf and parents just created for it are removed."""
    before = tree(sandbox["box"])
    levels = (3900 - len(sandbox["root"])) // 251
    deep = os.path.join(sandbox["root"], *(["d" * 250] * levels), "leaf")
    done = run(jobs, 2, "run", QUICK, f"storage.root={deep}", "storage.create_parents=true", *SMALL,
               "run_id=" + "r" * 128, "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, "(PATH_MAX)", "use a shorter storage.root or run_id")
    assert tree(sandbox["box"]) == before


def test_dataset_folder_taken_by_a_file(request, jobs, sandbox):
    """datagen's folder (or one of its subfolders) taken by a file: refused in the
    preflight, before any folder is made."""
    with open(os.path.join(sandbox["root"], "afile"), "w") as handle:
        handle.write("not a folder")
    os.makedirs(os.path.join(sandbox["root"], "ds"))
    with open(os.path.join(sandbox["root"], "ds", "00001"), "w") as handle:
        handle.write("not a folder")
    before = tree(sandbox["box"])
    for name, extra, taken in (("afile", [], "afile"), ("afile/sub", [], "afile"),
                               ("ds", ["dataset.num_subfolders=2"], os.path.join("ds", "00001"))):
        done = run(jobs, 2, "run", UQ, "workload=datagen", f"storage.root={sandbox['root']}",
                   f"dataset.name={name}", *extra, "--output", sandbox["output"])
        _record(request, done.seconds)
        check_contract(done, 2, f"{os.path.join(sandbox['root'], taken)} exists and is not a directory",
                       "choose another dataset.name")
        assert tree(sandbox["box"]) == before


@pytest.mark.parametrize("root", ["/proc", "/proc/mpibench-leaf", "/sys/kernel"])
def test_root_on_a_pseudo_filesystem(request, jobs, sandbox, root):
    """/proc and /sys take no files (statvfs says 0 B free): named as such, not as no space."""
    if not os.path.isdir(os.path.dirname(root) if root.endswith("leaf") else root):
        pytest.skip(f"{root} is not there")
    done = run(jobs, 2, "run", QUICK, f"storage.root={root}", *SMALL, "--output", sandbox["output"])
    _record(request, done.seconds)
    line = check_contract(done, 2, f"storage.root {root} is on ", "pseudo-filesystem",
                          "choose a directory on a real, writable filesystem")
    assert "free space" not in line
    assert not os.path.exists("/proc/mpibench-leaf")


@pytest.mark.parametrize("text, fragments", [
    ("workload: bandwidth\nbandwidth:\n  block_size: 4MiB\n  transfer_size: 256KiB\n  block_size: 8MiB\n",
     ["configuration key 'block_size' is given twice in the same mapping (line 3 and line 5)", "keep one"]),
    ('workload: bandwidth\nstorage:\n  type: local_fs\n  root: "/tmp/a\\0b"\n',
     ["configuration key 'storage.root' holds a NUL byte", "remove it"]),
    ("workload: bandwidth\nbandwidth:\n  iterations: 1\nmetrics:\n  interval: 1e-9\n",
     ["'metrics.interval' must be at least 0.01, got 1e-09"]),
], ids=["duplicate_key", "nul_byte", "yaml11_float"])
def test_config_file_mistakes(request, jobs, sandbox, tmp_path, text, fragments):
    config = _config_file(tmp_path, text)
    before = tree(sandbox["box"])
    args = [] if "root:" in text else [f"storage.root={sandbox['root']}"]
    done = run(jobs, 2, "run", config, *args, "--output", sandbox["output"])
    _record(request, done.seconds)
    check_contract(done, 2, *fragments)
    assert tree(sandbox["box"]) == before


def test_transfer_below_the_alignment_names_it_once(request, jobs, sandbox):
    before = tree(sandbox["box"])
    done = run(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", "storage.type=direct_fs",
               "bandwidth.transfer_size=256", "bandwidth.block_size=4096", "--output", sandbox["output"])
    _record(request, done.seconds)
    line = check_contract(done, 2, "bandwidth.transfer_size=256 is not a multiple", "; use a multiple of ")
    hint = line.split("; ", 1)[1]
    first, second = hint.split(" such as ")[1].split(" or ")
    assert first != second, line
    assert tree(sandbox["box"]) == before


# -- 8. the command line around the run: results that must not be lost, early signals --------


@pytest.mark.parametrize("outcome", ["complete", "failed"])
def test_results_file_appearing_during_the_run_is_kept(request, jobs, sandbox, outcome):
    """Someone creates the results and CSV files while the job runs: theirs stay as they
    are, the measured results go to fresh names beside them, one warning line each, and
    the job exits as it would have (0, or 1 with the partial result)."""
    output, csv_path = sandbox["output"], os.path.join(sandbox["results"], "r.csv")
    fault = f"pause:phase=read:dir={sandbox['faults']}"
    if outcome == "failed":
        fault += ";raise:rank=1:phase=read:after_ops=2"
    before = tree(sandbox["box"])
    job = launch(jobs, 2, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL, "run_id=appear",
                 "--output", output, "--csv", csv_path, fault=fault)
    wait_for(os.path.join(sandbox["faults"], "paused"), job)
    for path in (output, csv_path):
        with open(path, "w") as handle:
            handle.write("theirs")
    open(os.path.join(sandbox["faults"], "resume"), "w").close()
    done = job.finish()
    _record(request, done.seconds)
    fresh = os.path.join(sandbox["results"], "r-appear.json")
    warnings = [line for line in done.stderr.splitlines() if line.startswith("mpibench: warning: ")]
    assert warnings[0] == f"mpibench: warning: {output} appeared during the run and is left as it is; wrote {fresh} instead"
    if outcome == "complete":
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        fresh_csv = os.path.join(sandbox["results"], "r-appear.csv")
        assert warnings[1:] == [f"mpibench: warning: {csv_path} appeared during the run and is left as it is; "
                                f"wrote {fresh_csv} instead"]
        assert json.load(open(fresh))["complete"] is True
        assert open(fresh_csv).read().startswith("run_id,workload,phase")
        assert f"results written to {fresh}" in done.stdout and f"CSV written to {fresh_csv}" in done.stdout
    else:
        check_contract(done, 1, "rank 1", "internal error")
        partial_result(fresh, "internal error")
        assert f"partial result (complete: false) written to {fresh}" in done.stdout
    for path in (output, csv_path):
        assert open(path).read() == "theirs"
    assert tree(sandbox["box"]) == before


def _in_main(pid: int) -> bool:
    """Whether process `pid` runs mpibench's main(): it handles SIGTERM from its first line
    on, which the interpreter never does by itself."""
    try:
        with open(f"/proc/{pid}/status") as status:
            caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _importing_numpy(pid: int) -> bool:
    """Whether process `pid` has begun importing numpy (which it does before MPI starts up)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as maps:
            return b"_multiarray_umath" in maps.read()
    except OSError:
        return False


def _rank_pids(job: Job) -> list[int]:
    """The mpibench processes of a job (the launcher's descendants running the script)."""
    parents: dict[int, int] = {}
    scripts: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if any(arg.endswith(b"/mpibench") for arg in argv[:2]):
            scripts.add(int(entry))
    found = []
    for pid in scripts:
        ancestor = pid
        while ancestor > 1 and ancestor != job.proc.pid:
            ancestor = parents.get(ancestor, 0)
        if ancestor == job.proc.pid:
            found.append(pid)
    return found


def wait_until(job: Job, ranks: int, reached, limit: float = 60.0) -> None:
    """Wait until every rank of the job has `reached` a point (a test of its pid). Before
    main() runs the interpreter is still starting, and a signal there is Python's business."""
    deadline = time.monotonic() + limit
    while True:
        pids = _rank_pids(job)
        if len(pids) == max(ranks, 1) and all(reached(pid) for pid in pids):
            return
        if job.proc.poll() is not None or time.monotonic() > deadline:
            out, err = job.proc.communicate() if job.proc.poll() is not None else ("", "")
            pytest.fail(f"the ranks did not reach {reached.__name__} (exit {job.proc.returncode}):\n{out}\n{err}")
        time.sleep(0.002)


# Where the signal is sent: once main() runs (argument parsing, imports), then from the
# moment numpy is being imported (heavy imports, MPI's start-up, the configuration load,
# the preflight, where a pause fault holds the job so that the run never starts).
EARLY_POINTS = ((_in_main, 0.0), (_importing_numpy, 0.0), (_importing_numpy, 0.05), (_importing_numpy, 0.15),
                (_importing_numpy, 0.3), (_importing_numpy, 0.7))


@pytest.mark.parametrize("ranks, signum", [(0, signal.SIGINT), (0, signal.SIGTERM), (2, signal.SIGINT),
                                           (2, signal.SIGTERM), (4, signal.SIGINT)],
                         ids=["1-SIGINT", "1-SIGTERM", "2-SIGINT", "2-SIGTERM", "4-SIGINT"])
def test_early_signal_ends_the_job_with_one_line(request, jobs, sandbox, ranks, signum):
    """SIGINT/SIGTERM while mpibench starts (imports, MPI start-up, loading, preflight):
    wherever it lands, one line, exit 130, no traceback, nothing left behind. Where exactly
    it lands varies from run to run; every outcome must be this one."""
    name = signal.Signals(signum).name
    before = tree(sandbox["box"])
    points = EARLY_POINTS if ranks < 4 else EARLY_POINTS[::2]
    for reached, delay in points:
        job = launch(jobs, ranks, "run", QUICK, f"storage.root={sandbox['root']}", *SMALL,
                     "--output", sandbox["output"], fault=f"pause:phase=preflight:dir={sandbox['faults']}")
        wait_until(job, ranks, reached)
        time.sleep(delay)
        done = job.finish(since=job.signal(signum))
        _record(request, done.seconds)
        check_contract(done, 130, f"interrupted by {name} before the run started; nothing was measured")
        assert tree(sandbox["box"]) == before, (reached.__name__, delay)
        assert os.listdir(sandbox["results"]) == [], (reached.__name__, delay)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(sandbox["faults"], "paused"))
