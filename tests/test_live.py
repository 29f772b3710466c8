"""Live output under a launcher: the header right after the preflight, each phase's row as
it ends, and plain progress lines where there is no terminal (mpiexec's pipes).

The runs are held by fault injection (a pause before the first phase, a stall inside it),
so what is asserted is an order of events, never how fast the machine is.
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import pytest
from conftest import CONFIGS, clean_env, mpibench_cmd, run_cli

from mpibench.live import LiveOutput, progress_display
from mpibench.progress import LINE_PERIOD_S, ProgressBar, ProgressLines, progress_line
from mpibench.units import MiB

QUICK = os.path.join(CONFIGS, "quickstart.yaml")
SMALL = ("bandwidth.block_size=8MiB", "bandwidth.transfer_size=1MiB", "bandwidth.iterations=1")
STALL_S = LINE_PERIOD_S * 2 + 2  # rank 0 stalls this long inside the write phase: two progress lines at least


def _lines_of(proc: subprocess.Popen, until: str, deadline: float) -> list[str]:
    """Lines of the job's output up to the first one starting with `until` (fails at `deadline`)."""
    seen = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.startswith(until):
            return seen
    pytest.fail(f"no line starting {until!r} in the output:\n" + "\n".join(seen))


def test_header_rows_and_progress_lines_come_live_under_mpiexec(tmp_path):
    """mpiexec -n 2, output read line by line as it comes: the header and the table's head
    while the run waits before its first phase; progress lines while rank 0 stalls in the
    write phase; the write row after them and before the read row; the summary at the end."""
    faults, root = tmp_path / "faults", tmp_path / "root"
    faults.mkdir()
    root.mkdir()
    env = clean_env({"MPIBENCH_FAULT": f"pause:phase=write:dir={faults};"
                                       f"sleep:rank=0:phase=write:after_ops=2:seconds={STALL_S}"})
    proc = subprocess.Popen(mpibench_cmd(2, "run", QUICK, f"storage.root={root}", *SMALL,
                                         "--output", str(tmp_path / "r.json")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        head = _lines_of(proc, "-----", deadline)
        # Rank 0 is held before the write phase until the test says resume: the header is out
        # before any phase ran.
        while not (faults / "paused").exists():  # rank 0 reached the pause after the header
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert head[0].startswith("mpibench ") and "workload bandwidth" in head[0]
        assert head[1].startswith("ranks 2 on 1 node(s)")
        assert head[-2].split()[:3] == ["phase", "iter", "bytes"]
        (faults / "resume").touch()
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, rest
    lines = rest.splitlines()
    progress = [i for i, line in enumerate(lines) if line.startswith("progress: write 0: ")]
    write_row = next(i for i, line in enumerate(lines) if line.split()[:2] == ["write", "0"])
    read_row = next(i for i, line in enumerate(lines) if line.split()[:2] == ["read", "0"])
    assert len(progress) >= 2, rest
    assert progress[-1] < write_row < read_row
    for i in progress:
        assert "MiB/s now" in lines[i] and "MiB/s average" in lines[i] and "ETA" in lines[i]
    assert lines[-1].startswith("results written to ")
    assert sum(1 for line in lines if line.startswith("mpibench ")) == 0  # the header once, before


@pytest.mark.parametrize("option", ["--progress=off", "--quiet"])
def test_no_progress_lines_when_asked(tmp_path, option):
    env = {"MPIBENCH_FAULT": f"sleep:rank=0:phase=write:after_ops=2:seconds={LINE_PERIOD_S + 1}"}
    done = run_cli(2, "run", QUICK, f"storage.root={tmp_path}", *SMALL, "--output", str(tmp_path / "r.json"),
                   option, env=env)
    assert done.returncode == 0, done.stderr
    assert "progress:" not in done.stdout + done.stderr
    if option == "--quiet":
        assert done.stdout == ""
    else:
        assert done.stdout.index("workload bandwidth") < done.stdout.index("results written")


def test_progress_line_names_phase_percent_rates_and_eta():
    line = progress_line("write 0", 256 * MiB, 1024 * MiB, 2.0, 100.0)
    assert line == ("progress: write 0:  25.0%, 256 MiB, 100.0 MiB/s now, 128.0 MiB/s average, "
                    "2 s elapsed, ETA 6 s")
    unknown = progress_line("train 1", 10 * MiB, None, 0.0, 0.0)
    assert "ETA -" in unknown and "-%" in unknown


def test_progress_lines_sample_the_recorder_every_period():
    class Recorder:
        bytes = 0

    out = io.StringIO()
    lines = ProgressLines(period=0.05, stream=out)
    recorder = Recorder()
    lines.start("read 0", recorder, 2, 8 * MiB)
    recorder.bytes = 2 * MiB
    while out.getvalue().count("\n") < 2:
        time.sleep(0.01)
    lines.stop()
    shown = out.getvalue().splitlines()
    assert all(line.startswith("progress: read 0:  50.0%, 4 MiB") for line in shown[1:]), shown


def test_bar_counts_in_mib():
    """tqdm's own scaling names 1024-based units 'GB/s': the bar counts MiB and says so."""
    bar = ProgressBar(period=10)
    bar.begin("write 0", 4 * MiB)
    try:
        assert bar._bar.unit == "MiB" and bar._bar.total == 4
        bar.update(2 * MiB, 1.0)
        assert bar._bar.n == 2
    finally:
        bar.end()


def test_auto_is_lines_without_a_terminal():
    assert isinstance(progress_display("auto", io.StringIO()), ProgressLines)
    assert progress_display("off", io.StringIO()) is None
    live = LiveOutput(None, stdout=io.StringIO())
    live.phase_done({"name": "write"})  # before any header: nothing printed, nothing raised
    assert not live.rows_printed
