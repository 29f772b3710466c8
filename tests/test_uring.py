"""Queue depth through io_uring (mpibench.uring) at one rank, and the engine choice."""

from __future__ import annotations

import os

import pytest
from test_workloads_unit import one_rank

from mpibench import uring
from mpibench.config import build_config
from mpibench.engine import resolve_io_engine
from mpibench.errors import ConfigError
from mpibench.run import execute, preflight

needs_uring = pytest.mark.skipif(uring.unavailable() is not None,
                                 reason=f"io_uring: {uring.unavailable()}")


def bandwidth(root: str, kind: str = "direct_fs", *, depth: object = "auto", engine: str = "auto",
              **bw: object):
    return build_config({"workload": "bandwidth", "storage": {"type": kind, "root": root},
                         "io": {"depth": depth, "engine": engine},
                         "bandwidth": {"transfer_size": "16KiB", "block_size": "2MiB", "iterations": 2,
                                       "reorder_reads": False, **bw},
                         "verify": True})


@needs_uring
@pytest.mark.parametrize("kind", ["direct_fs", "local_fs"])
@pytest.mark.parametrize("access", ["random", "sequential"])
def test_io_uring_round_trip_one_rank(tmp_path, kind, access):
    root = str(tmp_path / "root")
    doc = execute(bandwidth(root, kind, depth=16, engine="io_uring", access=access), one_rank(),
                  output=None)
    assert doc["complete"] and doc["environment"]["io_engine"] == "io_uring"
    for phase in doc["phases"]:
        assert phase["bytes"] == 2 * 2**20 and phase["ops"] == 128
        assert phase["latency"]["count"] == 128
        # 16 in flight: an operation waits for the ones ahead of it, never less than 0.
        assert 0 < phase["latency"]["min_s"] <= phase["latency"]["p50_s"] <= phase["latency"]["max_s"]
    assert all(p["verified"] for p in doc["phases"] if p["name"] == "read")
    assert not os.path.exists(root)


@needs_uring
def test_io_uring_odd_depth_and_fewer_transfers_than_depth(tmp_path):
    """A depth that is not a power of two, and a block of fewer transfers than the depth."""
    for depth, block in ((5, "2MiB"), (16, "64KiB")):
        root = str(tmp_path / f"root{depth}")
        doc = execute(bandwidth(root, depth=depth, engine="io_uring", block_size=block,
                                access="random"), one_rank(), output=None)
        size = 2 * 2**20 if block == "2MiB" else 64 * 2**10
        assert [p["bytes"] for p in doc["phases"]] == [size] * 4


def test_engine_choice(monkeypatch, tmp_path):
    root = str(tmp_path / "root")
    s3 = build_config({"workload": "bandwidth", "storage": {"type": "s3", "root": "s3://bucket/x"}})
    assert resolve_io_engine(s3) == "none"
    assert resolve_io_engine(bandwidth(root, engine="threads")) == "threads"
    via_s3dlio = build_config({"workload": "bandwidth",
                               "storage": {"type": "direct_fs", "root": root, "library": "s3dlio"}})
    assert resolve_io_engine(via_s3dlio) == "none"
    ignored = build_config({"workload": "bandwidth", "io": {"engine": "threads"},
                            "storage": {"type": "direct_fs", "root": str(tmp_path / "r4"), "library": "s3dlio"}})
    info = preflight(ignored, 1, one_rank().layout())
    assert any("io.engine=threads is ignored" in w for w in info.warnings)
    # Where the probe fails (no binding, an old kernel, a seccomp policy, io_uring_disabled):
    reason = "the kernel refused an io_uring ring (Operation not permitted)"
    monkeypatch.setattr(uring, "_probe_result", (reason,))
    assert resolve_io_engine(bandwidth(root)) == "threads"  # auto falls back
    with pytest.raises(ConfigError) as err:
        resolve_io_engine(bandwidth(root, engine="io_uring"))
    assert reason in err.value.line() and "io.engine=auto" in err.value.line()
    # The fallback is said in the preflight warnings when it matters (io_depth > 1).
    comm = one_rank()
    info = preflight(bandwidth(root, depth=4), 1, comm.layout())
    assert any("io_uring unavailable" in w and reason in w for w in info.warnings)
    doc = execute(bandwidth(str(tmp_path / "root2"), depth=4), comm, output=None)
    assert doc["complete"] and doc["environment"]["io_engine"] == "threads"
    with pytest.raises(ConfigError, match="cannot be used here"):
        execute(bandwidth(str(tmp_path / "root3"), depth=4, engine="io_uring"), comm, output=None)
    assert not os.path.exists(tmp_path / "root3")


def test_probe_names_what_is_missing():
    reason = uring._probe()
    assert reason is None or "io_uring" in reason or "liburing" in reason


def test_without_the_binding_auto_runs_threads_and_says_so(tmp_path):
    """A process where liburing cannot be imported (as on a platform without its wheel):
    `auto` runs the thread engine and the preflight warns; `io_uring` is refused in one line."""
    import json
    import subprocess
    import sys

    hide = "import sys; sys.modules['liburing'] = None; from mpibench.cli import main; sys.exit(main(sys.argv[1:]))"
    quickstart = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.yaml")
    base = [sys.executable, "-c", hide, "run", quickstart, "storage.type=direct_fs",
            "bandwidth.transfer_size=16KiB", "bandwidth.block_size=1MiB", "bandwidth.iterations=1",
            "io.depth=4"]
    out = tmp_path / "r.json"
    done = subprocess.run([*base, f"storage.root={tmp_path / 'a'}", "--quiet", "--output", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["environment"]["io_engine"] == "threads"
    assert doc["environment"]["versions"]["liburing"]  # installed, just not importable here
    assert any("io_uring unavailable" in w and "not installed" in w for w in doc["preflight"]["warnings"])
    refused = subprocess.run([*base, f"storage.root={tmp_path / 'b'}", "io.engine=io_uring",
                              "--quiet", "--output", str(tmp_path / "r2.json")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "io.engine=io_uring cannot be used here" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "r2.json").exists()
